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
    needed: dict[str, str | None],
    sources: list[RunFolder],
    out_root: Path,
    validation_fraction: float,
    per_tar: int,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Copy the photos whose keys are in ``needed`` (key -> id) into split tars.

    Returns the count per split and ledger rows for photos that could not be found or have no
    image bytes.
    """
    writers = {s: SplitTarWriter(out_root, s, per_tar) for s in SPLITS}
    written: set[str] = set()
    rejects: list[dict[str, Any]] = []
    files = shard_files(sources)
    bar = progress(total=len(needed), desc="images", unit="img")
    try:
        for path in files:
            for sample in iter_shard(path):
                key = sample["__key__"]
                if key not in needed or key in written:
                    continue
                meta = sample.get("json") or {}
                jpg = sample.get("jpg")
                written.add(key)
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
    for key in sorted(set(needed) - written):
        rejects.append(reject(key, needed[key], "image_missing", "photo referenced by the dataset not found in any source shard"))
    return {s: w.count for s, w in writers.items()}, rejects
