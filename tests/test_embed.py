"""The embed stage end to end: tiny open_clip models and EfficientNet-Lite over fixture shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from embed_helpers import TINY_CLIP, tiny_clip_dir, write_shards
from killpoint import run_killed

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str):
    """Run ``geobuild`` in-process; returns the CliRunner result."""
    from geobuild.cli import app

    return CliRunner().invoke(app, list(args))


def cli_subprocess(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEOBUILD_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "geobuild", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300, **kw)


def load_image(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_tiny_open_clip_end_to_end(tmp_path):
    import torch

    from geobuild.artifacts.embeddings import read_embeddings, read_model_info, read_text_embeddings
    from geobuild.encoders import load_encoder
    from geobuild.core.ledger import read_ledgers
    from geobuild.core.runfolder import RunFolder
    from geobuild.artifacts.shards import iter_shard

    run = tmp_path / "run"
    samples = write_shards(run, n_shards=2, per_shard=7, corrupt=((0, 3), (1, 5)))
    spec = f"open_clip:local-dir:{tiny_clip_dir(tmp_path / 'clip')}"
    res = cli("embed", "--run", str(run), "--model", spec, "--num-workers", "2", "--batch-size", "3", "--dtype", "float32")
    assert res.exit_code == 0, res.output

    info = read_model_info(run)
    assert info["model"] == spec and info["dim"] == TINY_CLIP["embed_dim"] and info["dtype"] == "float32" and info["has_text"] is True
    enc = load_encoder(spec, "cpu")
    rf = RunFolder(run)
    seen_keys: list[str] = []
    prompts: list = []
    for unit in ("00000", "00001"):
        emb, meta = read_embeddings(run, unit)
        assert emb.dtype == np.float32 and emb.shape == (len(meta), 16)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        raw = {s["__key__"]: s for s in iter_shard(rf.shard_path(unit))}
        # rows are in shard order and equal a direct encoding of each image
        assert list(meta["key"]) == [k for k in raw if k in set(meta["key"])]
        direct = enc.encode_images(torch.stack([enc.image_transform(load_image(raw[k]["jpg"])) for k in meta["key"]])).numpy()
        np.testing.assert_allclose(emb, direct, atol=1e-5)
        for row in meta.itertuples():
            js = raw[row.key]["json"]
            assert row.id == js["id"] and row.author == js["author"]
            assert row.lat == pytest.approx(js["lat"]) and row.lon == pytest.approx(js["lon"])
            assert (row.city if isinstance(row.city, str) else None) == js.get("city")
            assert (row.country if isinstance(row.country, str) else None) == js.get("country")
            assert pd.isna(row.neighbourhood) and pd.isna(row.continent)
        text, mask = read_text_embeddings(run, unit)
        assert text.shape == emb.shape
        for i, prompt in enumerate(meta["location_text"]):
            if mask[i]:
                np.testing.assert_allclose(text[i], enc.encode_texts([prompt]).numpy()[0], atol=1e-5)
            else:
                assert not np.any(text[i])
        seen_keys += list(meta["key"])
        prompts += list(meta["location_text"])
    # the prompt is built from whichever of city/state/country exist; no text -> masked
    assert "A photo taken in Paris, France." in prompts
    assert "A photo taken in Austin, Texas, United States." in prompts
    assert any(p is None or p != p for p in prompts)
    # outputs + ledger = inputs; the corrupt JPEGs are ledger rows with a reason
    ledger = read_ledgers(rf.path("ledger", "embed")).to_pandas()
    assert sorted(ledger["key"]) == sorted(s["key"] for s in samples if s["corrupt"])
    assert set(ledger["status"]) == {"decode_error"} and ledger["error_message"].str.len().min() > 0
    assert sorted(seen_keys + list(ledger["key"])) == sorted(s["key"] for s in samples)
    stats = json.loads(rf.stats_path("embed", "00000").read_text())
    assert stats["embedded"] == 6 and stats["rejected"] == 1 and stats["samples"] == 7

    # a rerun skips everything and changes nothing
    before = (run / "embeddings" / "00000.npy").read_bytes()
    res = cli("embed", "--run", str(run), "--model", spec, "--num-workers", "0", "--dtype", "float32")
    assert res.exit_code == 0 and "2 skipped" in res.output
    assert (run / "embeddings" / "00000.npy").read_bytes() == before

    # ... and on through the index stage: every gallery vector finds itself first
    from geobuild.artifacts.gallery import load_gallery

    res = cli("index", "--run", str(run), "--gps-gallery", "none", "--device", "cpu")
    assert res.exit_code == 0, res.output
    gallery = load_gallery(run, device="cpu")
    assert gallery.info["ntotal"] == len(seen_keys) and gallery.dim == TINY_CLIP["embed_dim"] and gallery.model == spec
    assert gallery.info["schema_version"] == 1 and gallery.info["embedding_units"] == ["00000", "00001"]
    vecs = np.concatenate([read_embeddings(run, u)[0] for u in ("00000", "00001")]).astype(np.float32)
    scores, rows = gallery.search(vecs, 3)
    assert list(gallery.meta["key"]) == seen_keys
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(seen_keys)))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    assert not (run / "index" / "gps_gallery.parquet").exists()


def test_open_clip_checkpoint_path_and_config_json(tmp_path):
    """``open_clip:<config>:/path/checkpoint.pt`` really loads the saved weights."""
    import open_clip
    import torch

    from geobuild.encoders import load_encoder

    cfg_path = tmp_path / "geobuild-tiny-ckpt.json"
    cfg_path.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(3)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)

    enc = load_encoder(f"open_clip:{cfg_path}:{ckpt}", "cpu")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        want_t = torch.nn.functional.normalize(model.encode_text(open_clip.tokenize(["A photo taken in Oslo, Norway."])), dim=-1)
    torch.testing.assert_close(enc.encode_images(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.encode_texts(["A photo taken in Oslo, Norway."]), want_t, atol=1e-5, rtol=1e-5)
    # once registered, the config is also known by name
    enc2 = load_encoder(f"open_clip:geobuild-tiny-ckpt:{ckpt}", "cpu")
    torch.testing.assert_close(enc2.encode_images(x), want, atol=1e-5, rtol=1e-5)
    # a different random init gives different embeddings (the weights matter)
    torch.manual_seed(4)
    other = open_clip.CLIP(**TINY_CLIP).eval()
    with torch.no_grad():
        assert not torch.allclose(torch.nn.functional.normalize(other.encode_image(x), dim=-1), want, atol=1e-3)


def test_kill_and_resume_equals_clean_run(tmp_path):
    spec = f"open_clip:local-dir:{tiny_clip_dir(tmp_path / 'clip')}"
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for run in (killed, clean):
        write_shards(run, n_shards=4, per_shard=24, corrupt=((1, 7), (2, 0)), seed=5)
    args = ["embed", "--run", str(killed), "--model", spec, "--num-workers", "1", "--batch-size", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEOBUILD_NO_PROGRESS": "1"}
    # SIGKILL once unit 00001's image embeddings are in their temporary file: its text embeddings
    # are already in place, its metadata and marker are not
    run_killed(signal.SIGKILL, "embeddings/00001.npy", 1, args, env=env)
    done = killed / "done" / "embed"
    finished = sorted(p.name for p in done.iterdir())
    assert finished == ["00000"]
    assert (killed / "embeddings" / "00001.text.npy").exists() and not (killed / "embeddings" / "00001.parquet").exists()
    assert len(list((killed / "embeddings").glob("00001.npy.tmp-*"))) == 1

    resumed = cli_subprocess(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 units done, 1 skipped" in resumed.stderr
    res = cli_subprocess("embed", "--run", str(clean), "--model", spec, "--num-workers", "2", "--batch-size", "8")
    assert res.returncode == 0, res.stderr

    for unit in ("00000", "00001", "00002", "00003"):
        for name in (f"{unit}.npy", f"{unit}.text.npy"):
            assert (killed / "embeddings" / name).read_bytes() == (clean / "embeddings" / name).read_bytes(), name
        pd.testing.assert_frame_equal(pd.read_parquet(killed / "embeddings" / f"{unit}.parquet"),
                                      pd.read_parquet(clean / "embeddings" / f"{unit}.parquet"))
        pd.testing.assert_frame_equal(pd.read_parquet(killed / "ledger" / "embed" / f"{unit}.parquet"),
                                      pd.read_parquet(clean / "ledger" / "embed" / f"{unit}.parquet"))
    assert not list((killed / "embeddings").glob("*.tmp-*"))
    assert (killed / "embeddings" / "model.json").read_text() == (clean / "embeddings" / "model.json").read_text()


def test_mixing_models_is_refused(tmp_path):
    import yaml

    run = tmp_path / "run"
    write_shards(run, n_shards=1, per_shard=4, corrupt=())
    spec = f"open_clip:local-dir:{tiny_clip_dir(tmp_path / 'clip')}"
    assert cli("embed", "--run", str(run), "--model", spec, "--num-workers", "0").exit_code == 0
    npy = (run / "embeddings" / "00000.npy").read_bytes()

    res = cli_subprocess("embed", "--run", str(run), "--model", "efficientnet-lite0", "--num-workers", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "refusing to mix in 'efficientnet-lite0'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["embed"]["model"] == spec  # nothing recorded

    # without the config.yaml record, model.json still guards the finished units
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.pop("embed")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = cli("embed", "--run", str(run), "--model", "efficientnet-lite0", "--num-workers", "0")
    assert res.exit_code != 0 and "refusing to mix" in str(res.exception)
    assert (run / "embeddings" / "00000.npy").read_bytes() == npy
    assert json.loads((run / "embeddings" / "model.json").read_text())["model"] == spec

    # --overwrite redoes every unit with the new model
    res = cli("embed", "--run", str(run), "--model", "efficientnet-lite0", "--num-workers", "0", "--overwrite")
    assert res.exit_code == 0, res.output
    info = json.loads((run / "embeddings" / "model.json").read_text())
    assert info["model"] == "efficientnet-lite0" and info["dim"] == 1280 and info["has_text"] is False
    assert np.load(run / "embeddings" / "00000.npy").shape == (4, 1280)


@pytest.mark.parametrize(
    "model, expect",
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("open_clip:ViT-L-14:openai", "open_clip ViT-L-14:openai are missing"),
    ],
)
def test_unknown_or_unavailable_model_is_one_line(tmp_path, model, expect):
    run = tmp_path / "run"
    write_shards(run, n_shards=1, per_shard=2, corrupt=())
    res = cli_subprocess("embed", "--run", str(run), "--model", model, env={"HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], res.stderr
    assert "local-dir" in lines[0]
    assert not (run / "embeddings").exists()


def test_efficientnet_lite_on_fixture_shards(tmp_path):
    import torch

    from geobuild.artifacts.embeddings import read_embeddings
    from geobuild.encoders import load_encoder
    from geobuild.core.runfolder import RunFolder
    from geobuild.artifacts.shards import iter_shard

    run = tmp_path / "run"
    write_shards(run, n_shards=1, per_shard=6, corrupt=((0, 2),))
    res = cli("embed", "--run", str(run), "--model", "efficientnet-lite0", "--num-workers", "1", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    emb, meta = read_embeddings(run, "00000")
    assert emb.shape == (5, 1280) and np.load(run / "embeddings" / "00000.npy").dtype == np.float16
    assert not (run / "embeddings" / "00000.text.npy").exists()
    assert meta["location_text"].isna().all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    enc = load_encoder("efficientnet-lite0", "cpu")
    assert isinstance(enc.model._swish, torch.nn.ReLU6)  # set_swish() was never called
    raw = {s["__key__"]: s for s in iter_shard(RunFolder(run).shard_path("00000"))}
    x = torch.stack([enc.image_transform(load_image(raw[k]["jpg"])) for k in meta["key"]])
    assert x.shape[-2:] == (224, 224)
    direct = enc.encode_images(x).numpy()
    np.testing.assert_allclose(emb, direct, atol=2e-3)  # float16 storage
    np.testing.assert_array_equal(enc.encode_images(x).numpy(), direct)  # deterministic


def test_efficientnet_lite_preprocessing_matches_reference_numbers():
    """EfficientNet-Lite's reference preprocessing, in numbers written out by hand: short side to
    size + 32, a centre crop of size, then (x - 127) / 128 per channel."""
    import torch
    from PIL import Image

    from geobuild.encoders import load_encoder

    enc = load_encoder("efficientnet-lite0", "cpu")
    x = enc.image_transform(Image.new("RGB", (400, 300), (0, 127, 255)))
    assert x.shape == (3, 224, 224)
    for c, want in enumerate((-127 / 128, 0.0, 1.0)):  # -0.9921875, 0, 1
        torch.testing.assert_close(x[c], torch.full((224, 224), want), atol=1e-6, rtol=0)
    # 512 x 256, black left half, white right half: already 256 high, so the 224 crop takes
    # columns 144..367 and the edge (column 256) lands at crop column 112
    half = Image.new("RGB", (512, 256), (0, 0, 0))
    half.paste((255, 255, 255), (256, 0, 512, 256))
    y = enc.image_transform(half)
    torch.testing.assert_close(y[:, :, :110], torch.full((3, 224, 110), -127 / 128), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, :, 114:], torch.full((3, 224, 110), 1.0), atol=1e-6, rtol=0)


def _sample_photos(shared: Path, n: int):
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(shared / "data" / "im2gps3k" / "im2gps3ktest.zip") as z:
        names = sorted(m for m in z.namelist() if m.lower().endswith(".jpg"))[:n]
        return [Image.open(io.BytesIO(z.read(m))).convert("RGB") for m in names]


@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [("efficientnet-lite0", 224), ("efficientnet-lite2", 260)])
def test_efficientnet_lite_pretrained_is_real(shared, variant, size):
    """The bundled ImageNet weights are really loaded: confident, varied predictions on real photos,
    unlike a random init; features are deterministic."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from geobuild.encoders import load_encoder

    enc = load_encoder(variant, "cpu")
    assert enc.image_size == size and enc.dim == 1280
    x = torch.stack([enc.image_transform(im) for im in _sample_photos(shared, 16)])
    assert x.shape[-1] == size
    with torch.no_grad():
        probs = enc.model(x).softmax(-1)
        torch.manual_seed(0)
        random_model = EfficientNet.from_name(variant).eval()
        random_probs = random_model(x).softmax(-1)
    top1 = probs.max(-1)
    assert top1.values.mean() > 0.2, top1.values.mean()
    assert len(set(top1.indices.tolist())) >= 6  # varied scenes get varied classes
    assert random_probs.max(-1).values.mean() < 0.05
    a, b = enc.encode_images(x), enc.encode_images(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    sims = a @ a.T
    off = sims[~torch.eye(len(a), dtype=torch.bool)]
    assert off.mean() < 0.9  # different photos, different features

