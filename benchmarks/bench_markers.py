"""Checked markers: the content hash they record, and what checking them costs, on a finished run.

    python -m benchmarks.bench_markers --run RUN

Every figure is a ratio to a baseline taken in the same process: reading the same bytes without
hashing them (page cache warm, best of ``--repeat``). Reported: sha256, blake2b and xxHash3-128 over
every file the run's markers record (what a commit hashes), the per-rerun check (exists + size of
every recorded output, every unit of every stage), ``geobuild verify --deep`` and the content
identity of the shard inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Callable


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="finished run folder made with checked markers")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import xxhash

    from geobuild.core.markers import read_marker, resolve_record, unit_problem
    from geobuild.core.runfolder import RunFolder, content_id
    from geobuild.pipeline.verify import stage_names, verify_run

    run = RunFolder(args.run)
    markers = [(s, read_marker(run, s, u)) for s in stage_names(run) for u in run.done_units(s)]
    files = sorted({resolve_record(run, o["path"]) for _, m in markers for o in (m.outputs or [])})
    if not files:
        raise SystemExit(f"{run.root}: no recorded outputs (a run made before markers recorded them)")
    total = sum(p.stat().st_size for p in files)

    def over(make: Callable[[], object] | None) -> Callable[[], None]:
        def go() -> None:
            for p in files:
                h = make() if make else None
                with open(p, "rb") as f:
                    while block := f.read(1 << 20):
                        if h is not None:
                            h.update(block)  # type: ignore[attr-defined]
        return go

    base = _best(over(None), args.repeat)
    print(f"{len(files)} recorded files, {total / 1e6:.1f} MB; baseline (read only): {base:.3f} s ({total / base / 1e9:.2f} GB/s)")
    print("| hash | seconds | x read-only baseline |\n|---|---|---|")
    for name, make in (("sha256", hashlib.sha256), ("blake2b", hashlib.blake2b), ("xxh3_128", xxhash.xxh3_128)):
        t = _best(over(make), args.repeat)
        print(f"| {name} | {t:.3f} | {t / base:.2f} |")
    check = _best(lambda: [unit_problem(run, m) for _, m in markers], args.repeat)
    print(f"| rerun check (exists + size, {len(markers)} markers) | {check:.4f} | {check / base:.3f} |")
    deep = _best(lambda: verify_run(run, deep=True), 1)
    print(f"| geobuild verify --deep (markers, accounting, schemas, tars) | {deep:.3f} | {deep / base:.2f} |")
    inputs = [p for p in (run.read_config().get("shard") or {}).values() if isinstance(p, str) and Path(p).is_file()]
    for p in inputs:
        t = _best(lambda: content_id(p), args.repeat)
        print(f"| content id of {Path(p).name} ({Path(p).stat().st_size / 1e6:.1f} MB) | {t:.4f} | {t / base:.3f} |")


if __name__ == "__main__":
    main()
