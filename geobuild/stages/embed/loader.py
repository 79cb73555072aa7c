"""Parallel JPEG decoding of one shard for the embed stage.

:class:`ShardImages` is an ``IterableDataset`` over one shard tar. Samples are grouped into
fixed blocks of ``block_size`` consecutive samples; with ``W`` DataLoader workers, worker ``w``
decodes blocks ``w, w + W, ...``. The DataLoader takes one block from each worker in turn, so blocks
arrive in shard order, and the batch composition does not depend on the number of workers.

This module imports torch; the embed stage imports it lazily.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ...artifacts.embeddings import META_FIELDS, TEXT_FIELDS
from ...artifacts.shards import iter_shard

#: reasons recorded in the ledger
DECODE_ERROR = "decode_error"
MISSING_IMAGE = "missing_image"
_OBJECT_AT = re.compile(r" (object )?at 0x[0-9a-fA-F]+>")  # memory addresses would make ledgers differ per run


def sample_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The row-aligned metadata fields of a shard sample (None where absent)."""
    js = sample.get("json") or {}
    row: dict[str, Any] = {"key": sample["__key__"]}
    for name in ("id", "author", *TEXT_FIELDS):
        v = js.get(name)
        row[name] = None if v is None or (isinstance(v, float) and v != v) else str(v)
    for name in ("lat", "lon"):
        v = js.get(name)
        try:
            row[name] = None if v is None else float(v)
        except (TypeError, ValueError):
            row[name] = None
    return {k: row.get(k) for k in META_FIELDS if k != "location_text"}


def decode_image(data: bytes, transform: Callable, draft: int | None):
    """JPEG bytes -> transformed tensor; ``draft`` lets libjpeg decode at a reduced scale."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if draft:
            im.draft("RGB", (draft, draft))
        im.load()
        rgb = im.convert("RGB")
    return transform(rgb)


@dataclass
class Block:
    """Decoded samples of one block: indices, stacked pixels, metadata, and rejects."""

    index: list[int]
    pixels: Any  # torch.Tensor [n, C, H, W] or None
    meta: list[dict[str, Any]]
    errors: list[tuple[int, str, str | None, str, str]]  # (index, key, id, status, message)

    def pin_memory(self) -> "Block":
        """Called by the DataLoader's pinning thread when the target is a GPU."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


def _collate(items, errors) -> Block:
    pixels = torch.stack([t for _, t, _ in items]) if items else None
    return Block([i for i, _, _ in items], pixels, [m for _, _, m in items], errors)


class ShardImages(IterableDataset):
    """Iterable over the decoded blocks of one shard."""

    def __init__(self, path: str | Path, transform: Callable, block_size: int, draft: int | None = None):
        self.path = str(path)
        self.transform = transform
        self.block_size = max(1, int(block_size))
        self.draft = draft

    def __iter__(self) -> Iterator[Block]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        items: list = []
        errors: list = []
        current = None
        for idx, sample in enumerate(iter_shard(self.path)):
            block = idx // self.block_size
            if block % nworkers != wid:
                continue
            if current is not None and block != current and (items or errors):
                yield _collate(items, errors)
                items, errors = [], []
            current = block
            meta = sample_meta(sample)
            data = sample.get("jpg") or sample.get("jpeg") or sample.get("png") or sample.get("webp")
            if data is None:
                errors.append((idx, meta["key"], meta["id"], MISSING_IMAGE, "sample has no image member"))
                continue
            try:
                tensor = self.transform_bytes(data)
            except Exception as exc:  # noqa: BLE001 - any decode problem is a per-sample reject
                msg = _OBJECT_AT.sub(">", f"{type(exc).__name__}: {exc}".strip())
                errors.append((idx, meta["key"], meta["id"], DECODE_ERROR, msg[:500]))
                continue
            items.append((idx, tensor, meta))
        if items or errors:
            yield _collate(items, errors)

    def transform_bytes(self, data: bytes):
        return decode_image(data, self.transform, self.draft)
