"""Trust nothing on disk, on the real sample: `geobuild run pipelines/sample.yaml` killed with
SIGKILL at fixed points of every stage and resumed, damaged outputs of every stage, a moved run,
and the published cards. One clean run is the reference for all of them.

To stay within a few minutes the run uses real IM2GPS3K photos with a 120-row slice of the
metadata (the other photos of the zip go to the ledger) and the first 2000 points of GeoCLIP's
GPS gallery; every stage runs as in `make sample`.
"""

from __future__ import annotations

import csv
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

ROWS, PER_SHARD, GPS_POINTS = 120, 40, 2000
#: what may differ between two runs of the same inputs: timings (report/ shows the run's seconds),
#: and the run's own absolute path
NOT_COMPARED = ("stats/", "summary.json", "pipeline.yaml", "report/")
#: (path whose appearance triggers the kill, the stage it lands in, that stage's units); one per stage.
#: The landing is asserted where seconds of work follow the trigger (shard and distances units take
#: milliseconds: their kill may land a unit later)
KILLS = [
    ("done/shard/00000", None, 0),
    ("done/embed/00000", "embed", 3),
    ("done/index/gallery", "index", 2),
    ("done/mine/00001", "mine", 3),
    ("distances/00000.parquet", None, 0),
    ("publish/dataset.tmp-*", "publish", 2),
]


def _slice_csv(src: Path, dst: Path, rows: int) -> Path:
    with open(src, newline="") as f, open(dst, "w", newline="") as g:
        writer = csv.writer(g)
        for i, row in enumerate(csv.reader(f)):
            if i > rows:
                break
            writer.writerow(row)
    return dst


class Sample:
    """Inputs, environment and command line of the reduced sample pipeline."""

    def __init__(self, shared: Path, folder: Path):
        from geobuild.encoders.location import geoclip_gallery_csv

        folder.mkdir(parents=True, exist_ok=True)
        self.metadata = _slice_csv(shared / "data" / "im2gps3k" / "im2gps3k_places365.csv", folder / "meta.csv", ROWS)
        self.gps = _slice_csv(geoclip_gallery_csv(), folder / "gps.csv", GPS_POINTS)
        self.env = {**os.environ, "GEOBUILD_SHARED": str(shared), "GEOBUILD_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": str(REPO), "COLUMNS": "250"}

    def args(self, out: Path, metadata: Path | None = None, gps: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "geobuild", "run", "pipelines/sample.yaml", "--out", str(out),
                "--set", f"shard.metadata={metadata or self.metadata}", "--set", f"shard.samples_per_shard={PER_SHARD}",
                "--set", f"index.gps_gallery={gps or self.gps}"]

    def run(self, out: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(self.args(out, **kw) + list(extra), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    def geobuild(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "geobuild", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=900)


def kill_when(sample: Sample, out: Path, pattern: str, log: Path, timeout: float = 600) -> None:
    """Start the pipeline and SIGKILL it (its whole process group) as soon as ``pattern`` appears
    below ``out``; the kill must land while it runs."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(sample.args(out), cwd=REPO, env=sample.env, stdout=f, stderr=f, start_new_session=True)
    t0 = time.time()
    try:
        while not any(out.glob(pattern)):
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {pattern} appeared:\n{log.read_text()[-2000:]}"
            assert time.time() - t0 < timeout, f"{pattern} did not appear within {timeout}s"
            time.sleep(0.003)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        rc = proc.wait()
    assert rc == -signal.SIGKILL, f"not killed (exit {rc}) at {pattern}"


def run_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith(NOT_COMPARED)}


def assert_same_run(got: Path, want: Path) -> None:
    a, b = run_files(got), run_files(want)
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"files differ from the clean run: {differ}"
    for d in ("shards", "embeddings", "index", "candidates", "distances", "publish"):
        assert any(k.startswith(d + "/") for k in a), d
    assert not [k for k in a if ".tmp-" in k]


def summary_stages(out: Path) -> dict[str, dict]:
    return {s["stage"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def sample(shared, tmp_path_factory) -> Sample:
    return Sample(shared, tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def clean(sample, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "run"
    sample.run(out)
    return out


def test_published_card_and_manifest_hold_no_local_path_user_or_timing(clean, shared):
    machine = {str(clean.parent), str(shared), str(Path.home()), str(REPO), str(Path(sys.executable).parent), getpass.getuser()}
    machine = {m for m in machine if len(m) > 3}
    for repo in ("dataset", "images"):
        for name in ("README.md", "manifest.json"):
            text = (clean / "publish" / repo / name).read_text()
            for m in machine:
                assert m not in text, f"{repo}/{name} holds {m!r}"
            assert not re.search(r"(?<![\w.])/(home|root|tmp|work|Users|mnt|var)/", text), f"{repo}/{name} holds an absolute path"
            assert "seconds" not in text and "hf_" not in text
    card = (clean / "publish" / "dataset" / "README.md").read_text()
    assert "images: im2gps3ktest.zip" in card and "metadata: meta.csv" in card and "to: publish" in card
    for name in ("info.json", "gps_info.json"):
        info = json.loads((clean / "index" / name).read_text())
        assert not [k for k in info if "seconds" in k], info
        assert str(clean.parent) not in json.dumps(info)
    assert json.loads((clean / "stats" / "index" / "gallery.json").read_text())["build_seconds"] >= 0


def test_moved_run_with_moved_inputs_resumes_with_no_work(sample, clean, tmp_path):
    out = tmp_path / "somewhere" / "else"
    shutil.copytree(clean, tmp_path / "copy", symlinks=True)
    out.parent.mkdir()
    (tmp_path / "copy").rename(out)
    meta, gps = tmp_path / "m.csv", tmp_path / "g.csv"
    shutil.copy(sample.metadata, meta)
    shutil.copy(sample.gps, gps)
    done_before = {p: p.read_bytes() for p in sorted((out / "done").rglob("*")) if p.is_file()}
    r = sample.run(out, metadata=meta, gps=gps)
    assert "different configuration" not in r.stdout + r.stderr and "redoing" not in r.stdout + r.stderr
    st = summary_stages(out)
    assert all(s["done"] == 0 and s["skipped"] == s["units"] > 0 and s["status"] == "ok" for s in st.values()), st
    assert {p: p.read_bytes() for p in sorted((out / "done").rglob("*")) if p.is_file()} == done_before
    assert sample.geobuild("verify", str(out), "--deep").returncode == 0


def test_damaged_outputs_of_every_stage_are_reported_and_redone(sample, clean, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(clean, out, symlinks=True)
    damage = {
        "shards/00001.tar": "missing",
        "embeddings/00002.npy": 1000,
        "index/gallery.faiss": "missing",
        "index/gps_gallery.parquet": 100,
        "candidates/00000.parquet": 500,
        "distances/00001.parquet": "missing",
        "publish/dataset/README.md": "missing",
        "publish/images/train/00000.tar": 10_000,
    }
    for rel, how in damage.items():
        p = out / rel
        if how == "missing":
            p.unlink()
        else:
            with open(p, "r+b") as f:
                f.truncate(how)
    before = sample.geobuild("verify", str(out))
    assert before.returncode == 1
    for rel in damage:
        assert rel in before.stdout, f"verify does not report {rel}:\n{before.stdout}"
    r = sample.run(out)
    for stage in ("shard", "embed", "index", "mine", "distances", "publish"):
        assert f"{stage}: redoing unit" in r.stdout + r.stderr
    st = summary_stages(out)
    assert [st[s]["done"] for s in ("shard", "embed", "index", "mine", "distances", "publish")] == [1, 1, 2, 1, 1, 2]
    assert_same_run(out, clean)
    after = sample.geobuild("verify", str(out), "--deep")
    assert after.returncode == 0, after.stdout
    # the staged folder deleted: publish redoes it, --overwrite or not
    shutil.rmtree(out / "publish")
    r = sample.geobuild("publish", "--run", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(out, clean)


def test_killed_at_every_stage_and_resumed_gives_the_clean_bytes(sample, clean, tmp_path):
    out, log = tmp_path / "run", tmp_path / "killed.log"
    for pattern, stage, units in KILLS:
        kill_when(sample, out, pattern, log)
        if stage:
            done = [p for p in (out / "done" / stage).glob("*") if ".tmp-" not in p.name]
            assert len(done) < units, f"{pattern}: the kill came after {stage} had finished"
    sample.run(out)
    assert not list(out.rglob("*.tmp-*"))
    assert_same_run(out, clean)
    assert sample.geobuild("verify", str(out)).returncode == 0
