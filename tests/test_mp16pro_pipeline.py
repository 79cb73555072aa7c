"""``pipelines/mp16pro.yaml`` end to end on a small MP16-Pro-shaped input (``benchmarks/make_mp16_like``):
byte-split tar parts, MP16-Pro ids and columns, broken/tiny/missing members. Only the model, the
device and the shard size are overridden (no CLIP weights or GPU here); the Hub upload stage is left
out (``--until publish``)."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_helpers import tiny_clip_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ROWS = 300
pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def mp16(tmp_path_factory, shared):
    tmp = tmp_path_factory.mktemp("mp16")
    env = {**os.environ, "PYTHONPATH": str(REPO), "GEOBUILD_SHARED": str(shared), "GEOBUILD_NO_PROGRESS": "1",
           "HF_HUB_OFFLINE": "1", "MP16_DIR": str(tmp / "mp16"),
           "MP16_MODEL": f"open_clip:local-dir:{tiny_clip_dir(tmp / 'clip')}", "EMBED_DEVICE": "cpu", "EMBED_DECODERS": "0"}
    _run(["-m", "benchmarks.make_mp16_like", "--rows", str(ROWS), "--out", str(tmp / "mp16")], env, REPO)
    _run(["-m", "geobuild", "run", str(REPO / "pipelines" / "mp16pro.yaml"), "--out", str(tmp / "run"),
          "--until", "publish", "--set", "shard.samples_per_shard=100"], env, tmp)
    _run(["-m", "geobuild", "export", "georanker", "--run", str(tmp / "run"), "--out", str(tmp / "bundle")], env, tmp)
    _run(["-m", "geobuild", "export", "georanker", "--from", str(tmp / "run" / "publish"), "--out", str(tmp / "rebuilt")], env, tmp)
    return tmp


def test_ledger_and_outputs_add_up_to_the_input(mp16):
    expected = json.loads((mp16 / "mp16" / "expected.json").read_text())
    summary = json.loads((mp16 / "run" / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert summary["ok"] and list(stages) == ["shard", "embed", "index", "mine", "distances", "publish"]
    want = expected["ledger_by_status"]["min_bytes=5121"]
    ledger = pq.read_table(mp16 / "run" / "ledger" / "shard").column("status").to_pylist()
    assert {s: ledger.count(s) for s in set(ledger)} == want
    assert sum(want.values()) == ROWS + expected["extra"]
    photos = sum(json.loads((mp16 / "run" / "shards" / "sizes.json").read_text()).values())
    assert photos == want["ok"] == expected["ok"] - expected["small_ok"]
    for name in ("embed", "index", "mine", "distances"):
        assert stages[name]["samples_in"] == stages[name]["samples_out"] + sum(stages[name]["rejects"].values()) == photos
    manifest = json.loads((mp16 / "run" / "publish" / "dataset" / "manifest.json").read_text())
    assert sum(manifest["rows"]["candidates"].values()) == photos


def test_mp16pro_ids_and_georanker_bundles(mp16):
    table = pq.read_table(mp16 / "bundle" / "GeoRanking.parquet").to_pylist()
    rebuilt = pq.read_table(mp16 / "rebuilt" / "GeoRanking.parquet").to_pylist()
    assert sorted(table, key=lambda r: r["img_id"]) == sorted(rebuilt, key=lambda r: r["img_id"])
    assert len(table) > ROWS // 2
    shard_ids = {json.loads(m)["id"] for t in (mp16 / "run" / "shards").glob("*.tar")
                 for m in [tarfile.open(t).extractfile(x).read() for x in tarfile.open(t) if x.name.endswith(".json")]}
    assert all(re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{2}/\d+\.jpg", i) for i in shard_ids)  # MP16-Pro's id form in the shards
    with open(mp16 / "bundle" / "tar_index.pkl", "rb") as f:
        index = pickle.load(f)
    with tarfile.open(mp16 / "bundle" / "images.tar") as tar:
        for row in table:
            assert len(row["ref_img_id"]) == 21
            for gid in row["ref_img_id"]:
                assert re.fullmatch(r"[0-9a-f]{2}_[0-9a-f]{2}_\d+\.jpg", gid) and gid.replace("_", "/", 2) in shard_ids
                assert tar.extractfile(index[gid]).read(2) == b"\xff\xd8" and index[gid].size > 5120
