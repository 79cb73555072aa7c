"""The images repository: WebDataset tars of the photos a published dataset refers to.

Every query and every image candidate is looked up by key in the run's shards (and a gallery run's,
when the gallery was built elsewhere) and written once, to ``train/`` or ``validation/`` by the
same author rule as the queries (:mod:`.splits`), so the photo of an author is in one split only.
Sample metadata is reduced to a fixed set of fields with a declared type each, so every row loads
with the same features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from ...core.ledger import reject
from ...core.log import get_logger, progress
from ...core.runfolder import RunFolder
from ...artifacts.shards import ShardWriter, iter_shard, json_bytes
from ...core.shardspec import shard_name
from .splits import SPLITS, split_of

log = get_logger("publish.images")

#: the JSON fields kept per photo and their Arrow types (declared in the images card)
IMAGE_JSON_FIELDS: dict[str, pa.DataType] = {
    "key": pa.string(),
    "id": pa.string(),
    "lat": pa.float64(),
    "lon": pa.float64(),
    "author": pa.string(),
    "source": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
}


def image_json(meta: dict[str, Any]) -> dict[str, Any]:
    """The published metadata of one photo (fixed fields, fixed types)."""
    out: dict[str, Any] = {}
    for name, typ in IMAGE_JSON_FIELDS.items():
        v = meta.get(name)
        if v is None:
            out[name] = None
        elif pa.types.is_floating(typ):
            out[name] = float(v)
        elif pa.types.is_integer(typ):
            out[name] = int(v)
        else:
            out[name] = str(v)
    return out


class SplitTarWriter:
    """Rotating tar writers ``<root>/<split>/00000.tar`` with at most ``per_tar`` samples each."""

    def __init__(self, root: Path, split: str, per_tar: int) -> None:
        self.dir = Path(root) / split
        self.per_tar = per_tar
        self.index = 0
        self.count = 0
        self._writer: ShardWriter | None = None

    def write(self, key: str, files: dict[str, bytes]) -> None:
        if self._writer is None or self._writer.count >= self.per_tar:
            self._close_current()
            self.dir.mkdir(parents=True, exist_ok=True)
            self._writer = ShardWriter(self.dir / f"{shard_name(self.index)}.tar").__enter__()
            self.index += 1
        self._writer.write(key, files)
        self.count += 1

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.__exit__(None, None, None)
            self._writer = None

    def close(self) -> None:
        self._close_current()


class KeySet:
    """Sample keys as one sorted array of UTF-8 byte strings: exact membership by binary search at
    a few bytes per key (a Python set of millions of keys would cost ~100 bytes each)."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._pending = 0
        self.keys = np.zeros(0, dtype="S1")

    def add(self, keys: Iterable[str]) -> None:
        """Add keys (empty ones are ignored); call :meth:`freeze` before lookups. Added keys are merged
        into the sorted array whenever they outnumber it, so memory follows the distinct keys."""
        part = np.array([k.encode("utf-8") for k in keys if k], dtype=bytes)
        if part.size:
            self._parts.append(part)
            self._pending += part.size
            if self._pending > max(len(self.keys), 1 << 16):
                self.freeze()

    def freeze(self) -> "KeySet":
        if self._parts:
            self.keys = np.unique(np.concatenate([self.keys, *self._parts]))
        self._parts, self._pending = [], 0
        return self

    def __len__(self) -> int:
        return len(self.keys)

    def index(self, key: str) -> int:
        """Position of ``key`` in the sorted keys, or -1."""
        b = key.encode("utf-8")
        i = int(np.searchsorted(self.keys, b))
        return i if i < len(self.keys) and self.keys[i] == b else -1


def shard_files(runs: Iterable[RunFolder]) -> list[Path]:
    """The finished shard tars of every source run, deduplicated, in run then shard order."""
    seen, out = set(), []
    for run in runs:
        units = run.shard_units() or sorted(p.stem for p in run.shards_dir.glob("*.tar"))
        for u in units:
            p = run.shard_path(u).resolve()
            if p.exists() and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def write_images(
    needed: KeySet,
    sources: list[RunFolder],
    out_root: Path,
    validation_fraction: float,
    per_tar: int,
) -> tuple[dict[str, int], list[dict[str, Any]], list[str]]:
    """Copy the photos whose keys are in ``needed`` into split tars, each once.

    Returns the count per split, ledger rows for photos without image bytes, and the needed keys
    found in no source shard (sorted).
    """
    writers = {s: SplitTarWriter(out_root, s, per_tar) for s in SPLITS}
    written = np.zeros(len(needed), dtype=bool)
    rejects: list[dict[str, Any]] = []
    files = shard_files(sources)
    bar = progress(total=len(needed), desc="images", unit="img")
    try:
        for path in files:
            for sample in iter_shard(path):
                key = sample["__key__"]
                i = needed.index(key)
                if i < 0 or written[i]:
                    continue
                meta = sample.get("json") or {}
                jpg = sample.get("jpg")
                written[i] = True
                bar.update(1)
                if not jpg:
                    rejects.append(reject(key, meta.get("id"), "no_image", f"sample {key} in {path.name} has no .jpg"))
                    continue
                meta = {**meta, "key": key}
                split = split_of(meta.get("author"), meta.get("id"), validation_fraction)
                writers[split].write(key, {"jpg": jpg, "json": json_bytes(image_json(meta))})
    finally:
        for w in writers.values():
            w.close()
        bar.close()
    missing = [k.decode("utf-8") for k in needed.keys[~written]]
    return {s: w.count for s, w in writers.items()}, rejects, missing
