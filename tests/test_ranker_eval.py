"""geobuild eval: the accuracy table checked by hand, and end to end through the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("datasets")

from typer.testing import CliRunner  # noqa: E402

from _ranker_fixture import make_dataset, make_runs  # noqa: E402
from geobuild.cli import app
from geobuild.ranker.data import GroupSpec, groups_from_rows
from geobuild.ranker.evaluate import report


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _row(key, dists):
    n = len(dists)
    return {"key": key, "lat": 10.0, "lon": 10.0, "cand_lat": [0.0] * n, "cand_lon": [1.0] * n,
            "cand_source": ["image"] * n, "cand_rank": list(range(n)), "query_km": dists}


def test_accuracy_table_by_hand():
    rows = [
        _row("q1", [30.0, 0.5, 800.0]),
        _row("q2", [2600.0, 100.0, 20.0]),
        _row("q3", [1.0, 24.9, 3000.0]),
        _row("q4", [700.0, 750.0, 10.0]),
    ]
    groups = groups_from_rows(rows, GroupSpec(group_size=3, sources=("image",), select="order"), "hand")
    scores = np.array([[0, 1, 0], [5, 0, 1], [0, 2, 1], [0, 0, -1]], dtype=np.float32)  # q4: a tie -> first
    res = report(groups, scores, strict=True)
    r, o, k = res["rows"]["top-1 retrieval"], res["rows"]["oracle"], res["rows"]["ranker"]
    # retrieval (first image candidate): 30, 2600, 1, 700
    #   < 1: none; < 25: {1}; < 200: {30, 1}; < 750: {30, 1, 700}; < 2500: same; median (30 + 700) / 2
    assert [r[f"acc@{t}km"] for t in (1, 25, 200, 750, 2500)] == [0.0, 25.0, 50.0, 75.0, 75.0]
    assert r["median_km"] == pytest.approx(365.0)
    # oracle (closest in group): 0.5, 20, 1, 10 -> < 1: {0.5}; everything < 25; median (1 + 10) / 2
    assert [o[f"acc@{t}km"] for t in (1, 25, 200, 750, 2500)] == [25.0, 100.0, 100.0, 100.0, 100.0]
    assert o["median_km"] == pytest.approx(5.5)
    # ranker picks: 0.5, 2600, 24.9, 700 -> < 1: 1; < 25: 2; < 200: 2; < 750: 3; < 2500: 3
    assert [k[f"acc@{t}km"] for t in (1, 25, 200, 750, 2500)] == [25.0, 50.0, 50.0, 75.0, 75.0]
    assert k["median_km"] == pytest.approx((24.9 + 700.0) / 2, rel=1e-6)
    assert k["n"] == r["n"] == o["n"] == 4
    # share of the retrieval -> oracle gap closed at 25 km: (50 - 25) / (100 - 25)
    assert res["gap_closed"]["acc@25km"] == pytest.approx(1 / 3)
    assert res["info"]["top1_hit"] == pytest.approx(0.25)
    # '<=' counts the retrieval error of exactly 1 km at the 1 km threshold, and the oracle's two
    le = report(groups, scores, strict=False)["rows"]
    assert le["top-1 retrieval"]["acc@1km"] == 25.0 and le["oracle"]["acc@1km"] == 50.0
    # each group's errors, on request; q2 not scored by the ranker counts as wrong (inf) for it only
    assert "per_query" not in res
    each = report(groups, scores, evaluated=np.array([True, False, True, True]), per_query=True)["per_query"]
    assert each["query_id"] == ["q1", "q2", "q3", "q4"]
    assert each["top-1 retrieval"].tolist() == [30.0, 2600.0, 1.0, 700.0]
    assert each["oracle"].tolist() == pytest.approx([0.5, 20.0, 1.0, 10.0])
    assert each["ranker"].tolist() == pytest.approx([0.5, np.inf, 24.9, 700.0])


def test_eval_cli_on_run_folders_and_published_split(tmp_path):
    pub = make_dataset(tmp_path / "pub", n_train=96, n_val=30)
    ckpt_dir = tmp_path / "ckpt"
    res = CliRunner().invoke(app, [
        "train-ranker", "--data", str(pub), "--out", str(ckpt_dir), "--epochs", "6", "--encoder", "thumbnail:4",
        "--group-size", "6", "--batch-size", "16", "--d-model", "32", "--layers", "1", "--lr", "3e-3"])
    assert res.exit_code == 0, res.output
    gal, run, rows = make_runs(tmp_path / "bench", n=30)
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt_dir), "--run", str(run), "--gallery", str(gal), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "top-1 retrieval" in res.output and "oracle" in res.output and "ranker" in res.output
    result = json.loads((out / "eval.json").read_text())
    assert result["info"]["groups"] == 30 and result["info"]["strict"] is True
    # retrieval and oracle, recomputed from the rows: first image candidate, and the closest of the
    # group (4 image + 2 gps candidates, all of them in the group)
    retr = np.array([r["query_km"][0] for r in rows])
    orac = np.array([min(r["query_km"]) for r in rows])
    for t in (1, 25, 200, 750, 2500):
        assert result["rows"]["top-1 retrieval"][f"acc@{t}km"] == pytest.approx(100 * np.mean(retr < t))
        assert result["rows"]["oracle"][f"acc@{t}km"] == pytest.approx(100 * np.mean(orac < t))
    assert result["rows"]["oracle"]["median_km"] == pytest.approx(float(np.median(orac)))
    # the trained ranker finds the matching-colour candidate far more often than retrieval's first hit
    assert result["rows"]["ranker"]["acc@200km"] > result["rows"]["top-1 retrieval"]["acc@200km"]
    with open(out / "eval.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["method"] for t in table] == ["top-1 retrieval", "oracle", "ranker"]
    assert float(table[2]["acc@200km"]) == pytest.approx(result["rows"]["ranker"]["acc@200km"])
    # --le and a single JSON file
    res = CliRunner().invoke(app, ["eval", "--ckpt", str(ckpt_dir / "checkpoints" / "last.pt"), "--run", str(run),
                                   "--gallery", str(gal), "--le", "--out", str(tmp_path / "le.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "le.json").read_text())["info"]["strict"] is False
    # the published validation split goes through the same path
    res = CliRunner().invoke(app, ["eval", "--ckpt", str(ckpt_dir), "--data", str(pub), "--split", "validation",
                                   "--out", str(tmp_path / "val.json")])
    assert res.exit_code == 0, res.output
    val = json.loads((tmp_path / "val.json").read_text())
    last = json.loads((ckpt_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert val["rows"]["ranker"]["acc@200km"] == pytest.approx(last["val_acc@200km"])
    assert val["info"]["top1_hit"] == pytest.approx(last["val_top1_hit"])


def test_eval_errors(tmp_path):
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "none.pt"), "--run", str(tmp_path)])
    assert res.exit_code != 0 and "checkpoint not found" in str(res.exception)


def test_consensus_features_count_agreeing_candidates():
    import torch

    from geobuild.ranker.compact import CONSENSUS_KM, consensus_features

    # Paris, 10 km from Paris, London (~344 km), Tokyo; the 4th slot of the 2nd group is padding
    lat = torch.tensor([[48.85, 48.94, 51.51, 35.68], [48.85, 48.94, 51.51, 35.68]])
    lon = torch.tensor([[2.35, 2.35, -0.13, 139.69], [2.35, 2.35, -0.13, 139.69]])
    cos = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.9, 0.1, 0.5, 0.2]])
    has = torch.tensor([[True, True, False, True], [True, True, False, True]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    f = consensus_features(lat, lon, cos, has, mask)
    assert f.shape == (2, 4, 2 * len(CONSENSUS_KM))
    share = f[..., 0::2]  # plain shares at 25, 200, 750, 2500 km
    assert torch.allclose(share[0, 0], torch.tensor([1 / 3, 1 / 3, 2 / 3, 2 / 3]))  # Paris: its twin; + London
    assert torch.allclose(share[0, 3], torch.tensor([0.0, 0.0, 0.0, 0.0]))  # Tokyo agrees with nobody
    assert torch.allclose(share[1, 0], torch.tensor([1 / 2, 1 / 2, 1.0, 1.0]))  # padding is not counted
    weighted = f[..., 1::2]
    # for the twin (index 1) the other photos are Paris (cos 0.9) and Tokyo (0.2): Paris dominates
    w_paris = torch.softmax(torch.tensor([0.9, 0.2]) / 0.05, 0)[0]
    assert torch.allclose(weighted[0, 1, 0], w_paris, atol=1e-6)
    # London has no photo: it carries no weight, but its own row still sees the others' weights
    assert torch.allclose(weighted[0, 2, 2], torch.softmax(torch.tensor([0.9, 0.1, 0.2]) / 0.05, 0)[:2].sum(), atol=1e-6)
