"""The Qwen2-VL value-head ranker, end to end with a tiny random model built offline.

The tiny model folder is written by ``geobuild.ranker.tiny_vlm.build_tiny_vlm`` and loaded back
through the same ``--vlm-path`` code that loads real weights.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from PIL import Image  # noqa: E402

from geobuild.core.errors import GeobuildError
from geobuild.ranker.loss import multi_order_loss
from geobuild.ranker.tiny_vlm import build_tiny_vlm
from geobuild.ranker.vlm import (
    RankCandidate,
    RankGroup,
    VlmRanker,
    VlmSettings,
    build_messages,
    group_mask,
    resolve_device_dtype,
    resolve_model_dir,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache: nothing can be found there


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return build_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def photo(seed: int, h: int = 40, w: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def batch() -> tuple[list[RankGroup], torch.Tensor]:
    """2 groups x 3 candidates, some with their own photo, and their distances in km."""
    groups = [
        RankGroup(
            photo(0),
            [
                RankCandidate(48.8566, 2.3522, "Paris Ile-de-France France", photo(1)),
                RankCandidate(40.7128, -74.006, "New York New York United States"),
                RankCandidate(-33.8688, 151.2093, "Sydney New South Wales Australia", photo(2, 30, 70)),
            ],
        ),
        RankGroup(
            photo(3, 60, 36),
            [
                RankCandidate(35.6762, 139.6503, "Tokyo Japan"),
                RankCandidate(51.5074, -0.1278, "London England United Kingdom", photo(4)),
                RankCandidate(0.0, 0.0, ""),
            ],
            negatives=["latitude: 10.0, longitude: 10.0, Somewhere"],
        ),
    ]
    dists = torch.tensor([[3.0, 5800.0, 17000.0], [9500.0, 12.0, 5600.0]])
    return groups, dists


def make_ranker(tiny_dir, **kw) -> VlmRanker:
    torch.manual_seed(0)
    return VlmRanker.from_pretrained(VlmSettings(vlm_path=str(tiny_dir), **kw))


def test_prompt_has_coordinates_text_and_optional_second_image():
    g, _ = batch()
    messages, images = build_messages(g[0], g[0].candidates[0])
    text = " ".join(c["text"] for c in messages[0]["content"] if c["type"] == "text")
    assert "latitude: 48.8566, longitude: 2.3522, Paris Ile-de-France France" in text
    assert [c["type"] for c in messages[0]["content"]].count("image") == 2 and len(images) == 2
    messages, images = build_messages(g[0], g[0].candidates[1])
    assert [c["type"] for c in messages[0]["content"]].count("image") == 1 and len(images) == 1
    messages, _ = build_messages(g[1], g[1].candidates[0])
    assert "Negative examples: latitude: 10.0" in messages[0]["content"][-1]["text"]


def test_forward_gives_finite_scores_per_group(tiny_dir):
    model = make_ranker(tiny_dir)
    model.eval()
    groups, _ = batch()
    with torch.no_grad():
        scores = model(groups)
    assert scores.shape == (2, 3) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    # the candidate photo is part of the input: the same candidate without it scores differently
    alone = RankGroup(groups[0].query_image, [RankCandidate(48.8566, 2.3522, "Paris Ile-de-France France")])
    with torch.no_grad():
        assert not torch.allclose(model([alone])[0, 0], scores[0, 0])
        # each pair is scored independently of its batch mates and of padding
        chunked = VlmRanker.score_pairs(model, [(groups[1], c) for c in groups[1].candidates])
    torch.testing.assert_close(chunked, scores[1], rtol=1e-4, atol=1e-4)


def test_groups_of_different_sizes_are_padded(tiny_dir):
    model = make_ranker(tiny_dir, max_pairs_per_forward=2)
    model.eval()
    groups, _ = batch()
    short = RankGroup(groups[1].query_image, groups[1].candidates[:2])
    with torch.no_grad():
        scores = model([groups[0], short])
    mask = group_mask([groups[0], short])
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    assert scores[1, 2].item() == 0.0 and torch.isfinite(scores).all()


def test_lora_training_lowers_the_multi_order_loss_and_leaves_base_weights_alone(tiny_dir):
    model = make_ranker(tiny_dir)
    groups, dists = batch()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or n.startswith("value_head.") for n in trainable)
    assert {"value_head.weight", "value_head.bias"} <= trainable
    lora = [n for n in trainable if "lora_" in n]
    assert all("language_model" in n and any(f".{m}." in n for m in ("q_proj", "k_proj", "v_proj")) for n in lora)
    assert len(lora) == 2 * 3 * 2  # A and B for q/k/v in each of the 2 layers; nothing in the vision tower
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return multi_order_loss(model(groups), dists).item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-3)
    torch.manual_seed(1)
    for _ in range(6):
        model.train()
        loss = multi_order_loss(model(groups), dists, lam=0.7, k=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"base weight {n} changed"
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if n in lora_before)


def test_gradient_checkpointing_trains(tiny_dir):
    model = make_ranker(tiny_dir, gradient_checkpointing=True)
    model.train()
    groups, dists = batch()
    loss = multi_order_loss(model(groups), dists)
    loss.backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    # LoRA's B starts at zero, so the first gradient reaches B (and the head), not A
    assert any(g.abs().sum() > 0 for n, g in zip(names, grads) if "lora_B" in n)


def test_checkpoint_reload_gives_identical_scores(tiny_dir, tmp_path):
    model = make_ranker(tiny_dir)
    groups, dists = batch()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-3)
    model.train()
    for _ in range(2):  # move LoRA and the head away from their initial values
        loss = multi_order_loss(model(groups), dists)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(groups)
    ckpt = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == ["adapter", "ranker.json", "value_head.safetensors"]
    meta = json.loads((ckpt / "ranker.json").read_text())
    assert meta["format"] == "geobuild-vlm-ranker" and meta["settings"]["lora"]["r"] == 16
    assert meta["settings"]["lora"]["alpha"] == 32 and meta["settings"]["lora"]["dropout"] == 0.05
    model.save(ckpt)  # saving over an existing checkpoint replaces it

    torch.manual_seed(123)  # a different seed: nothing may come from a fresh initialisation
    again = VlmRanker.load(ckpt)
    assert not again.training and not again.trainable_parameters()
    with torch.no_grad():
        got = again(groups)
    assert torch.equal(got, expected)
    # reloaded for more training, with the base path given explicitly
    resumed = VlmRanker.load(ckpt, vlm_path=str(tiny_dir), trainable=True)
    assert resumed.training and len(resumed.trainable_parameters()) == len(model.trainable_parameters())


def test_hub_name_fails_offline_with_one_clear_line(tiny_dir, tmp_path):
    with pytest.raises(GeobuildError) as err:
        VlmRanker.from_pretrained(VlmSettings(vlm_path="Qwen/Qwen2-VL-2B-Instruct"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "Qwen/Qwen2-VL-2B-Instruct" in msg and "--vlm-path DIR" in msg and "download" in msg
    with pytest.raises(GeobuildError, match="not found"):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(GeobuildError, match="no config.json"):
        resolve_model_dir(tmp_path)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(GeobuildError, match="Qwen2-VL family"):
        VlmRanker.from_pretrained(VlmSettings(vlm_path=str(other)))
    assert resolve_model_dir(tiny_dir) == tiny_dir.resolve()


def test_device_and_dtype_selection():
    dev, dt = resolve_device_dtype("auto", "auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda" and dt in (torch.bfloat16, torch.float16)
    else:
        assert (dev.type, dt) == ("cpu", torch.float32)
        with pytest.raises(GeobuildError, match="CUDA is not available"):
            resolve_device_dtype("cuda", "auto")
    assert resolve_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(GeobuildError, match="unknown dtype"):
        resolve_device_dtype("cpu", "float8")


def test_groups_from_candidate_rows_and_photo_tars(tiny_dir, tmp_path):
    """Candidate rows (the candidates schema) + a WebDataset tar of photos -> scores and a loss."""
    from geobuild.ranker.data import GroupSpec, groups_from_rows
    from geobuild.ranker.vlm_data import PhotoStore, rank_groups
    from geobuild.artifacts.shards import ShardWriter

    def jpeg(seed: int) -> bytes:
        buf = io.BytesIO()
        photo(seed, 48, 64).save(buf, format="JPEG")
        return buf.getvalue()

    tar = tmp_path / "images" / "train" / "00000.tar"
    tar.parent.mkdir(parents=True)
    with ShardWriter(tar) as w:
        for i, key in enumerate(["q1", "c1", "c2", "q2"]):
            w.write(key, {"jpg": jpeg(i), "json": b"{}"})
        w.write("broken", {"jpg": b"not a jpeg"})
    photos = PhotoStore([tar])
    assert len(photos) == 5 and photos.get("c1").size == (64, 48) and photos.get("broken") is None

    def row(key, lat, lon):
        return {
            "key": key, "lat": lat, "lon": lon,
            "cand_key": ["c1", None, "c2"], "cand_source": ["image", "gps", "image"],
            "cand_lat": [48.85, 10.0, -33.9], "cand_lon": [2.35, 20.0, 151.2],
            "cand_texts": [["Paris", "Ile-de-France", "France"], [], ["Sydney", None, "Australia"]],
        }

    rows = [row("q1", 48.0, 2.0), row("q2", -30.0, 150.0), row("q3", 5.0, 5.0)]
    groups = groups_from_rows(rows, GroupSpec(group_size=3, sources=("image", "gps"), select="order"), "t")
    rgroups, kept, skipped = rank_groups(groups, range(len(groups)), photos)
    assert kept.tolist() == [0, 1] and skipped == {"no_query_photo": 1}
    assert [c.image is not None for c in rgroups[0].candidates] == [True, False, True]
    assert rgroups[0].candidates[2].text == "Sydney Australia"

    model = make_ranker(tiny_dir)
    scores = model(rgroups)
    dists = torch.as_tensor(groups.dists[kept])
    loss = multi_order_loss(scores, dists, mask=torch.as_tensor(groups.mask[kept]))
    loss.backward()
    assert scores.shape == (2, 3) and torch.isfinite(loss)


@pytest.mark.slow
def test_train_ranker_cli_with_the_vlm_resumes_and_evaluates(tiny_dir, tmp_path, monkeypatch):
    """``geobuild train-ranker --model vlm --vlm-path DIR`` on a tiny published dataset, then ``eval``."""
    pytest.importorskip("datasets")
    from typer.testing import CliRunner

    from _ranker_fixture import make_dataset
    from geobuild.cli import app

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    data = make_dataset(tmp_path / "pub", n_train=4, n_val=2)
    common = ["--data", str(data), "--model", "vlm", "--vlm-path", str(tiny_dir), "--group-size", "4",
              "--batch-size", "2", "--epochs", "2", "--lr", "5e-3", "--seed", "1"]

    def run(*args):
        res = CliRunner().invoke(app, list(args))
        assert res.exit_code == 0, (res.output, res.exception)
        return res

    def history(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    a, b = tmp_path / "a", tmp_path / "b"
    run("train-ranker", "--out", str(a), *common)
    rows = history(a)
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)
    final = json.loads((a / "final.json").read_text())
    assert final["data"]["train_groups"] == 4 and final["data"]["val_groups"] == 2
    ckpt = torch.load(a / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["model"] and all(("lora_" in k) or k.startswith("value_head.") for k in ckpt["model"])

    # interrupted after one epoch and resumed: the same result as the uninterrupted run
    run("train-ranker", "--out", str(b), "--stop-after", "1", *common)
    assert len(history(b)) == 1
    run("train-ranker", "--out", str(b), "--resume", *common)
    assert history(b) == history(a)

    res = run("eval", "--checkpoint", str(a), "--data", str(data), "--split", "validation", "--out", str(tmp_path / "eval.json"))
    report = json.loads((tmp_path / "eval.json").read_text())
    info = report["info"]
    assert (info["model"], info["epoch"], info["groups"], info["group_size"]) == ("vlm", 2, 2, 4)
    assert info["checkpoint"] == str(a)
    import pyarrow.parquet as pq

    val = pq.read_table(next((data / "dataset" / "candidates").glob("validation-*.parquet"))).to_pylist()
    # the top-1 retrieval row: each query's rank-0 image candidate, distances from the dataset itself
    top1 = [r["query_km"][next(i for i, (s, k) in enumerate(zip(r["cand_source"], r["cand_rank"])) if s == "image" and k == 0)]
            for r in val]
    assert report["rows"]["top-1 retrieval"]["median_km"] == pytest.approx(float(np.median(top1)), rel=1e-4)
    ranker, oracle = report["rows"]["ranker"], report["rows"]["oracle"]
    assert all(row["n"] == 2 for row in report["rows"].values())
    # the ranker picks one of each group's candidates: never better than the oracle, never past the farthest
    farthest = max(max(r["query_km"]) for r in val)
    assert oracle["median_km"] <= ranker["median_km"] <= farthest
    assert all(ranker[k] <= oracle[k] and ranker[k] in (0.0, 50.0, 100.0) for k in ranker if k.startswith("acc@"))


def test_train_ranker_vlm_with_a_hub_name_fails_with_one_line(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    from typer.testing import CliRunner

    from _ranker_fixture import make_dataset
    from geobuild.cli import app

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    data = make_dataset(tmp_path / "pub", n_train=4, n_val=2)
    args = ["train-ranker", "--data", str(data), "--out", str(tmp_path / "o"), "--model", "vlm", "--group-size", "4"]
    res = CliRunner().invoke(app, [*args, "--vlm-path", "Qwen/Qwen2-VL-2B-Instruct"])
    assert res.exit_code != 0 and isinstance(res.exception, GeobuildError)
    assert "\n" not in str(res.exception) and "--vlm-path DIR" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o2")])
    assert isinstance(res.exception, GeobuildError) and "needs the base model" in str(res.exception)
