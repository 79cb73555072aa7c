"""Fixture builders for the embed tests: tiny shards and a tiny randomly initialised open_clip model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

CITIES = [("Paris", None, "France"), ("Austin", "Texas", "United States"), ("Kyoto", "Kyoto", "Japan"), (None, None, None)]


def jpeg_bytes(rng: np.random.Generator, w: int = 48, h: int = 40) -> bytes:
    from PIL import Image

    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(run_dir: Path, n_shards: int = 2, per_shard: int = 7, corrupt: tuple[tuple[int, int], ...] = ((0, 3),), seed: int = 0) -> list[dict]:
    """Write finished shard units with random JPEGs; ``corrupt`` lists (shard, position) of broken ones."""
    from geobuild.core.runfolder import RunFolder, atomic_path
    from geobuild.artifacts.shards import ShardWriter, json_bytes
    from geobuild.core.shardspec import shard_name

    rng = np.random.default_rng(seed)
    run = RunFolder(run_dir)
    samples = []
    for s in range(n_shards):
        unit = shard_name(s)
        with ShardWriter(run.shard_path(unit)) as w:
            for i in range(per_shard):
                key = f"s{s:02d}_{i:04d}"
                city, state, country = CITIES[(s * per_shard + i) % len(CITIES)]
                meta = {"key": key, "id": f"{key}.jpg", "lat": float(rng.uniform(-60, 60)), "lon": float(rng.uniform(-170, 170)),
                        "author": f"a{i % 3}", "source": "test", "width": 48, "height": 40}
                for name, value in (("city", city), ("state", state), ("country", country)):
                    if value is not None:
                        meta[name] = value
                data = jpeg_bytes(rng)
                if (s, i) in corrupt:
                    data = data[:40] + b"\x00garbage" * 8
                w.write(key, {"jpg": data, "json": json_bytes(meta)})
                samples.append(meta | {"unit": unit, "corrupt": (s, i) in corrupt})
        marker = run.marker_path("shard", unit)
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps({"unit": unit}) + "\n")
    return samples


def tiny_clip_dir(folder: Path, seed: int = 0) -> Path:
    """A local-dir open_clip model (config JSON + random weights) that loads fully offline."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    return folder
