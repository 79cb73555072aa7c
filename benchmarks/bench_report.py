"""Report benchmark: build time and peak memory of ``geobuild report`` on a finished run, and on
the same run with its candidates repeated (a larger run, the same photos), to show that memory does
not grow with the number of queries.

    python -m benchmarks.bench_report --run RUN [--scales 1,8] [--queries 200] [--out DIR]

Each build runs in its own child process (``python -m geobuild report``), so its peak RSS is its own
(``os.wait4``). Speed is a ratio to a baseline taken in the same child beforehand: reading the
candidate columns the report reads with ``pyarrow`` (the floor for any pass over the candidates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time, json
import pyarrow.parquet as pq
from pathlib import Path
from geobuild.report import ReportConfig, build_report
from geobuild.report.build import SAMPLE_COLUMNS
from geobuild.report.datastats import COLUMNS
run, out, queries = sys.argv[1], sys.argv[2], int(sys.argv[3])
cols = list(dict.fromkeys(COLUMNS + SAMPLE_COLUMNS))
t = time.perf_counter()
rows = sum(pq.read_table(p, columns=cols).num_rows for p in sorted(Path(run, "candidates").glob("*.parquet")))
base = time.perf_counter() - t
t = time.perf_counter()
res = build_report(run, ReportConfig(out=Path(out), queries=queries))
print(json.dumps({"rows": rows, "baseline_s": base, "report_s": time.perf_counter() - t, "queries": res.queries,
                  "photos": res.photos, "thumbs": res.thumbs}))
"""


def scaled_copy(run: Path, dst: Path, scale: int) -> Path:
    """A copy of ``run`` (without publish/, embeddings/, work/) whose candidates are repeated
    ``scale`` times as extra mine units; the shards are linked, not copied."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("publish", "embeddings", "work", "shards", "report", "distances", "*.npy", "*.faiss"),
                    symlinks=True)
    (dst / "shards").symlink_to((run / "shards").resolve())
    for p in sorted((run / "candidates").glob("*.parquet")):
        for k in range(1, scale):
            unit = f"{p.stem}x{k}"
            shutil.copyfile(p, dst / "candidates" / f"{unit}.parquet")
            (dst / "done" / "mine" / unit).write_text("")
    return dst


def build(run: Path, out: Path, queries: int) -> dict:
    env = {**os.environ, "GEOBUILD_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run), str(out), str(queries)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t0 = time.perf_counter()
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"report build failed ({proc.returncode}) on {run}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res.update(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="finished run folder (shards, candidates)")
    ap.add_argument("--scales", default="1,8", help="comma-separated repeat factors of the candidates")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench-report-"))
    print("| candidates repeated | queries | child wall s | child CPU s | report s | baseline read s | ratio | peak RSS MB | photos | thumbnails |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scale in (int(s) for s in args.scales.split(",")):
        run = scaled_copy(Path(args.run), scratch / f"run-x{scale}", scale)
        r = build(run, scratch / f"report-x{scale}", args.queries)
        print(f"| {scale}x | {r['queries']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['report_s']:.1f} | {r['baseline_s']:.2f} | "
              f"{r['report_s'] / r['baseline_s']:.0f}x | {r['peak_rss_mb']:.0f} | {r['photos']} | {r['thumbs']} |", flush=True)


if __name__ == "__main__":
    main()
