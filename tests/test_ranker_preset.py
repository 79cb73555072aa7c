"""``geobuild train-ranker --preset georanker``: GeoRanker's recipe on a bundle written by
``geobuild export georanker`` (GeoRanking.parquet + images.tar + tar_index.pkl), offline, with the
tiny random Qwen2-VL stand-in (no real weights here).

What GeoRanker's ``finetune_geo_ranker.py`` does is re-derived here from the bundle's own files
(pyarrow, tarfile, pickle, geopy), not from the code under test: the prompt of every group entry,
the negative-example text, and the geodesic distances of the loss.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import tarfile
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("datasets")
geopy_distance = pytest.importorskip("geopy.distance")

from typer.testing import CliRunner  # noqa: E402

from _mine_fixtures import base_run_copy  # noqa: E402
from geobuild.artifacts.shards import ShardWriter, json_bytes  # noqa: E402
from geobuild.cli import app  # noqa: E402
from geobuild.ranker.data import groups_from_dataset  # noqa: E402
from geobuild.ranker.models import ModelContext, make_batch  # noqa: E402
from geobuild.ranker.tiny_vlm import build_tiny_vlm  # noqa: E402
from geobuild.ranker.train import PRESETS, TrainConfig, data_source, image_source_for  # noqa: E402
from geobuild.ranker.vlm import build as build_vlm  # noqa: E402
from geobuild.ranker.vlm_prompts import build_messages  # noqa: E402

runner = CliRunner()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _jpeg(seed: int, side: int = 64) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The synthetic mine run (48 photos, 6 cities) with photos, mined with the defaults, exported."""
    root = tmp_path_factory.mktemp("preset")
    run = base_run_copy(root / "run")
    meta = pq.read_table(run.path("index", "ids.parquet")).to_pylist()
    units: dict[str, list[dict]] = {}
    for r in meta:
        units.setdefault(r["shard"], []).append(r)
    run.shards_dir.mkdir(parents=True, exist_ok=True)
    for unit, rows in units.items():
        with ShardWriter(run.shards_dir / f"{unit}.tar") as w:
            for r in rows:
                w.write(r["key"], {"jpg": _jpeg(zlib.crc32(r["key"].encode())), "json": json_bytes({"id": r["id"]})})
    for args in (["mine", "--run", str(run.root)], ["export", "georanker", "--run", str(run.root), "--out", str(root / "bundle")]):
        res = runner.invoke(app, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
    return root / "bundle"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def test_preset_is_georankers_recipe():
    cfg = TrainConfig.from_preset("georanker")
    assert (cfg.model, cfg.group_size, cfg.lr, cfg.epochs, cfg.schedule, cfg.warmup_steps) == ("vlm", 7, 1e-4, 1, "linear", 0)
    assert (cfg.weight_decay, cfg.batch_size, cfg.micro_batch, cfg.distance) == (0.01, 4, 1, "geodesic")
    assert (cfg.loss, cfg.lam, cfg.k, cfg.grad_clip) == ("multi-order", 0.7, 1, 1.0)
    assert cfg.model_options == {"prompt": "georanker", "value_head": "georanker", "lora_r": 16, "lora_alpha": 32,
                                 "lora_dropout": 0.05}
    # the Hugging Face Trainer's linear schedule without warm-up: 1 at step 0, straight down to 0
    from geobuild.ranker.train import _lr_lambda

    f = _lr_lambda(0, 12, "linear")
    assert [f(s) for s in (0, 3, 6, 12)] == [1.0, 0.75, 0.5, 0.0]
    with pytest.raises(Exception, match="unknown preset"):
        TrainConfig.from_preset("nope")
    assert set(PRESETS) == {"georanker"}


def test_prompt_head_and_distances_are_georankers(bundle, tiny_dir, tmp_path):
    table = pq.read_table(bundle / "GeoRanking.parquet").to_pylist()
    cfg = TrainConfig.from_preset("georanker").merged({"data": str(bundle), "out": str(tmp_path / "o"),
                                                       "model_options": {**PRESETS["georanker"]["model_options"],
                                                                         "vlm_path": str(tiny_dir)}})
    groups = groups_from_dataset(data_source(cfg), "train", cfg.group_spec(), config=cfg.data_config)
    assert len(groups) == len(table) and groups.group_size == 7
    model = build_vlm(cfg.__dict__, ModelContext([groups], image_source_for(cfg), tmp_path, "cpu"))
    # value head: Linear(hidden, 1, bias=False), weights N(0, (1 / (hidden + 1))^2)
    head = model.value_head
    hidden = head.in_features
    assert head.bias is None
    assert 0.6 / (hidden + 1) < float(head.weight.std()) < 1.4 / (hidden + 1)
    assert model.processor.tokenizer.padding_side == "left"
    by_id = {r["img_id"]: r for r in table}
    batch = make_batch(groups, np.arange(len(groups)))
    rank_groups = model.groups_from_batch(batch)
    with tarfile.open(bundle / "images.tar") as tar, open(bundle / "tar_index.pkl", "rb") as f:
        tar_index = pickle.load(f)
        for gi, rg in enumerate(rank_groups):
            row = by_id[groups.query_id[gi]]
            negatives = [f"latitude: {lat}, longitude: {lon}, {' '.join(t)}" for (lat, lon), t in zip(row["ref_gps"][-5:], row["ref_texts"][-5:])]
            for j, cand in enumerate(rg.candidates):
                (lat, lon), texts, ref_id = row["ref_gps"][j + 1], row["ref_texts"][j + 1], row["ref_img_id"][j + 1]
                messages, images = build_messages(rg, cand, style="georanker")
                content = messages[0]["content"]
                assert [c["type"] for c in content] == ["image", "text", "image", "text"]
                assert content[1]["text"] == f"How far is this place from latitude: {lat}, longitude: {lon}, {' '.join(texts)}?"
                assert content[3]["text"] == f"Negative examples: {'; '.join(negatives)}"
                # both photos are the ones tar_index opens, query first
                from PIL import Image

                for im, gid in ((images[0], row["img_id"]), (images[1], ref_id)):
                    expect = Image.open(tar.extractfile(tar_index[gid])).convert("RGB")
                    assert np.array_equal(np.asarray(im), np.asarray(expect))
                # the loss's distance: geopy's WGS-84 geodesic, as GeoRanker computes it
                km = geopy_distance.geodesic(row["gps"], (lat, lon)).km
                assert groups.dists[gi, j] == pytest.approx(km, rel=1e-5, abs=1e-3)


def test_preset_trains_end_to_end_offline(bundle, tiny_dir, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["train-ranker", "--preset", "georanker", "--data", str(bundle), "--out", str(out),
                              "--vlm-path", str(tiny_dir)])
    assert res.exit_code == 0, res.output
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["preset"] == "georanker" and recorded["model"] == "vlm" and recorded["group_size"] == 7
    assert recorded["model_options"]["vlm_path"] == str(tiny_dir) and recorded["model_options"]["prompt"] == "georanker"
    final = json.loads((out / "final.json").read_text())
    rows = pq.read_metadata(bundle / "GeoRanking.parquet").num_rows
    assert final["finished"] and final["data"]["train_groups"] == rows
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1
    steps = math.ceil(rows / 4)  # 4 queries per optimiser step
    assert ckpt["scheduler"]["last_epoch"] == steps
    assert final["metrics"]["lr"] == pytest.approx(0.0)  # linear decay to 0 over the one epoch
    assert math.isfinite(final["metrics"]["train_loss"])
    assert "value_head.weight" in ckpt["model"] and "value_head.bias" not in ckpt["model"]
    assert any("lora_" in k for k in ckpt["model"])
    # options still override the preset
    res = runner.invoke(app, ["train-ranker", "--preset", "georanker", "--data", str(bundle), "--out", str(tmp_path / "o2"),
                              "--vlm-path", str(tiny_dir), "--group-size", "3", "--stop-after", "0"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "o2" / "config.yaml").read_text())["group_size"] == 3


def test_georanker_wording_of_a_gps_candidate():
    """A candidate without a photo is asked about as GeoRanker's evaluate.py asks about its GPS candidates."""
    from PIL import Image

    from geobuild.ranker.vlm_prompts import RankCandidate, RankGroup

    group = RankGroup(Image.new("RGB", (8, 8)), [], negatives=["latitude: 1.5, longitude: 2.25, a b c"])
    messages, images = build_messages(group, RankCandidate(48.8566, 2.3522, "Paris  France"), style="georanker")
    assert [c.get("text") for c in messages[0]["content"]] == [
        None, "How far is this place from latitude: 48.8566, longitude: 2.3522?",
        "Negative examples: latitude: 1.5, longitude: 2.25, a b c"]
    assert len(images) == 1
