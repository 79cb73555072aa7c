"""Publish benchmark: stage a finished run, validate it with `datasets`, upload it to a local Hub double.

    python -m benchmarks.bench_publish --run RUN [--out DIR]

Speed is reported as a ratio to a baseline taken in the same process: copying the staged bytes with
shutil.copytree (the floor for any stage that writes them). Memory is the peak RSS of this process
(the validation loader runs in a child process and is timed, not measured).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="finished run folder (candidates + distances + shards)")
    ap.add_argument("--out", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    token = "hf_benchmarkTOKEN"
    os.environ.update({"HF_HUB_DISABLE_XET": "1", "HF_TOKEN": token, "GEOBUILD_NO_PROGRESS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    sys.path.insert(0, str(REPO / "tests"))
    from hub_double import HubDouble

    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench-publish-"))
    run_copy = scratch / "run"
    shutil.copytree(args.run, run_copy, ignore=shutil.ignore_patterns("publish", "work"))
    from geobuild.core.runfolder import RunFolder

    run = RunFolder(run_copy)
    conf = run.read_config()
    for section in ("publish", "publish_upload"):
        conf.pop(section, None)
        run.reset_stage(section)
    import yaml

    run.config_path.write_text(yaml.safe_dump(conf, sort_keys=False))
    from geobuild.core.executors import LocalExecutor
    from geobuild.stages.publish.validate import require_valid
    from geobuild.core.runner import run_stage
    from geobuild.stages.publish.stage import PublishConfig, PublishStage, UploadConfig, UploadStage

    staged = scratch / "staged"
    t0 = time.perf_counter()
    summary = run_stage(PublishStage(PublishConfig(to=str(staged))), run, LocalExecutor(workers=1))
    t_stage = time.perf_counter() - t0
    t0 = time.perf_counter()
    require_valid(staged)
    t_validate = time.perf_counter() - t0
    t0 = time.perf_counter()
    shutil.copytree(staged / "dataset", scratch / "copy" / "dataset")
    shutil.copytree(staged / "images", scratch / "copy" / "images")
    t_copy = time.perf_counter() - t0
    with HubDouble(token) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        from huggingface_hub import constants

        constants.ENDPOINT = hub.url
        t0 = time.perf_counter()
        usum = run_stage(UploadStage(UploadConfig(to=str(staged), repo_id="bench/georanking", endpoint=hub.url)), run)
        t_upload = time.perf_counter() - t0
        n_files = len(hub.received)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ds, im = _size(staged / "dataset"), _size(staged / "images")
    st = summary.stats
    print(f"queries: {st['dataset']['queries']}  candidates: {st['dataset']['candidates']}  photos: {st['images']['photos']}")
    print(f"sizes: dataset {ds / 1e6:.1f} MB, images {im / 1e6:.1f} MB")
    print(f"stage (dataset+images, 1 worker): {t_stage:.2f} s = {t_stage / t_copy:.1f}x copytree of the staged bytes ({t_copy:.2f} s)")
    print(f"validate (datasets load, child process): {t_validate:.2f} s")
    print(f"upload to loopback Hub double: {t_upload:.2f} s, {n_files} files, {len(usum.done)} repos")
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
