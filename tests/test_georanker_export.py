"""``geobuild export georanker``: a GeoRanking table that satisfies exactly GeoRanker's reads."""

from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _mine_fixtures import CITIES, Photo, base_run_copy, build_run, make_photos
from georanker_reads import check_georanker_row
from geobuild.cli import app
from geobuild.artifacts.georanking import GeorankerOptions, candidates_to_georanking, entry_order
from geobuild.core.schemas import arrow_schema, check

runner = CliRunner()


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
        check_georanker_row(row, close_and_far=True)  # image neighbours close, far band negative in the group


@pytest.fixture(scope="module")
def mined_far(tmp_path_factory):
    """Every image neighbour (and so every GPS candidate) of every query is in another city, > 3000 km
    away: the 6 photos sharing an embedding direction sit in the 6 different cities."""
    names = list(CITIES)
    photos = []
    for p in make_photos(per_city=len(names)):
        home, far = CITIES[p.city], CITIES[names[(names.index(p.city) + int(p.key[-3:])) % len(names)]]
        photos.append(Photo(p.key, p.id, far[0] + p.lat - home[0], far[1] + p.lon - home[1], p.author, p.vec, p.city))
    root = tmp_path_factory.mktemp("gr-far") / "run"
    run, _ = build_run(root, photos)
    res = runner.invoke(app, ["mine", "--run", str(root), "--k-image", "5", "--k-gps", "3", "--kde-neighbours", "5"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


def test_group_holds_a_near_negative_when_all_image_neighbours_are_far(mined_far, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    cand = pa.concat_tables([pq.read_table(p) for p in sorted(mined_far.path("candidates").glob("*.parquet"))])
    for row in cand.to_pylist():  # the fixture: image/GPS candidates all far, negatives in every band
        km = [_km(row["lat"], row["lon"], la, lo) for la, lo in zip(row["cand_lat"], row["cand_lon"])]
        assert min(k for k, s in zip(km, row["cand_source"]) if s != "negative") > 750
        assert {"near", "regional", "far"} <= set(row["cand_band"])
    out = tmp_path / "georanking.parquet"
    res = runner.invoke(app, ["export", "georanker", "--run", str(mined_far.root), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == cand.num_rows == 36
    queries = {r["id"]: (r["lat"], r["lon"]) for r in cand.to_pylist()}
    for row in ds:
        check_georanker_row(row, query=queries[row["img_id"]], close_and_far=True)

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
    assert [band[i] for i in order[5:7]] == ["near", "far"]  # a close and a distant negative in the group
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
    from geobuild.geo.sphere import haversine_km

    return float(haversine_km(la1, lo1, la2, lo2))


def test_queries_left_out_of_the_export_are_in_its_ledger(mined, tmp_path):
    import pyarrow.parquet as pq

    queries = sum(pq.read_metadata(p).num_rows for p in (mined.root / "candidates").glob("*.parquet"))
    out = tmp_path / "gr.parquet"
    # a tail longer than any candidate list: every query is left out, and each one is listed
    res = runner.invoke(app, ["export", "georanker", "--run", str(mined.root), "--out", str(out), "--tail", "500"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    ledger = pq.read_table(tmp_path / "gr.parquet.ledger.parquet").to_pylist()
    assert pq.read_metadata(out).num_rows + len(ledger) == queries and len(ledger) == queries
    assert {r["status"] for r in ledger} == {"too_few_candidates"} and all(r["key"] for r in ledger)
    # a clean export afterwards removes the stale ledger
    res = runner.invoke(app, ["export", "georanker", "--run", str(mined.root), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and not (tmp_path / "gr.parquet.ledger.parquet").exists()
