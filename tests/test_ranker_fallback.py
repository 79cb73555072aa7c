"""The retrieval fallback of the compact ranker (keep retrieval's first photo when it is a close
visual match; snap-back to retrieval inside the ranker's region), by hand, and fitted on the
validation split only, stored in the checkpoint and applied by ``geobuild eval``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from geobuild.ranker.data import GroupSpec, groups_from_rows
from geobuild.ranker.fallback import Fallback, apply_keep, apply_snap, choose_fallback, list_order
from geobuild.ranker.metrics import pick, ranker_errors

KM_PER_DEG = 6371.0088 * math.pi / 180  # haversine km per degree of longitude on the equator


def row(key, lon, cands, query_km=None):
    """A candidate row on the equator: cands = [(source, lon, score)] in mined list order."""
    ranks = [sum(1 for c in cands[:i] if c[0] == cands[i][0]) for i in range(len(cands))]
    r = {"key": key, "lat": 0.0, "lon": lon, "cand_source": [c[0] for c in cands], "cand_rank": ranks,
         "cand_lat": [0.0] * len(cands), "cand_lon": [c[1] for c in cands], "cand_score": [c[2] for c in cands]}
    if query_km is not None:
        r["query_km"] = query_km
    return r


# retrieval's photos at lon 1 (its first), 11 and 31.1; GPS candidates at lon 31 and 61 (lat 0 everywhere;
# (0, 0) is not a valid location)
CANDS = [("image", 1.0, 0.9), ("image", 11.0, 0.8), ("image", 31.1, 0.7), ("gps", 31.0, 0.5), ("gps", 61.0, 0.4)]


def interleaved(query_lon: float):
    """One group of the five candidates, interleaved (image, gps, image, gps, image): the columns are
    not in list order. Returns (groups, column of each candidate's longitude)."""
    g = groups_from_rows([row("q", query_lon, CANDS)], GroupSpec(group_size=5, sources=("image", "gps")), "snap")
    col = {float(lon): i for i, lon in enumerate(g.cand_lon[0])}
    assert g.cand_source[0].tolist() != sorted(g.cand_source[0].tolist())  # columns differ from list order
    return g, col


def test_list_order_puts_retrieval_first_then_gps():
    g, col = interleaved(1.0)
    order = list_order(g)[0]
    assert [order[col[lon]] for lon in (1.0, 11.0, 31.1, 31.0, 61.0)] == [0, 1, 2, 3, 4]


def test_snap_back_by_hand():
    g, col = interleaved(1.0)
    scores = np.zeros((1, 5), dtype=np.float32)
    scores[0, col[31.0]] = 5.0  # the ranker picks the GPS candidate at lon 31 (3336 km from lon 1)

    def choice(radius):
        return float(g.cand_lon[0, pick(apply_snap(scores, g, radius), g.mask)[0]])

    assert choice(0.0) == 31.0  # no snap: the ranker's own choice
    assert choice(25.0) == 31.1  # retrieval's photo 11 km from it comes earlier in the list: a far candidate
    assert choice(2500.0) == 11.0  # retrieval's second photo (2224 km away) is the earliest within 2500 km
    assert choice(3400.0) == 1.0  # within 3336 km: retrieval's first photo, preferred over every later one
    assert choice(np.inf) == 1.0
    # when the ranker's choice is retrieval's first photo, every radius keeps it
    scores2 = np.zeros((1, 5), dtype=np.float32)
    scores2[0, col[1.0]] = 5.0
    assert {float(g.cand_lon[0, pick(apply_snap(scores2, g, r), g.mask)[0]]) for r in (0.0, 25.0, 2500.0)} == {1.0}
    # errors from the query at lon 1
    assert ranker_errors(apply_snap(scores, g, 25.0), g)[0] == pytest.approx(30.1 * KM_PER_DEG, rel=1e-4)


def test_keep_retrieval_by_hand():
    rows = [row("a", 0.5, [("image", 1.0, 0.8), ("gps", 5.0, 0.1)]),
            row("b", 0.5, [("image", 1.0, 0.5), ("gps", 5.0, 0.1)]),
            row("c", 0.5, [("image", 1.0, float("nan")), ("gps", 5.0, 0.1)])]
    g = groups_from_rows(rows, GroupSpec(group_size=2, sources=("image", "gps"), select="order"), "keep")
    scores = np.array([[0.0, 1.0]] * 3, dtype=np.float32)  # the ranker prefers the GPS point everywhere

    def kept(floor):
        return (pick(apply_keep(scores, g, floor), g.mask) == 0).tolist()

    assert kept(0.6) == [True, False, False]  # 0.8 >= 0.6; 0.5 < 0.6; an unknown score is not kept
    assert kept(0.5) == [True, True, False]
    assert kept(np.inf) == [False, False, False]
    assert kept(-np.inf) == [True, True, True]  # -inf: retrieval everywhere


def test_choose_fallback_no_loss_is_conservative():
    # retrieval's first photo (score) / the ranker's choice, km from the query:
    #   A 0.5 (0.90) / 100; B 5000 (0.80) / 10; C 3000 (0.30) / 500; D 5000 (0.95) / 10
    specs = [("A", 0.5, 0.90, 100.0), ("B", 5000.0, 0.80, 10.0), ("C", 3000.0, 0.30, 500.0), ("D", 5000.0, 0.95, 10.0)]
    rows = [row(k, 0.5, [("image", 1.0, s), ("gps", 2.0, 0.1)], query_km=[top, ranker]) for k, top, s, ranker in specs]
    g = groups_from_rows(rows, GroupSpec(group_size=2, sources=("image", "gps"), select="order"), "val")
    scores = np.array([[0.0, 1.0]] * 4, dtype=np.float32)
    # top-1 retrieval: 25 % at every threshold. Never keeping (the ranker): 0 / 50 / 75 / 100 / 100,
    # mean 65 but below top-1 at 1 km. Keeping A and D (a floor in (0.80, 0.90]): 25 / 50 / 50 / 75 / 75,
    # mean 55, never below; keeping D only loses A at 1 km; keeping A, B, D: mean 35; all: 25.
    fb = choose_fallback(scores, g, radii=[None])
    assert fb.snap_km is None
    # the lowest floor of the tie (0.80, 0.90]: the 0.35 quantile of [0.3, 0.8, 0.9, 0.95], 0.8 + 0.05 * 0.1
    assert fb.keep_score == pytest.approx(0.805)
    assert [fb.record[f"acc@{t}km"] for t in (1, 25, 200, 750, 2500)] == [25.0, 50.0, 50.0, 75.0, 75.0]
    assert choose_fallback(scores, g, radii=[None], objective="mean").keep_score is None  # 65: the ranker alone
    with pytest.raises(ValueError):
        choose_fallback(scores, g, objective="best")


def test_choose_snap_radius_by_hand():
    g, col = interleaved(31.1)  # the query is at retrieval's third photo; its first is 3347 km off
    scores = np.zeros((1, 5), dtype=np.float32)
    scores[0, col[31.0]] = 5.0  # the ranker picks the GPS point 11 km from the query
    # radius 0: 11 km (wrong at 1 km, mean 80); 25, 200, 750: retrieval's photo at the query (mean 100);
    # 2500: retrieval's second photo, 2235 km off; inf: its first. Ties keep the largest radius.
    fb = choose_fallback(scores, g, floors=[np.inf])
    assert fb.keep_score is None and fb.snap_km == 750.0 and fb.record["acc@1km"] == 100.0
    assert Fallback.from_dict(fb.to_dict()) == fb


torch = pytest.importorskip("torch")
pytest.importorskip("datasets")


@pytest.fixture
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _train(pub, out, *extra):
    from typer.testing import CliRunner

    from geobuild.cli import app

    res = CliRunner().invoke(app, [
        "train-ranker", "--data", str(pub), "--out", str(out), "--epochs", "2", "--encoder", "thumbnail:4",
        "--sources", "image:4,gps:2", "--batch-size", "16", "--d-model", "16", "--layers", "1", *extra])
    assert res.exit_code == 0, res.output
    from geobuild.ranker.train import load_checkpoint

    return load_checkpoint(out)  # the checkpoint eval uses


def test_fallback_is_fitted_on_validation_and_applied_by_eval(tmp_path, _offline):
    from dataclasses import asdict

    from typer.testing import CliRunner

    from _ranker_fixture import make_dataset, make_runs
    from geobuild.cli import app
    from geobuild.ranker.data import groups_from_dataset
    from geobuild.ranker.evaluate import config_from_checkpoint, load_groups, report
    from geobuild.ranker.models import ModelContext, build_model
    from geobuild.ranker.protocol import get_protocol
    from geobuild.ranker.train import image_source_for, score_groups

    pub = make_dataset(tmp_path / "pub", n_train=48, n_val=24)
    out = tmp_path / "o"
    ckpt = _train(pub, out, "--snap-km", "auto")  # keep-retrieval: auto by default
    assert ckpt["config"]["keep_retrieval"] == "auto" and ckpt["config"]["snap_km"] == "auto"
    stored = Fallback.from_dict(ckpt["fallback"])
    assert stored.objective == "no-loss" and stored.snap_km is not None
    # refit by hand on the validation split with the stored model: the same rule, counted over its 24 groups
    cfg = config_from_checkpoint(ckpt)
    val = groups_from_dataset(str(pub), "validation", cfg.group_spec())
    model = build_model("compact", asdict(cfg), ModelContext([val], image_source_for(cfg), out, "cpu"))
    model.load_state_dict(ckpt["model"])
    refit = choose_fallback(score_groups(model, val, 16, "cpu"), val)
    assert (refit.keep_score, refit.snap_km) == (stored.keep_score, stored.snap_km)
    assert stored.record["n"] == len(val) == 24
    assert json.loads((out / "final.json").read_text())["fallback"] == {"keep_score": stored.keep_score, "snap_km": stored.snap_km}

    # eval applies it: the ranker row equals the model's scores with the stored fallback applied
    gal, run, _ = make_runs(tmp_path / "bench", n=12)
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--run", str(run), "--gallery", str(gal),
                                   "--protocol", "georanker", "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["info"]["fallback"] == {"keep_score": stored.keep_score, "snap_km": stored.snap_km}
    proto = get_protocol("georanker")
    groups, source = load_groups(GroupSpec(quota=proto.quota, pad=True, distance=proto.distance), run=run, gallery=gal)
    model = build_model("compact", asdict(cfg), ModelContext([groups], source, out, "cpu"))
    model.load_state_dict(ckpt["model"])
    want = report(groups, stored.apply(score_groups(model, groups, 64, "cpu"), groups), protocol=proto)
    assert got["rows"]["ranker"] == pytest.approx(want["rows"]["ranker"])


def test_fallback_settings(tmp_path, _offline):
    from _ranker_fixture import make_dataset

    pub = make_dataset(tmp_path / "pub", n_train=32, n_val=16)
    # auto needs the validation split: without one nothing is fitted (never on the training groups)
    assert "fallback" not in _train(pub, tmp_path / "a", "--val-split", "none", "--best-by", "none")
    # given values are stored as they are; off and 0 store nothing
    fixed = _train(pub, tmp_path / "b", "--keep-retrieval", "0.75", "--snap-km", "200")["fallback"]
    assert (fixed["keep_score"], fixed["snap_km"], fixed["objective"]) == (0.75, 200.0, None)
    assert "fallback" not in _train(pub, tmp_path / "c", "--keep-retrieval", "off", "--snap-km", "0")
    # a bad value: one error line from the real CLI, exit 2, nothing trained
    import os
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "geobuild", "train-ranker", "--data", str(pub), "--out", str(tmp_path / "d"),
                          "--snap-km=-5"], capture_output=True, text=True, env={**os.environ, "GEOBUILD_NO_PROGRESS": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")] == [
        "error: snap_km must be auto, off or a radius of 0 km or more, got '-5'"]
    assert not (tmp_path / "d" / "checkpoints").exists()
