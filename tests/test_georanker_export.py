"""``geobuild export georanker``: a GeoRanking table that satisfies exactly GeoRanker's reads."""

from __future__ import annotations


import pyarrow as pa
import pytest
from typer.testing import CliRunner

from _mine_fixtures import base_run_copy
from geobuild.cli import app
from geobuild.georanker import GeorankerOptions, candidates_to_georanking, entry_order, negative_example_texts
from geobuild.schemas import arrow_schema, check

runner = CliRunner()
GROUP_SIZE = 7


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    root = tmp_path_factory.mktemp("gr") / "run"
    run = base_run_copy(root)
    res = runner.invoke(app, ["mine", "--run", str(root)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


def test_export_loads_with_datasets_and_satisfies_georanker_reads(mined, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    import datasets

    out = tmp_path / "georanking.parquet"
    res = runner.invoke(app, ["export", "georanker", "--run", str(mined.root), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert ds.column_names == ["img_id", "gps", "ref_gps", "ref_img_id", "ref_texts"]
    assert len(ds) == 48
    for row in ds:
        # entry 0 is the query's own hit
        assert row["ref_img_id"][0] == row["img_id"]
        assert row["ref_gps"][0] == row["gps"]
        n = len(row["ref_gps"])
        assert len(row["ref_img_id"]) == n == len(row["ref_texts"])
        # the trainer: skip entry 0, rank entries 1..group_size
        group = list(zip(row["ref_gps"][1 : GROUP_SIZE + 1], row["ref_img_id"][1 : GROUP_SIZE + 1], row["ref_texts"][1 : GROUP_SIZE + 1]))
        assert len(group) == GROUP_SIZE
        assert row["img_id"] not in [g[1] for g in group]
        lat, lon = row["gps"]
        d = [_km(lat, lon, g[0][0], g[0][1]) for g in group]
        assert min(d) < 25 and max(d) > 750  # close and distant locations in every group
        # ... and show the last 5 as negative examples text
        neg = [f"latitude: {g[0]}, longitude: {g[1]}, {' '.join(t)}" for g, t in zip(row["ref_gps"][-5:], row["ref_texts"][-5:])]
        assert len(neg) == 5 and all(s.startswith("latitude: ") for s in neg)
        assert neg == negative_example_texts(row)
        assert n - 1 >= GROUP_SIZE + 5  # the tail does not overlap the group
        assert all(isinstance(t, str) for texts in row["ref_texts"] for t in texts)


def test_export_folder_one_file_per_shard(mined, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "dir"
    res = runner.invoke(app, ["export", "georanker", "--run", str(mined.root), "--out", str(out), "--shards", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["georanking-00001.parquet"]
    t = pq.read_table(out / files[0])
    check(t, "georanking")
    assert t.schema.equals(arrow_schema("georanking"), check_metadata=False)


def test_group_layout_and_too_few_candidates():
    opts = GeorankerOptions()
    src = ["image"] * 4 + ["gps"] * 4 + ["negative"] * 4
    rank = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    band = [None] * 8 + ["near", "regional", "far", "far"]
    order = entry_order(src, rank, band, opts)
    assert order[:5] == [0, 4, 1, 5, 2]  # image/gps interleaved by rank
    assert [band[i] for i in order[5:7]] == ["regional", "far"]
    assert sorted(order) == list(range(12))
    assert [src[i] for i in order[-2:]] == ["negative", "negative"]
    assert entry_order(src[:11], rank[:11], band[:11], opts) is None

    tbl = pa.table({
        "key": ["a"], "id": ["a.jpg"], "lat": [1.0], "lon": [2.0], "texts": [["X"]],
        "cand_source": [src[:6]], "cand_rank": [rank[:6]], "cand_band": [band[:6]], "cand_id": [[str(i) for i in range(6)]],
        "cand_lat": [[0.0] * 6], "cand_lon": [[0.0] * 6], "cand_texts": [[["t"]] * 6],
    })
    conv = candidates_to_georanking(tbl, opts)
    assert conv.table.num_rows == 0 and conv.dropped[0]["status"] == "too_few_candidates"


def _km(la1, lo1, la2, lo2):
    from geobuild.geo import haversine_km

    return float(haversine_km(la1, lo1, la2, lo2))
