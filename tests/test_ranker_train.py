"""train-ranker end to end on a synthetic dataset in the published layout (real Parquet, tars, datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("datasets")

from typer.testing import CliRunner  # noqa: E402

from _ranker_fixture import make_dataset  # noqa: E402
from geobuild.cli import app

SMALL = ["--encoder", "thumbnail:4", "--group-size", "6", "--batch-size", "16", "--d-model", "32", "--layers", "1", "--lr", "3e-3"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "pub")


def run_cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def history(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def test_compact_model_learns_and_beats_random(dataset, tmp_path):
    out = tmp_path / "out"
    res = run_cli("train-ranker", "--data", str(dataset), "--out", str(out), "--epochs", "8", *SMALL)
    assert res.exit_code == 0, res.output
    rows = history(out)
    assert len(rows) == 8
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    # 6 candidates per group: a random ranking picks the closest one 1 time in 6
    assert rows[-1]["val_top1_hit"] > 0.6
    # best.pt: the epoch with the best validation accuracy (train-ranker's default best_by for the compact model)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt"] + [f"epoch-{i:04d}.pt" for i in range(1, 9)] + ["last.pt"]
    final = json.loads((out / "final.json").read_text())
    assert final["finished"] and final["data"]["train_groups"] == 96 and final["data"]["val_groups"] == 40
    assert list((out / "embed-cache").rglob("*.npz"))


def test_same_seed_same_metrics_and_resume_equals_uninterrupted(tmp_path):
    dataset = make_dataset(tmp_path / "small", n_train=48, n_val=16, seed=1)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli("train-ranker", "--data", str(dataset), "--out", str(a), "--epochs", "3", "--seed", "3", *SMALL).exit_code == 0
    assert run_cli("train-ranker", "--data", str(dataset), "--out", str(b), "--epochs", "3", "--seed", "3", *SMALL).exit_code == 0
    assert history(a) == history(b)
    # interrupted after 1 epoch, then resumed
    res = run_cli("train-ranker", "--data", str(dataset), "--out", str(c), "--epochs", "3", "--seed", "3", "--stop-after", "1", *SMALL)
    assert res.exit_code == 0, res.output
    assert len(history(c)) == 1 and not (c / "final.json").exists()
    res = run_cli("train-ranker", "--data", str(dataset), "--out", str(c), "--epochs", "3", "--seed", "3", "--resume", *SMALL)
    assert res.exit_code == 0, res.output
    assert history(c) == history(a)
    sa = torch.load(a / "checkpoints" / "last.pt", weights_only=False)
    sc = torch.load(c / "checkpoints" / "last.pt", weights_only=False)
    assert sa["model"].keys() == sc["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sc["model"][k]), k
    # a different seed gives a different run
    d = tmp_path / "d"
    assert run_cli("train-ranker", "--data", str(dataset), "--out", str(d), "--epochs", "1", "--seed", "4", *SMALL).exit_code == 0
    assert history(d)[0] != history(a)[0]


def test_existing_checkpoints_need_resume_and_same_settings(dataset, tmp_path):
    out = tmp_path / "o"
    assert run_cli("train-ranker", "--data", str(dataset), "--out", str(out), "--epochs", "1", *SMALL).exit_code == 0
    res = run_cli("train-ranker", "--data", str(dataset), "--out", str(out), "--epochs", "1", *SMALL)
    assert res.exit_code != 0 and "--resume" in str(res.exception)
    res = run_cli("train-ranker", "--data", str(dataset), "--out", str(out), "--epochs", "1", "--resume", "--loss", "pointwise", *SMALL)
    assert res.exit_code != 0 and "loss" in str(res.exception)


def test_yaml_config_and_every_loss(dataset, tmp_path):
    for loss in ("first-order", "second-order", "pointwise", "pairwise"):
        cfg = tmp_path / f"{loss}.yaml"
        cfg.write_text(
            f"data: {dataset}\nloss: {loss}\nepochs: 1\nencoder: 'thumbnail:4'\ngroup_size: 6\nbatch_size: 32\n"
            "d_model: 32\nlayers: 1\nheads: 2\nk: 2\nval_split: null\n"
        )
        out = tmp_path / loss
        res = run_cli("train-ranker", "--config", str(cfg), "--out", str(out))
        assert res.exit_code == 0, res.output
        rows = history(out)
        assert len(rows) == 1 and "val_loss" not in rows[0]
        saved = (out / "config.yaml").read_text()
        assert f"loss: {loss}" in saved and "k: 2" in saved
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nlearning_rate: 1\n")
    res = run_cli("train-ranker", "--config", str(bad), "--out", str(tmp_path / "bad"))
    assert res.exit_code != 0 and "learning_rate" in str(res.exception)


def test_missing_columns_and_small_groups(tmp_path):
    from geobuild.core.errors import GeobuildError
    from geobuild.ranker.train import TrainConfig, train

    broken = make_dataset(tmp_path / "broken", n_train=8, n_val=4, drop_columns=("cand_lat",))
    cfg = TrainConfig(data=str(broken), out=str(tmp_path / "o1"), encoder="thumbnail:4", group_size=6, epochs=1)
    with pytest.raises(GeobuildError, match="cand_lat"):
        train(cfg)
    ok = make_dataset(tmp_path / "ok", n_train=8, n_val=4)
    # 4 image + 2 gps candidates per query: a group of 7 cannot be filled
    cfg = TrainConfig(data=str(ok), out=str(tmp_path / "o2"), encoder="thumbnail:4", group_size=7, epochs=1)
    with pytest.raises(GeobuildError, match="too_few_candidates"):
        train(cfg)
    # image candidates only, groups of 4: every row is usable
    cfg = TrainConfig(data=str(ok), out=str(tmp_path / "o3"), encoder="thumbnail:4", group_size=4, sources=["image"],
                      epochs=1, d_model=16, layers=1, heads=2)
    final = train(cfg)
    assert final["data"]["train_groups"] == 8 and final["data"]["train_skipped"] == {}


def test_unknown_model_is_a_clear_error(dataset, tmp_path):
    res = run_cli("train-ranker", "--data", str(dataset), "--out", str(tmp_path / "x"), "--model", "nope", *SMALL)
    assert res.exit_code != 0 and "unknown ranker model" in str(res.exception)


def _candidate_rows(dataset: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(next((dataset / "dataset" / "candidates").glob(f"{split}-*.parquet"))).to_pylist()


def _georanking_parquet(dataset: Path, split: str, out: Path, photo_id=lambda i: i) -> Path:
    """GeoRanker's own layout of one split: the query's own hit at entry 0, then the candidates;
    ``photo_id`` maps a candidate photo id to the id written (GPS ids are kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _candidate_rows(dataset, split)
    table = pa.table({
        "img_id": [r["id"] for r in rows],
        "gps": [[r["lat"], r["lon"]] for r in rows],
        "ref_gps": [[[r["lat"], r["lon"]]] + [[a, b] for a, b in zip(r["cand_lat"], r["cand_lon"])] for r in rows],
        "ref_img_id": [[r["id"]] + [i if i.startswith("gps:") else photo_id(i) for i in r["cand_id"]] for r in rows],
        "ref_texts": [[list(r["texts"])] + [list(t) for t in r["cand_texts"]] for r in rows],
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


def test_georanking_rows_are_read_as_georankers_trainer_reads_them(dataset, tmp_path):
    from geobuild.ranker.data import GroupSpec, groups_from_dataset

    # photo ids in GeoRanker's file-name form ("<key>.jpg"), which differ from the photo keys
    path = _georanking_parquet(dataset, "train", tmp_path / "GeoRanking.parquet", photo_id=lambda i: f"{i}.jpg")
    groups = groups_from_dataset(path, "train", GroupSpec(group_size=6))
    assert len(groups) == 96 and not groups.skipped
    # entry 0 (the query itself, 0 km away) is skipped; entries 1..6 in order form the group
    assert (groups.dists > 1.0).all()
    assert all(q not in set(c) for q, c in zip(groups.query_id, groups.cand_id))
    rows = {r["key"]: r for r in _candidate_rows(dataset, "train")}
    assert [str(k) for k in groups.query_key] == list(rows)
    for qk, ids, keys in zip(groups.query_key, groups.cand_id, groups.cand_key):
        r = rows[str(qk)]
        assert list(ids) == [c if c.startswith("gps:") else f"{c}.jpg" for c in r["cand_id"][:6]]
        # image ids map to the photo keys of the tars; gps:... ids have no photo
        assert list(keys) == [k or None for k in r["cand_key"][:6]]
    assert (groups.cand_key[groups.cand_source == 1] == None).all()  # noqa: E711


def test_train_on_georanking_parquet_and_on_the_georanker_config(dataset, tmp_path):
    path = _georanking_parquet(dataset, "train", tmp_path / "GeoRanking.parquet")
    out = tmp_path / "from-parquet"
    res = run_cli("train-ranker", "--data", str(path), "--images", str(dataset / "images"), "--out", str(out),
                  "--epochs", "6", *SMALL)
    assert res.exit_code == 0, res.output
    rows = history(out)
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert json.loads((out / "final.json").read_text())["data"]["train_groups"] == 96

    # the same rows as a published dataset's georanker config
    import shutil

    pub = tmp_path / "pub"
    shutil.copytree(dataset, pub)
    for split in ("train", "validation"):
        _georanking_parquet(dataset, split, pub / "dataset" / "georanker" / f"{split}-00000-of-00001.parquet")
    card = (pub / "dataset" / "README.md").read_text().replace("---\n# synthetic", (
        "- config_name: georanker\n  data_files:\n  - split: train\n    path: georanker/train-*.parquet\n"
        "  - split: validation\n    path: georanker/validation-*.parquet\n---\n# synthetic"))
    (pub / "dataset" / "README.md").write_text(card)
    out2 = tmp_path / "from-config"
    res = run_cli("train-ranker", "--data", str(pub), "--data-config", "georanker", "--out", str(out2), "--epochs", "1", *SMALL)
    assert res.exit_code == 0, res.output
    final = json.loads((out2 / "final.json").read_text())
    assert final["data"]["train_groups"] == 96 and final["data"]["val_groups"] == 40


def test_negative_example_texts_are_the_retrieved_entries_outside_the_group(dataset, tmp_path):
    from geobuild.ranker.data import GroupSpec, groups_from_dataset
    from geobuild.ranker.models import make_batch

    path = _georanking_parquet(dataset, "train", tmp_path / "GeoRanking.parquet")
    groups = groups_from_dataset(path, "train", GroupSpec(group_size=4))
    # 1 + 6 entries: entry 0 skipped, 1..4 ranked, 5..6 shown as GeoRanker's negative examples
    texts = groups.negative_texts[0]
    r = {row["key"]: row for row in _candidate_rows(dataset, "train")}[str(groups.query_key[0])]
    # entries 5..6 are candidates 4..5 of the row (formats.md: "latitude: {lat}, longitude: {lon}, {texts}")
    assert list(texts) == [f"latitude: {r['cand_lat'][i]}, longitude: {r['cand_lon'][i]}, {' '.join(r['cand_texts'][i])}"
                           for i in (4, 5)]
    batch = make_batch(groups, np.array([0, 1]))
    assert batch.negative_texts[0] == list(texts)


def test_pretrained_location_encoder_features(dataset, tmp_path):
    pytest.importorskip("geoclip")
    out = tmp_path / "geoclip-loc"
    res = run_cli("train-ranker", "--data", str(dataset), "--out", str(out), "--epochs", "3", "--location", "geoclip", *SMALL)
    assert res.exit_code == 0, res.output
    rows = history(out)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    cfg = json.loads((out / "final.json").read_text())
    assert cfg["finished"]
    # the model took GeoCLIP's location-encoder features (512 wide), not random Fourier features
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert "rff" not in state and state["loc_proj.weight"].shape == (32, 512)
