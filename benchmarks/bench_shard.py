"""Shard stage benchmark on the IM2GPS3K sample.

Throughput: ``geobuild shard`` (in-process, one worker) as images/s, with and without resizing,
and as a ratio to a baseline that writes the same image bytes into a plain tar with Python's
``tarfile`` in the same process. Memory: peak RSS of a fresh subprocess sharding 1x and 4x the
sample (the 4x input repeats every row with distinct ids pointing to copies of the photos), for a
zip source and for the streamed-tar (MP16-Pro) path.

    python -m benchmarks.bench_shard [--out benchmarks/results/shard.md]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GEOBUILD_SHARED", REPO.parent / "shared")).resolve()
ZIP = SHARED / "data/im2gps3k/im2gps3ktest.zip"
CSV = SHARED / "data/im2gps3k/im2gps3k_places365.csv"


def baseline_tar(out: Path) -> tuple[float, int]:
    """Read every image from the zip and write it into a plain tar: seconds, count."""
    t0 = time.perf_counter()
    n = 0
    with zipfile.ZipFile(ZIP) as z, tarfile.open(out, "w") as tar:
        for info in z.infolist():
            if info.is_dir():
                continue
            data = z.read(info)
            ti = tarfile.TarInfo(info.filename.rsplit("/", 1)[-1])
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
            n += 1
    return time.perf_counter() - t0, n


def shard_once(run: Path, images: Path, metadata: Path, fmt: str = "im2gps3k", **opts) -> tuple[float, int]:
    from geobuild.core.executors import LocalExecutor
    from geobuild.core.runfolder import RunFolder
    from geobuild.core.runner import run_stage
    from geobuild.stages.shard import ShardConfig, ShardStage

    t0 = time.perf_counter()
    summary = run_stage(ShardStage(ShardConfig(images=str(images), metadata=str(metadata), format=fmt, **opts)),
                        RunFolder(run), LocalExecutor(workers=1))
    dt = time.perf_counter() - t0
    return dt, sum(s["samples"] for s in summary.stats.values())


def build_copies(folder: Path, times: int) -> tuple[Path, Path, Path]:
    """A zip, a tar and a CSV holding the sample ``times`` times (distinct ids, copied photos)."""
    with open(CSV, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    csv_out, zip_out, tar_out = folder / f"meta{times}x.csv", folder / f"img{times}x.zip", folder / f"img{times}x.tar"
    with open(csv_out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for c in range(times):
            for r in body:
                w.writerow([f"c{c}_{r[0]}", *r[1:]])
    with zipfile.ZipFile(ZIP) as src, zipfile.ZipFile(zip_out, "w", zipfile.ZIP_STORED) as zout, tarfile.open(tar_out, "w") as tout:
        for info in src.infolist():
            if info.is_dir():
                continue
            data = src.read(info)
            base = info.filename.rsplit("/", 1)[-1]
            for c in range(times):
                zout.writestr(f"im2gps3ktest/c{c}_{base}", data)
                ti = tarfile.TarInfo(f"mp-16-images/c{c}_{base}")
                ti.size = len(data)
                tout.addfile(ti, io.BytesIO(data))
    return csv_out, zip_out, tar_out


def peak_rss_mb(run: Path, images: Path, metadata: Path) -> tuple[float, float]:
    """Run ``geobuild shard`` in a fresh process: (peak RSS in MiB, seconds)."""
    code = (
        "import resource, sys, time;"
        "from benchmarks.bench_shard import shard_once;"
        "from pathlib import Path;"
        "t=time.perf_counter(); shard_once(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter()-t)"
    )
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(run), str(images), str(metadata)], capture_output=True,
                         text=True, env=env, cwd=REPO, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/shard.md"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ["GEOBUILD_NO_PROGRESS"] = "1"
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for rep in range(args.repeats):
            b, n = baseline_tar(tmp / f"baseline{rep}.tar")
            results.setdefault("baseline", []).append((b, n))
            for label, opts in (("shard (original bytes)", {}), ("shard --max-side 256", {"max_side": 256})):
                dt, k = shard_once(tmp / f"run-{label.split()[1]}-{rep}".replace("(", "").replace("-", "_"), ZIP, CSV, **opts)
                results.setdefault(label, []).append((dt, k))
        base_dt = min(d for d, _ in results["baseline"])
        n_base = results["baseline"][0][1]
        lines += ["## Throughput (IM2GPS3K sample, 3000 photos, 1 worker, best of %d)" % args.repeats, "",
                  "| run | seconds | images/s | ratio to plain tarfile copy |", "|---|---|---|---|",
                  f"| baseline: zip -> tarfile, same bytes | {base_dt:.2f} | {n_base / base_dt:.0f} | 1.00 |"]
        for label in ("shard (original bytes)", "shard --max-side 256"):
            dt = min(d for d, _ in results[label])
            k = results[label][0][1]
            lines.append(f"| {label} | {dt:.2f} | {k / dt:.0f} | {(k / dt) / (n_base / base_dt):.2f} |")
        lines += ["", "Ratio = shard images/s / baseline images/s (same process, same machine). The shard "
                  "stage also fully decodes every photo to validate it, writes JSON, ledger and stats.", ""]
        lines += ["## Peak memory (fresh subprocess per size, ru_maxrss)", "",
                  "| input | source | rows | peak RSS MiB | seconds |", "|---|---|---|---|---|"]
        for times in (1, 4):
            csv_out, zip_out, tar_out = build_copies(tmp, times)
            for kind, images in (("zip", zip_out), ("tar (streamed)", tar_out)):
                rss, dt = peak_rss_mb(tmp / f"mem-{times}-{kind.split()[0]}", images, csv_out)
                lines.append(f"| {times}x | {kind} | {2997 * times} | {rss:.0f} | {dt:.1f} |")
            for p in (zip_out, tar_out):
                p.unlink()
    header = ["# Shard stage benchmark", "",
              "Command: `python -m benchmarks.bench_shard` (from the repository root)", "",
              f"Machine: {platform.machine()} Linux, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}; "
              "no GPU in this environment (the shard stage is CPU-only; no GPU figures).", ""]
    text = "\n".join(header + lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
