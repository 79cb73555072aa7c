"""The work of one embed unit (imports torch; loaded lazily by :mod:`geobuild.stages.embed`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ...artifacts.embeddings import (
    META_FIELDS,
    META_SCHEMA,
    meta_path,
    model_info_path,
    npy_path,
    read_model_info,
    save_npy,
    text_npy_path,
    write_model_info,
)
from ...encoders import Encoder, caption, load_encoder
from ...core.errors import GeobuildError
from ...core.ledger import reject
from ...core.log import get_logger
from ...core.runfolder import RunFolder, atomic_path
from ...core.schemas import json_version, table
from ...core.stage import UnitResult
from .config import EmbedConfig, default_num_workers
from .loader import Block, ShardImages

log = get_logger("embed")


def model_info(cfg: EmbedConfig, enc: Encoder) -> dict[str, Any]:
    return {
        "schema_version": json_version("embeddings_model"),
        "model": cfg.model,
        "dim": enc.dim,
        "dtype": cfg.dtype,
        "text": enc.has_text,
        "has_text": enc.has_text,
        "image_size": enc.image_size,
        "text_template": cfg.text_template if enc.has_text else None,
    }


def ensure_model_info(run: RunFolder, info: dict[str, Any]) -> None:
    """Write embeddings/model.json, or check that the existing one describes the same model."""
    if model_info_path(run).exists():
        old = read_model_info(run)
        keys = ("model", "dim", "dtype", "has_text")
        if any(old.get(k) != info[k] for k in keys):
            raise GeobuildError(
                f"{model_info_path(run)} describes model '{old.get('model')}' ({old.get('dtype')}), not "
                f"'{info['model']}' ({info['dtype']}); use --overwrite or another run folder"
            )
        return
    write_model_info(run, info)


def make_loader(cfg: EmbedConfig, enc: Encoder, shard: str) -> DataLoader:
    """A DataLoader yielding decoded blocks of ``batch_size`` samples, in shard order."""
    workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(enc.device)
    dataset = ShardImages(shard, enc.image_transform, cfg.batch_size, draft=enc.image_size + 32)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"prefetch_factor": 2, "persistent_workers": False}
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=enc.device.startswith("cuda"),
        **extra,
    )


def embed_unit(cfg: EmbedConfig, run: RunFolder, unit: str) -> UnitResult:
    """Embed one shard; write npy (+ text npy) and the aligned parquet atomically."""
    t0 = time.time()
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    enc = load_encoder(cfg.model, cfg.device)
    info = model_info(cfg, enc)
    ensure_model_info(run, info)
    shard = run.shard_path(unit)
    if not shard.exists():
        raise GeobuildError(f"shard {shard} is missing although marked done; rerun geobuild shard")

    chunks: list[np.ndarray] = []
    order: list[int] = []
    metas: list[dict[str, Any]] = []
    ledger: list[dict[str, Any]] = []
    n_seen = 0
    block: Block
    for block in make_loader(cfg, enc, str(shard)):
        for idx, key, id_, status, msg in block.errors:
            ledger.append((idx, reject(key, id_, status, msg)))
        n_seen += len(block.index) + len(block.errors)
        if block.pixels is None:
            continue
        emb = enc.encode_images(block.pixels).numpy()
        chunks.append(emb.astype(cfg.dtype, copy=False))
        order.extend(block.index)
        metas.extend(block.meta)

    # rows in shard order, whatever order the workers delivered blocks in
    perm = np.argsort(np.asarray(order, dtype=np.int64), kind="stable")
    emb_all = np.concatenate(chunks) if chunks else np.zeros((0, enc.dim), dtype=cfg.dtype)
    emb_all = np.ascontiguousarray(emb_all[perm])
    metas = [metas[i] for i in perm]
    ledger_rows = [row for _, row in sorted(ledger, key=lambda t: t[0])]

    texts = [caption(m, cfg.text_template) for m in metas] if enc.has_text else [None] * len(metas)
    if enc.has_text:
        save_npy(text_npy_path(run, unit), _encode_texts(enc, texts, cfg).astype(cfg.dtype, copy=False))
    save_npy(npy_path(run, unit), emb_all)
    columns = {name: [m.get(name) for m in metas] for name in META_FIELDS if name != "location_text"}
    columns["location_text"] = texts
    with atomic_path(meta_path(run, unit)) as tmp:
        import pyarrow.parquet as pq

        pq.write_table(table(META_SCHEMA, columns), tmp)

    reasons: dict[str, int] = {}
    for row in ledger_rows:
        reasons[row["status"]] = reasons.get(row["status"], 0) + 1
    seconds = time.time() - t0
    stats = {
        "samples": n_seen,
        "embedded": int(emb_all.shape[0]),
        "rejected": len(ledger_rows),
        "reasons": reasons,
        "with_text": int(sum(t is not None for t in texts)),
        "model": cfg.model,
        "device": enc.device,
        "images_per_second": round(emb_all.shape[0] / seconds, 2) if seconds > 0 else None,
    }
    log.debug("embed %s: %s", unit, stats)
    return UnitResult(stats=stats, ledger=ledger_rows)


def _encode_texts(enc: Encoder, texts: list[str | None], cfg: EmbedConfig) -> np.ndarray:
    """Text-tower embeddings of each row's location text; rows without text stay zero."""
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    unique = sorted({t for t in texts if t is not None})
    if not unique:
        return out
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), cfg.batch_size):
        part = unique[start : start + cfg.batch_size]
        for text, vec in zip(part, enc.encode_texts(part).numpy()):
            vectors[text] = vec
    for i, t in enumerate(texts):
        if t is not None:
            out[i] = vectors[t]
    return out
