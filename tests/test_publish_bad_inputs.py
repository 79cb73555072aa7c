"""publish on damaged run folders: a distances row that does not match its candidates, a shard
sample without its photo. Each becomes a ledger row with its reason; the rest is published."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from publish_helpers import make_run  # noqa: E402

from geobuild.artifacts.shards import ShardWriter, iter_shard, json_bytes  # noqa: E402
from geobuild.cli import app  # noqa: E402
from geobuild.core import schemas  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def published_keys(out: Path) -> set[str]:
    return {r["key"] for p in (out / "dataset" / "candidates").glob("*.parquet") for r in pq.read_table(p, columns=["key"]).to_pylist()}


def published_photos(out: Path) -> set[str]:
    return {s["__key__"] for p in (out / "images").rglob("*.tar") for s in iter_shard(p)}


def test_distance_mismatch_and_no_image_are_ledger_rows(tmp_path):
    run = make_run(tmp_path / "run", k_image=12, drop_distance=False, missing_photo=False)
    # distances: im00003 has one query distance fewer than its candidates; im00005's matrix is short
    path = run.path("distances", "00000.parquet")
    rows = pq.read_table(path).to_pylist()
    by_key = {r["key"]: r for r in rows}
    g = by_key["im00003"]["n_candidates"]
    by_key["im00003"].update(n_candidates=g - 1, query_km=by_key["im00003"]["query_km"][:-1])
    by_key["im00005"]["matrix_km"] = by_key["im00005"]["matrix_km"][:-3]
    pq.write_table(schemas.table("distances", {k: [r[k] for r in rows] for k in rows[0]}), path)
    # shards: im00014's sample keeps its JSON but lost its photo
    shard = run.shard_path("00001")
    samples = list(iter_shard(shard))
    with ShardWriter(shard) as w:
        for s in samples:
            files = {"json": json_bytes(s["json"])}
            if s["__key__"] != "im00014":
                files["jpg"] = s["jpg"]
            w.write(s["__key__"], files)

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["publish", "--run", str(run.root), "--to", str(out), "--validation-fraction", "0.3",
                                 "--georanker-candidates", "12"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ledger = [row for p in sorted(run.path("ledger", "publish").glob("*.parquet")) for row in pq.read_table(p).to_pylist()]
    got = {(row["key"], row["status"]) for row in ledger}
    assert got == {("im00003", "distance_mismatch"), ("im00005", "distance_mismatch"), ("im00014", "no_image")}, ledger
    msgs = {row["key"]: row["error_message"] for row in ledger}
    assert msgs["im00003"] == f"{g} candidates but n_candidates={g - 1}, {g - 1} query distances, {g * g} matrix entries"
    assert msgs["im00005"] == f"{g} candidates but n_candidates={g}, {g} query distances, {g * g - 3} matrix entries"
    assert msgs["im00014"] == "sample im00014 in 00001.tar has no .jpg"
    # everything else is published: 24 queries less the two mismatched rows, every photo but the lost one
    assert published_keys(out) == {f"im{i:05d}" for i in range(24)} - {"im00003", "im00005"}
    assert "im00014" not in published_photos(out) and "im00013" in published_photos(out)
