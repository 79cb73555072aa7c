"""Oracle recall of a mined run's candidates vs the nearest neighbour's accuracy.

    python -m benchmarks.mine_recall --run runs/mine-sample

Oracle recall at t km: share of queries with at least one candidate (image, GPS, image+GPS, all
including band negatives) strictly closer than t km. ``top1_image``: the accuracy of the first
image candidate alone (nearest-neighbour geolocation).
"""

from __future__ import annotations

import argparse
import json

import pyarrow as pa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/mine-sample")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    from geobuild.stages.mine.quality import format_table, oracle_recall
    from geobuild.core.runfolder import RunFolder
    from geobuild.artifacts.candidates import read_candidates

    run = RunFolder(args.run)
    units = run.done_units("mine")
    table = pa.concat_tables([read_candidates(run, u) for u in units])
    rec = oracle_recall(table)
    cfg = run.read_config().get("mine", {})
    print(f"run: {run.root}  shards: {len(units)}  queries mined: {table.num_rows}")
    print(f"mine config: exclude_same_author={cfg.get('exclude_same_author')} k_image={cfg.get('k_image')} "
          f"k_gps={cfg.get('k_gps')} gps_scorer={cfg.get('gps_scorer')} negatives={cfg.get('negatives')}\n")
    print(format_table(rec))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": str(run.root), "config": cfg, "recall": rec}, f, indent=2)


if __name__ == "__main__":
    main()
