"""The compact ranker's retrieval-keeping options: the residual prior (an untrained model ranks
exactly as retrieval does), retrieval-score features, quota groups and validation-based checkpoint
selection (epoch 0 competes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("datasets")

from typer.testing import CliRunner  # noqa: E402

from _ranker_fixture import make_dataset, make_runs  # noqa: E402
from geobuild.cli import app  # noqa: E402
from geobuild.ranker.compact import retrieval_features  # noqa: E402
from geobuild.ranker.data import GroupSpec, groups_from_rows  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_retrieval_features_by_hand():
    score = torch.tensor([[0.9, 0.6, float("nan"), 2.0, 4.0]])
    source = torch.tensor([[0, 0, 0, 1, 1]])
    mask = torch.tensor([[True, True, True, True, False]])  # the last one is padding
    f = retrieval_features(score, source, mask)[0]
    # image: best 0.9 -> margins 0, -0.3, ratio 1, 0.667; the nan score is unknown; gps: best 2.0 (4.0 is padding)
    assert f[:, 0].tolist() == pytest.approx([0.9, 0.6, 0.0, 2.0, 0.0])
    assert f[:, 1].tolist() == pytest.approx([0.0, -0.3, 0.0, 0.0, 0.0])
    assert f[:, 2].tolist() == pytest.approx([1.0, 0.6 / 0.9, 0.0, 1.0, 0.0])
    assert f[:, 3].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_quota_groups_take_the_first_of_each_source():
    row = {"key": "q", "lat": 1.0, "lon": 1.0, "cand_source": ["gps", "image", "image", "gps", "image"],
           "cand_lat": [1.0, 2.0, 3.0, 4.0, 5.0], "cand_lon": [1.0] * 5, "cand_rank": [0, 0, 1, 1, 2],
           "cand_score": [0.5, 0.9, 0.8, 0.4, 0.7]}
    g = groups_from_rows([row], GroupSpec(quota=(("image", 2), ("gps", 1))), "q")
    assert g.cand_lat[0].tolist() == [2.0, 3.0, 1.0] and g.cand_score[0].tolist() == pytest.approx([0.9, 0.8, 0.5])
    short = groups_from_rows([row], GroupSpec(quota=(("image", 4), ("gps", 1)), pad=True), "q")
    # three image candidates + one GPS of a 4 + 1 quota: padded to 5, the pad masked out
    assert short.group_size == 5 and short.mask[0].tolist() == [True, True, True, True, False]


def test_residual_model_starts_at_retrieval_and_best_epoch_is_kept(tmp_path):
    pub = make_dataset(tmp_path / "pub", n_train=64, n_val=24)
    out = tmp_path / "o"
    res = CliRunner().invoke(app, [
        "train-ranker", "--data", str(pub), "--out", str(out), "--epochs", "2", "--encoder", "thumbnail:4",
        "--sources", "image:4,gps:2", "--batch-size", "16", "--d-model", "16", "--layers", "1",
        "--residual", "--retrieval-features", "--best-by", "val_acc_mean"])
    assert res.exit_code == 0, res.output
    best = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if best["epoch"] == 0:
        record0 = best["best_record"]
    else:
        assert best["best_value"] == pytest.approx(max(h["val_acc_mean"] for h in history))
        record0 = None
    # the untrained residual model picks image candidate 0 in every group: its validation accuracy is
    # top-1 retrieval's, computed here from the published rows (first image candidate's distance)
    import pyarrow.parquet as pq

    rows = pq.read_table(pub / "dataset" / "candidates" / "validation-00000-of-00001.parquet").to_pylist()
    top1 = np.array([r["query_km"][r["cand_source"].index("image")] for r in rows])
    if record0 is None:
        first = torch.load(out / "checkpoints" / "epoch-0001.pt", map_location="cpu", weights_only=False)
        assert first["epoch"] == 1
        res = CliRunner().invoke(app, [
            "train-ranker", "--data", str(pub), "--out", str(tmp_path / "o0"), "--epochs", "1", "--stop-after", "0",
            "--encoder", "thumbnail:4", "--sources", "image:4,gps:2", "--batch-size", "16", "--d-model", "16",
            "--layers", "1", "--residual", "--retrieval-features", "--best-by", "val_acc_mean"])
        assert res.exit_code == 0, res.output
        record0 = torch.load(tmp_path / "o0" / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)["best_record"]
    for t in (1, 25, 200, 750, 2500):
        assert record0[f"val_acc@{t}km"] == pytest.approx(100 * np.mean(top1 < t))
    # eval of the folder uses best.pt
    gal, run, _ = make_runs(tmp_path / "bench", n=12)
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(out), "--run", str(run), "--gallery", str(gal),
                                   "--protocol", "georanker", "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["info"]["epoch"] == best["epoch"]


def test_retrieval_gate_by_hand():
    from geobuild.ranker.metrics import apply_gate, choose_gate, ranker_errors, retrieval_position

    def row(key, dists, sources):
        n = len(dists)
        ranks = [sum(1 for s in sources[:i] if s == sources[i]) for i in range(n)]
        return {"key": key, "lat": 1.0, "lon": 1.0, "cand_lat": [2.0] * n, "cand_lon": [1.0] * n,
                "cand_source": sources, "cand_rank": ranks, "query_km": dists}

    # group 0: a GPS point first in the list, retrieval's first photo at position 1 (10 km)
    rows = [row("a", [900.0, 10.0, 3000.0], ["gps", "image", "image"]),
            row("b", [5000.0, 20.0, 100.0], ["image", "image", "gps"])]
    g = groups_from_rows(rows, GroupSpec(group_size=3, sources=("image", "gps"), select="order"), "gate")
    assert retrieval_position(g).tolist() == [1, 0]
    scores = np.array([[2.0, 1.5, 0.0], [0.0, 0.5, 3.0]], dtype=np.float32)
    # margins over retrieval's photo: 0.5 (a, ranker picks 900 km) and 3.0 (b, ranker picks 100 km)
    assert ranker_errors(apply_gate(scores, g, 1.0), g).tolist() == [10.0, 100.0]
    assert ranker_errors(apply_gate(scores, g, 0.0), g).tolist() == [900.0, 100.0]
    assert ranker_errors(apply_gate(scores, g, np.inf), g).tolist() == [10.0, 5000.0]
    # mean accuracy over the thresholds: gate inf (10, 5000 km) 40, gate 0 (900, 100 km) 40, a gate
    # between the margins 0.5 and 3.0 (10, 100 km) 70; candidates are 0, the deciles of the positive
    # margins (0.75 .. 2.75) and inf, and among equal ones the largest wins: 0.5 + 0.9 * 2.5
    tau, s = choose_gate(scores, g)
    assert tau == pytest.approx(2.75) and s["acc@25km"] == 50.0 and s["acc@200km"] == 100.0
