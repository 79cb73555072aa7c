"""The mine stage on synthetic runs with known geometry, through the CLI where it matters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _mine_fixtures import CITIES, MODEL, Photo, base_run_copy, build_run, directions, make_photos, write_embeddings
from geobuild.cli import app
from killpoint import run_killed
from geobuild.geo.sphere import THRESHOLDS_KM
from geobuild.core.runfolder import RunFolder
from geobuild.artifacts.candidates import read_candidates

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def fatal(*args: str) -> str:
    """Run a command that must fail with one clear GeobuildError line (exit 2)."""
    from geobuild.core.errors import GeobuildError

    with pytest.raises(GeobuildError) as info:
        runner.invoke(app, list(args), catch_exceptions=False, standalone_mode=False)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def run(tmp_path):
    return base_run_copy(tmp_path / "run")


def all_candidates(run: RunFolder) -> pd.DataFrame:
    return pd.concat([read_candidates(run, u).to_pandas() for u in run.done_units("mine")], ignore_index=True)


def test_image_neighbours_are_the_same_city_and_never_the_query(run):
    res = cli("mine", "--run", str(run.root), "--k-image", "5", "--negatives", "none", "--k-gps", "0")
    assert res.exit_code == 0, res.output
    df = all_candidates(run)
    assert len(df) == 48 and sorted(df["shard"].unique()) == ["00000", "00001"]
    for _, r in df.iterrows():
        city = r["key"].rstrip("0123456789")
        assert list(r["cand_source"]) == ["image"] * 5
        assert r["key"] not in list(r["cand_key"])
        assert all(k.startswith(city) for k in r["cand_key"])  # 7 same-city photos, K=5
        assert list(r["cand_rank"]) == list(range(5))
        assert np.all(np.diff(r["cand_score"]) <= 1e-6)
        assert r["n_image"] == 5 and r["n_gps"] == 0 and r["n_negative"] == 0
    stats = json.loads(run.stats_path("mine", "00000").read_text())
    assert stats["excluded"]["self"] == 24 and stats["mined"] == 24 and stats["rejected"] == 0


def test_exclude_same_author(run):
    assert cli("mine", "--run", str(run.root), "--k-image", "5", "--exclude-same-author").exit_code == 0
    df = all_candidates(run)
    authors = {f"{p.key}": p.author for p in make_photos()}
    for _, r in df.iterrows():
        img = [k for k, s in zip(r["cand_key"], r["cand_source"]) if s == "image"]
        assert len(img) == 5
        assert all(authors[k] != r["author"] for k in img)
        city = r["key"].rstrip("0123456789")
        # 4 same-city photos by the other author rank first, then other cities
        assert sum(k.startswith(city) for k in img) == 4


def test_near_duplicates_are_excluded_unless_kept(tmp_path):
    photos = make_photos()
    dup_of = photos[0]
    dup = Photo("copyofparis", "copyofparis.jpg", dup_of.lat, dup_of.lon, "someone", dup_of.vec.copy(), "paris")
    run, _ = build_run(tmp_path / "dup", photos=photos + [dup], gps=None)
    assert cli("mine", "--run", str(run.root), "--k-image", "3", "--negatives", "none").exit_code == 0
    df = all_candidates(run).set_index("key")
    assert "copyofparis" not in list(df.loc["paris000", "cand_key"])
    assert "paris000" not in list(df.loc["copyofparis", "cand_key"])
    stats = [json.loads(run.stats_path("mine", u).read_text()) for u in ("00000", "00001")]
    assert sum(s["excluded"].get("near_duplicate", 0) for s in stats) == 2
    assert all(s.get("gps_skipped") == 24 or s.get("gps_skipped") == 25 for s in stats)  # no GPS gallery
    res = cli("mine", "--run", str(run.root), "--k-image", "3", "--negatives", "none", "--keep-duplicates", "--overwrite")
    assert res.exit_code == 0
    df = all_candidates(run).set_index("key")
    assert list(df.loc["paris000", "cand_key"])[0] == "copyofparis"
    assert df.loc["paris000", "cand_score"][0] > 0.999


def test_band_negatives_lie_in_their_bands_and_are_deterministic(run, tmp_path):
    args = ["--k-image", "3", "--k-gps", "3", "--negatives", "near=1,regional=3,far=3"]
    assert cli("mine", "--run", str(run.root), *args).exit_code == 0
    df = all_candidates(run)
    limits = {"near": (0, 25), "regional": (25, 750), "far": (750, 20100)}
    n_far = 0
    for _, r in df.iterrows():
        for s, b, d in zip(r["cand_source"], r["cand_band"], r["cand_dist_km"]):
            if s == "negative":
                lo, hi = limits[b]
                assert lo <= d < hi, (b, d)
                n_far += b == "far"
            else:
                assert b is None
        assert sum(b == "far" for b in r["cand_band"] if b) == 3
        # every group holds close and distant locations
        assert min(r["cand_dist_km"]) < 25 and max(r["cand_dist_km"]) > 750
    assert n_far == 3 * len(df)
    other = tmp_path / "again"
    shutil.copytree(run.root, other)
    shutil.rmtree(other / "candidates")
    shutil.rmtree(other / "done" / "mine")
    assert cli("mine", "--run", str(other), *args).exit_code == 0
    for u in ("00000", "00001"):
        assert read_candidates(run, u).equals(read_candidates(RunFolder(other), u))


def test_distances_and_within_flags_match_an_independent_formula(run):
    from geopy.distance import great_circle

    assert cli("mine", "--run", str(run.root)).exit_code == 0
    df = all_candidates(run)
    checked = 0
    for _, r in df.head(10).iterrows():
        for la, lo, d, w in zip(r["cand_lat"], r["cand_lon"], r["cand_dist_km"], r["cand_within"]):
            ref = great_circle((r["lat"], r["lon"]), (la, lo), radius=6371.0088).km
            assert d == pytest.approx(ref, rel=1e-5, abs=1e-3)
            assert list(w) == [ref < t for t in THRESHOLDS_KM] or abs(min(abs(ref - t) for t in THRESHOLDS_KM)) < 1e-2
            checked += 1
    assert checked > 200


def test_location_text_from_reverse_geocoding_and_from_gallery_columns(run, tmp_path):
    assert cli("mine", "--run", str(run.root), "--k-image", "3", "--k-gps", "2").exit_code == 0
    df = all_candidates(run).set_index("key")
    r = df.loc["tokyo000"]
    assert list(r["texts"])[-1] == "Japan"
    for s, country, cont, texts in zip(r["cand_source"], r["cand_country"], r["cand_continent"], r["cand_texts"]):
        if s in ("image", "gps"):
            assert (country, cont) == ("Japan", "Asia")
            assert list(texts)[-1] == "Japan"
    run2, _ = build_run(tmp_path / "texts", gps=None, with_text=True)
    assert cli("mine", "--run", str(run2.root), "--k-image", "3", "--negatives", "none").exit_code == 0
    r = all_candidates(run2).set_index("key").loc["cairo001"]
    assert list(r["texts"]) == ["City-cairo", "Country-cairo"]
    assert [list(t) for t in r["cand_texts"]] == [["City-cairo", "Country-cairo"]] * 3
    assert list(r["cand_continent"]) == [""] * 3  # the gallery has its own text: not geocoded


def test_kde_peak_lands_on_the_cluster():
    from geobuild.stages.mine.gps_candidates import kde_candidates
    from geobuild.geo.spatial import PointTree

    # GPS gallery: a 0.1-degree grid around Lyon and around Madrid
    g = np.arange(-1.0, 1.01, 0.1)
    lyon, madrid = (45.76, 4.84), (40.42, -3.70)
    pts = [(c[0] + a, c[1] + b) for c in (lyon, madrid) for a in g for b in g]
    tree = PointTree([p[0] for p in pts], [p[1] for p in pts])
    rng = np.random.default_rng(0)
    # 6 similar neighbours within ~2 km of a point near Lyon, 2 weaker ones at Madrid
    target = (45.80, 4.90)
    nb_lat = np.r_[target[0] + rng.normal(0, 0.01, 6), madrid[0], madrid[0]][None, :]
    nb_lon = np.r_[target[1] + rng.normal(0, 0.01, 6), madrid[1], madrid[1]][None, :]
    sim = np.r_[np.full(6, 0.85), 0.8, 0.8][None, :]
    pick = kde_candidates(nb_lat, nb_lon, sim, np.ones_like(sim, bool), tree, k=5, bandwidth_km=10, temperature=0.05)
    best = pick.rows[0, 0]
    assert abs(tree.lat[best] - 45.8) < 0.051 and abs(tree.lon[best] - 4.9) < 0.051
    assert np.all(np.diff(pick.scores[0]) <= 0)
    # with a minimum separation the K points are spread out, the densest still first
    spread = kde_candidates(nb_lat, nb_lon, sim, np.ones_like(sim, bool), tree, k=5, bandwidth_km=10,
                            temperature=0.05, min_sep_km=30)
    assert spread.rows[0, 0] == best
    from geobuild.geo.sphere import haversine_matrix_km

    r = spread.rows[0][spread.rows[0] >= 0]
    d = haversine_matrix_km(tree.lat[r], tree.lon[r], tree.lat[r], tree.lon[r])
    assert r.size == 5 and len(set(r.tolist())) == 5
    assert d[0, 1] >= 30  # the probed points near Lyon hold two modes 30 km apart, then fill-up
    # a weight on Madrid high enough moves the peak there
    sim2 = np.r_[np.full(6, 0.5), 0.95, 0.95][None, :]
    pick2 = kde_candidates(nb_lat, nb_lon, sim2, np.ones_like(sim2, bool), tree, k=1, bandwidth_km=10, temperature=0.05)
    assert abs(tree.lat[pick2.rows[0, 0]] - madrid[0]) < 0.051


def test_gps_candidates_are_near_the_true_city(run):
    assert cli("mine", "--run", str(run.root), "--k-image", "5", "--k-gps", "5").exit_code == 0
    df = all_candidates(run)
    gps_d = np.concatenate([np.asarray(r["cand_dist_km"])[np.asarray(r["cand_source"]) == "gps"] for _, r in df.iterrows()])
    assert gps_d.size == 5 * len(df)
    assert np.median(gps_d) < 60  # gallery points are spread ~40 km around each city


def test_gallery_of_another_run_and_model_mismatch(run, tmp_path):
    q = RunFolder(tmp_path / "queries")
    dirs = directions()
    qs = [Photo(f"q{c}", f"q{c}.jpg", lat + 0.01, lon, "x", dirs[c], c) for c, (lat, lon) in CITIES.items()]
    qs.append(Photo("qparis-dup", "paris003.jpg", 48.85, 2.35, None, dirs["paris"], "paris"))  # same id as a gallery photo
    write_embeddings(q, {"00000": qs})
    res = cli("mine", "--run", str(q.root), "--gallery", str(run.root), "--k-image", "4", "--k-gps", "2")
    assert res.exit_code == 0, res.output
    df = read_candidates(q, "00000").to_pandas().set_index("key")
    for c in CITIES:
        keys = [k for k, s in zip(df.loc[f"q{c}", "cand_key"], df.loc[f"q{c}", "cand_source"]) if s == "image"]
        assert len(keys) == 4 and all(k.startswith(c) for k in keys)
    assert "paris003" not in list(df.loc["qparis-dup", "cand_key"])  # the same source id is the query itself
    assert not (q.root / "index").exists()
    other = RunFolder(tmp_path / "other-model")
    write_embeddings(other, {"00000": qs}, model="efficientnet-lite0")
    msg = fatal("mine", "--run", str(other.root), "--gallery", str(run.root))
    assert "efficientnet-lite0" in msg and MODEL in msg and "same --model" in msg


def test_geoclip_scorer_refuses_other_models(run):
    msg = fatal("mine", "--run", str(run.root), "--gps-scorer", "geoclip")
    assert "open_clip:ViT-L-14:openai" in msg and MODEL in msg


def test_geoclip_scorer_matches_geoclip_softmax(tmp_path):
    import torch

    from geobuild.stages.mine.gps_candidates import geoclip_candidates, load_geoclip_head
    from geobuild.encoders.location import encode_gps

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 768)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lat, lon = rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)
    feats = encode_gps(lat, lon, device="cpu")
    pick = geoclip_candidates(x, feats, k=5)
    mlp, logit_scale = load_geoclip_head()
    with torch.no_grad():
        img = torch.nn.functional.normalize(mlp(torch.from_numpy(x * 20.0)), dim=1)
        probs = (np.exp(logit_scale) * img @ torch.from_numpy(feats).T).softmax(dim=1).numpy()
    ref_rows = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    assert np.array_equal(pick.rows, ref_rows)
    assert np.allclose(pick.scores, np.take_along_axis(probs, ref_rows, axis=1), rtol=1e-4, atol=1e-7)


def test_geoclip_scorer_end_to_end_with_vit_l14_features(tmp_path):
    dirs = np.random.default_rng(3).normal(size=(len(CITIES), 768))
    photos = [Photo(p.key, p.id, p.lat, p.lon, p.author, v / np.linalg.norm(v), p.city)
              for p, v in zip(make_photos(per_city=3), np.repeat(dirs, 3, axis=0) + 0.1 * np.random.default_rng(4).normal(size=(18, 768)))]
    root = tmp_path / "vitl"
    run = RunFolder(root)
    write_embeddings(run, {"00000": photos}, model="open_clip:ViT-L-14:openai", dim=768)
    from _mine_fixtures import gps_csv
    from geobuild.core.runner import run_stage
    from geobuild.stages.index.stage import IndexConfig, IndexStage

    run_stage(IndexStage(IndexConfig(kind="flat", gps_gallery=gps_csv(root / "g.csv"), device="cpu")), run)
    assert cli("mine", "--run", str(root), "--gps-scorer", "geoclip", "--k-gps", "4", "--k-image", "2").exit_code == 0
    df = read_candidates(run, "00000").to_pandas()
    for _, r in df.iterrows():
        s = np.asarray(r["cand_score"])[np.asarray(r["cand_source"]) == "gps"]
        assert s.size == 4 and np.all(np.diff(s) <= 0) and 0 < s.sum() <= 1.0


def test_bad_queries_go_to_the_ledger_and_rows_add_up(tmp_path):
    photos = make_photos()
    photos[1] = Photo("badgps", "badgps.jpg", float("nan"), 2.0, "z", photos[1].vec, "paris")
    photos[3] = Photo("zerogps", "zerogps.jpg", 0.0, 0.0, "z", photos[3].vec, "paris")
    run, _ = build_run(tmp_path / "bad", photos=photos, gps=None)
    # k larger than the gallery: clamped, with a note in the stats
    res = cli("mine", "--run", str(run.root), "--k-image", "500", "--negatives", "far=1")
    assert res.exit_code == 0, res.output
    total = 0
    for u in ("00000", "00001"):
        stats = json.loads(run.stats_path("mine", u).read_text())
        ledger = pq.read_table(run.ledger_path("mine", u)).to_pandas() if run.ledger_path("mine", u).exists() else pd.DataFrame(columns=["status"])
        n = read_candidates(run, u).num_rows
        assert n + len(ledger) == stats["queries"] == 24
        assert stats["k_image_clamped_to"] == 45  # 46 indexed photos besides the query
        total += len(ledger)
        if len(ledger):
            assert set(ledger["status"]) == {"invalid_coordinates"}
    assert total == 2  # the two photos with invalid coordinates: not in the gallery, ledgered as queries
    idx = pd.read_parquet(run.path("index", "ids.parquet"))
    assert "badgps" not in set(idx["key"])


def test_invalid_query_coordinates_are_ledgered(run, tmp_path):
    q = RunFolder(tmp_path / "q")
    dirs = directions()
    qs = [Photo("ok1", "ok1.jpg", 48.85, 2.35, None, dirs["paris"], "paris"),
          Photo("nan1", "nan1.jpg", float("nan"), 2.35, None, dirs["paris"], "paris"),
          Photo("far1", "far1.jpg", 120.0, 2.35, None, dirs["paris"], "paris")]
    write_embeddings(q, {"00000": qs})
    assert cli("mine", "--run", str(q.root), "--gallery", str(run.root)).exit_code == 0
    assert read_candidates(q, "00000").column("key").to_pylist() == ["ok1"]
    ledger = pq.read_table(q.ledger_path("mine", "00000")).to_pandas()
    assert sorted(ledger["key"]) == ["far1", "nan1"] and set(ledger["status"]) == {"invalid_coordinates"}


def test_missing_and_corrupt_embeddings(run):
    msg = fatal("mine", "--run", str(run.root), "--shards", "0-3")
    assert "00002" in msg and "geobuild embed" in msg
    npy = run.path("embeddings", "00001.npy")
    npy.write_bytes(npy.read_bytes()[:100])
    msg = fatal("mine", "--run", str(run.root))
    assert "1 of 2 units failed" in msg and "00001" in msg and "unreadable" in msg and "geobuild embed" in msg
    assert run.done_units("mine") == ["00000"]


def test_shard_spec_selects_units(run):
    assert cli("mine", "--run", str(run.root), "--shards", "{00001..00001}").exit_code == 0
    assert run.done_units("mine") == ["00001"]
    assert cli("mine", "--run", str(run.root), "--shards", "0").exit_code == 0
    assert run.done_units("mine") == ["00000", "00001"]


def test_kill_and_resume_gives_identical_output(tmp_path):
    import os
    import signal

    photos = make_photos(per_city=20)
    clean, _ = build_run(tmp_path / "clean", photos=photos, shards=6)
    killed = tmp_path / "killed"
    shutil.copytree(clean.root, killed)
    args = ["--k-image", "10", "--k-gps", "10"]
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1")
    assert cli("mine", "--run", str(clean.root), *args).exit_code == 0
    # SIGKILL once unit 00002's candidates are in their temporary file, before the rename
    run_killed(signal.SIGKILL, "candidates/00002.parquet", 1, ["mine", "--run", killed, *args])
    assert RunFolder(killed).done_units("mine") == ["00000", "00001"]
    assert not (killed / "candidates" / "00002.parquet").exists()
    assert len(list((killed / "candidates").glob("00002.parquet.tmp-*"))) == 1
    r = subprocess.run([sys.executable, "-m", "geobuild", "mine", "--run", str(killed), *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "4 units done, 2 skipped" in r.stderr
    for u in [f"{i:05d}" for i in range(6)]:
        assert read_candidates(clean, u).equals(read_candidates(RunFolder(killed), u))
    assert sorted(p.name for p in (killed / "candidates").iterdir()) == sorted(p.name for p in clean.path("candidates").iterdir())


def test_non_finite_query_embeddings_are_bad_embedding_rows(run, tmp_path):
    q = RunFolder(tmp_path / "q")
    dirs = directions()
    nan_vec, inf_vec = np.full(16, np.nan), dirs["tokyo"].copy()
    inf_vec[3] = np.inf
    qs = [Photo("ok1", "ok1.jpg", 48.85, 2.35, None, dirs["paris"], "paris"),
          Photo("nanvec", "nanvec.jpg", 48.85, 2.35, None, nan_vec, "paris"),
          Photo("infvec", "infvec.jpg", 35.68, 139.69, None, inf_vec, "tokyo"),
          Photo("ok2", "ok2.jpg", 35.68, 139.69, None, dirs["tokyo"], "tokyo")]
    write_embeddings(q, {"00000": qs})
    assert cli("mine", "--run", str(q.root), "--gallery", str(run.root)).exit_code == 0
    cands = read_candidates(q, "00000").to_pandas()
    assert cands["key"].tolist() == ["ok1", "ok2"]
    ledger = pq.read_table(q.ledger_path("mine", "00000")).to_pylist()
    assert [(r["key"], r["id"], r["status"]) for r in ledger] == [("nanvec", "nanvec.jpg", "bad_embedding"), ("infvec", "infvec.jpg", "bad_embedding")]
    assert all(r["error_message"] == "query embedding has non-finite values" for r in ledger)
    stats = json.loads(q.stats_path("mine", "00000").read_text())
    assert stats["rejected_by_reason"] == {"bad_embedding": 2} and stats["mined"] == 2
    # the good queries still got their city's photos
    assert all(k.startswith("paris") for k in cands["cand_key"][0][:5]) and all(k.startswith("tokyo") for k in cands["cand_key"][1][:5])


def test_a_query_with_nothing_to_mine_is_a_no_candidates_row(tmp_path):
    # one photo, no GPS gallery, no distance bands: the gallery holds nothing but the query itself
    solo = [Photo("solo", "solo.jpg", 48.85, 2.35, "a", directions()["paris"], "paris")]
    run, _ = build_run(tmp_path / "solo", photos=solo, shards=1, gps=None)
    assert cli("mine", "--run", str(run.root)).exit_code == 0
    assert read_candidates(run, "00000").num_rows == 0
    ledger = pq.read_table(run.ledger_path("mine", "00000")).to_pylist()
    assert ledger == [{"key": "solo", "id": "solo.jpg", "status": "no_candidates",
                       "error_message": "no image, GPS or negative candidate found"}]
    assert run.done_units("mine") == ["00000"]


def test_units_mined_in_one_process_match_units_mined_each_in_a_fresh_one(run, tmp_path):
    """The location text geocoded once per gallery row / GPS point and kept in the process's context
    gives the bytes each unit gets from a context of its own (and in any unit order)."""
    from geobuild.artifacts.candidates import candidates_path
    from geobuild.stages.mine import stage
    from geobuild.stages.mine.stage import MineConfig, mine_unit

    cfg = MineConfig(k_image=3, k_gps=4, negatives="near=2,far=2")
    units = ["00000", "00001"]
    stage._CONTEXTS.clear()
    for u in units:
        mine_unit(run, u, cfg)
    shared = {u: candidates_path(run, u).read_bytes() for u in units}
    alone = {}
    for u in reversed(units):
        stage._CONTEXTS.clear()
        mine_unit(run, u, cfg)
        alone[u] = candidates_path(run, u).read_bytes()
    stage._CONTEXTS.clear()
    assert shared == alone
    df = pd.concat([read_candidates(run, u).to_pandas() for u in units], ignore_index=True)
    gps_countries = [c for s, cs in zip(df["cand_source"], df["cand_country"]) for src, c in zip(s, cs) if src == "gps"]
    assert gps_countries and all(gps_countries)  # the GPS candidates' text is geocoded (the cities are on land)
