"""Executor overhead: the same CPU-bound units in-process, on a local process pool, and on Ray.

    python -m benchmarks.bench_executors [--units 8] [--work 0.5]

Speed is reported as a ratio to the in-process run (same process, same units); Ray's start-up time
is measured separately. Each unit hashes bytes for about ``--work`` seconds and writes one file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from geobuild.core.executors import LocalExecutor
from geobuild.core.runfolder import RunFolder, atomic_path
from geobuild.core.stage import Stage, UnitResult
from geobuild.core.runner import run_stage


@dataclass
class HashStage(Stage):
    """``units`` units, each hashing ``rounds`` MiB-blocks (CPU-bound, no I/O to speak of)."""

    units_n: int = 8
    rounds: int = 200
    name = "hash"

    def units(self, run):
        return [f"{i:05d}" for i in range(self.units_n)]

    def config(self):
        return {"units_n": self.units_n, "rounds": self.rounds}

    def process(self, run, unit):
        h = hashlib.sha256(unit.encode())
        block = bytes(1 << 20)
        for _ in range(self.rounds):
            h.update(block)
        with atomic_path(run.path("hash", f"{unit}.txt")) as tmp:
            tmp.write_text(h.hexdigest())
        return UnitResult(stats={"samples_in": 1, "samples_out": 1})


def calibrate(seconds: float) -> int:
    t0 = time.perf_counter()
    h = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(50):
        h.update(block)
    per = (time.perf_counter() - t0) / 50
    return max(1, int(seconds / per))


def timed(stage, executor, root: Path) -> float:
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_stage(stage, RunFolder(root), executor)
    assert len(s.done) == stage.units_n and not s.failed
    return time.perf_counter() - t0


def peak_rss_mib() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--work", type=float, default=0.5, help="seconds of hashing per unit")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("GEOBUILD_NO_PROGRESS", "1")
    stage = HashStage(units_n=args.units, rounds=calibrate(args.work))
    tmp = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    rows = []
    base = timed(stage, LocalExecutor(workers=1), tmp / "inline")
    rows.append(("local, in-process (baseline)", base))
    rows.append((f"local, pool of {args.workers}", timed(stage, LocalExecutor(workers=args.workers), tmp / "pool")))
    ray_start = None
    if not args.no_ray:
        from geobuild.core.executors.ray_executor import RayExecutor

        ex = RayExecutor(workers=args.workers)
        t0 = time.perf_counter()
        ex._ray()
        ray_start = time.perf_counter() - t0
        rows.append((f"ray, local instance, {args.workers} CPUs (started)", timed(stage, ex, tmp / "ray")))
        ex.close()
    print(f"units: {args.units} x ~{args.work}s of sha256; cores: {os.cpu_count()}")
    print("| executor | wall s | speed vs in-process |")
    print("|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {base / t:.2f}x |")
    if ray_start is not None:
        print(f"\nray.init (local instance) took {ray_start:.2f} s")
    me, kids = peak_rss_mib()
    print(f"peak RSS: driver {me:.0f} MiB, largest child process {kids:.0f} MiB")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
