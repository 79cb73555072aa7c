"""Copies of finished ``benchmarks.ranker_im2gps3k`` training folders with the retrieval fallback
(``--keep-retrieval`` / ``--snap-km``) fitted afterwards on the validation split, exactly as
``geobuild train-ranker`` fits it after its last epoch (:func:`geobuild.ranker.train.fallback_checkpoint`),
so a post-hoc rule is measured on the same trained models without training them again. The copies
are named like the benchmark's folders of variant ``--to``; a rerun of the benchmark with that
variant evaluates them instead of training.

    python -m benchmarks.ranker_refit --work WORK --from val --to val+snap --keep-retrieval off --snap-km auto
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="The benchmark's --work folder.")
    ap.add_argument("--from", dest="source", required=True, help="Variant label of the trained folders.")
    ap.add_argument("--to", dest="target", required=True, help="Variant label of the copies.")
    ap.add_argument("--keep-retrieval", default="auto", help="auto, a retrieval score, or off.")
    ap.add_argument("--snap-km", default="0", help="auto, a radius in km, or 0.")
    ap.add_argument("--losses", default="multi-order", help="Comma-separated losses.")
    ap.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds.")
    ap.add_argument("--epochs", type=int, default=10, help="The benchmark's --epochs.")
    ap.add_argument("--protocol", default="georanker", help="The benchmark's --protocol.")
    args = ap.parse_args()

    import torch

    from geobuild.ranker.train import fallback_checkpoint

    torch.set_num_threads(1)
    suffix = f"-{args.protocol}" if args.protocol != "groups" else ""
    for loss in args.losses.split(","):
        for seed in args.seeds.split(","):
            name = f"{loss}-seed{seed}-{args.epochs}ep{suffix}"
            src, dst = args.work / "train" / f"{args.source}-{name}", args.work / "train" / f"{args.target}-{name}"
            if (dst / "final.json").exists():
                print(f"{dst.name}: done")
                continue
            if not (src / "final.json").exists():
                raise SystemExit(f"{src} has not finished training")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("epoch-*.pt", "final.json"))
            fb = fallback_checkpoint(dst, keep_retrieval=args.keep_retrieval, snap_km=args.snap_km)
            final = json.loads((src / "final.json").read_text())
            final["fallback"] = {"keep_score": fb.keep_score, "snap_km": fb.snap_km} if fb else None
            (dst / "final.json").write_text(json.dumps(final, indent=2, sort_keys=True, default=str) + "\n")
            print(f"{dst.name}: keep retrieval at score >= {fb and fb.keep_score}, snap-back {fb and fb.snap_km} km", flush=True)


if __name__ == "__main__":
    main()
