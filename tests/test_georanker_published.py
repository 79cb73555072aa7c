"""``geobuild export georanker --from``: the train bundle rebuilt from a published dataset (its
``georanker`` config + ``-images`` companion) equals the bundle exported straight from the run."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from publish_helpers import make_run  # noqa: E402
from test_publish import publish  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL = 5  # photo index written at 5120 bytes or less (not among the photos of the row with the ghost candidate)


def export(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "GEOBUILD_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "geobuild", "export", "georanker", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A run (one small photo, one candidate without a photo) published, then exported both ways."""
    tmp = tmp_path_factory.mktemp("grpub")
    run = make_run(tmp / "run", k_image=12, drop_distance=False, small=frozenset({SMALL}))
    for unit in ("00000", "00001"):  # mined (export reads the units mine marked done)
        run.marker_path("mine", unit).parent.mkdir(parents=True, exist_ok=True)
        run.marker_path("mine", unit).write_text("{}\n")
    proc = publish(tmp, "--run", str(run.root), "--to", str(tmp / "pub"), "--georanker-candidates", "12",
                   "--images-per-tar", "8", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    for args in (["--from", str(tmp / "pub"), "--out", str(tmp / "from_pub")],
                 ["--run", str(run.root), "--candidates", "12", "--out", str(tmp / "from_run")]):
        proc = export(tmp, *args)
        assert proc.returncode == 0, proc.stderr
    return tmp, run


def _rows(path: Path) -> dict[str, dict]:
    return {r["img_id"]: r for r in pq.read_table(path).to_pylist()}


def test_rebuilt_bundle_equals_the_run_export(both):
    tmp, run = both
    rebuilt, direct = _rows(tmp / "from_pub" / "GeoRanking.parquet"), _rows(tmp / "from_run" / "GeoRanking.parquet")
    assert rebuilt == direct
    # the photo of 5120 bytes or less: no row references it (its own row and every row listing it are left out)
    small_id = pq.read_table(run.path("candidates", "00000.parquet")).column("id")[SMALL].as_py()
    assert small_id not in rebuilt and all(small_id not in r["ref_img_id"] for r in rebuilt.values())
    assert set(rebuilt) == _expected(run)[0] - _expected(run)[2]
    with open(tmp / "from_pub" / "tar_index.pkl", "rb") as f:
        index = pickle.load(f)
    with tarfile.open(tmp / "from_pub" / "images.tar") as tar:
        for r in rebuilt.values():
            for gid in r["ref_img_id"]:
                data = tar.extractfile(index[gid]).read()
                assert len(data) > 5120 and data[:2] == b"\xff\xd8"
    assert sorted(index) == sorted({i for r in rebuilt.values() for i in r["ref_img_id"]})


def _expected(run) -> tuple[set[str], set[str], set[str]]:
    """From the candidates files: (rows the config keeps, rows referencing the small photo, rows
    referencing the photo no shard holds); a row references the query and its first 12 image candidates."""
    rows = [r for u in ("00000", "00001") for r in pq.read_table(run.path("candidates", f"{u}.parquet")).to_pylist()]
    small_id = rows[SMALL]["id"]
    keep, small, ghost = set(), set(), set()
    for r in rows:
        refs = [r["id"]] + [c for c, s in zip(r["cand_id"], r["cand_source"]) if s == "image"][:12]
        if small_id in refs:
            small.add(r["id"])
        else:
            keep.add(r["id"])
            if "ghost.jpg" in refs:
                ghost.add(r["id"])
    return keep, small, ghost


def test_published_config_holds_the_export_rows(both):
    """The config applies the same small-photo rule; a row whose candidate photo no shard holds stays
    in the config (publish cannot see it) and the rebuild leaves it out with a ledger row."""
    tmp, run = both
    keep, small, ghost = _expected(run)
    assert small and keep and ghost
    config = {}
    for f in sorted((tmp / "pub" / "dataset" / "georanker").glob("*.parquet")):
        config.update(_rows(f))
    direct = _rows(tmp / "from_run" / "GeoRanking.parquet")
    assert set(config) == keep and set(direct) == keep - ghost
    assert all(config[k] == direct[k] for k in direct)
    ledger = {r["id"]: r["status"] for r in pq.read_table(tmp / "from_pub" / "ledger.parquet").to_pylist()}
    assert ledger == {i: "photo_missing" for i in ghost}


def test_bad_sources_are_one_error_line(both, tmp_path):
    tmp, run = both
    cases = [
        (["--from", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "neither a folder nor a Hub dataset"),
        (["--from", str(tmp / "pub" / "dataset"), "--out", str(tmp_path / "o")], "no images folder"),
        (["--from", str(run.root), "--images", str(tmp / "pub" / "images"), "--out", str(tmp_path / "o")], "no georanker config"),
        (["--from", str(tmp / "pub"), "--run", str(run.root), "--out", str(tmp_path / "o")], "exactly one of --run"),
    ]
    for args, msg in cases:
        proc = export(tmp_path, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], proc.stderr
        assert not (tmp_path / "o").exists()
