"""Embedding artifacts of a run: ``embeddings/<unit>.npy`` + row-aligned ``<unit>.parquet``.

- ``<unit>.npy``: float16 or float32 ``[N, D]``, L2-normalised image embeddings;
- ``<unit>.parquet``: one row per embedding (schema ``embeddings_meta``);
- ``<unit>.text.npy``: optional location-text embeddings (text towers), same rows; a sample
  without location text has an all-zero row and a null ``location_text``;
- ``model.json``: ``{"model", "dim", "dtype", "text", "has_text", "image_size"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..core.errors import GeobuildError
from ..geo.geocode import TEXT_FIELDS
from ..core.runfolder import RunFolder, atomic_path, read_json
from ..core.schemas import check

DIRNAME = "embeddings"
META_SCHEMA = "embeddings_meta"
META_FIELDS = ("key", "id", "lat", "lon", "author", *TEXT_FIELDS, "location_text")


def _run(run: RunFolder | str | Path) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run)


def embeddings_dir(run: RunFolder | str | Path) -> Path:
    return _run(run).path(DIRNAME)


def npy_path(run, unit: str) -> Path:
    return embeddings_dir(run) / f"{unit}.npy"


def text_npy_path(run, unit: str) -> Path:
    return embeddings_dir(run) / f"{unit}.text.npy"


def meta_path(run, unit: str) -> Path:
    return embeddings_dir(run) / f"{unit}.parquet"


def model_info_path(run) -> Path:
    return embeddings_dir(run) / "model.json"


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy file atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def read_model_info(run: RunFolder | str | Path) -> dict[str, Any]:
    """The run's ``embeddings/model.json`` (model spec, dim, dtype, has_text)."""
    path = model_info_path(run)
    if not path.exists():
        raise GeobuildError(f"no embeddings in {_run(run).root} ({path.name} missing); run geobuild embed first")
    rf = _run(run)
    info = read_json(path, f"redo the embeddings: remove {path} and {rf.path('done', 'embed')}, "
                           f"then run: geobuild embed --run {rf.root} (with the same --model)")
    from ..core.schemas import check_json

    check_json(info, "embeddings_model", str(path))  # files without schema_version are accepted
    return info


def write_model_info(run: RunFolder | str | Path, info: dict[str, Any]) -> None:
    _run(run).write_json(model_info_path(run), info)


def embedded_units(run: RunFolder | str | Path) -> list[str]:
    """Units whose embed stage finished (completion marker written)."""
    return _run(run).done_units("embed")


def read_meta(run: RunFolder | str | Path, unit: str):
    """The metadata DataFrame of one unit (schema-checked)."""
    path = meta_path(run, unit)
    if not path.exists():
        raise GeobuildError(f"missing embeddings file {path}; redo it with: geobuild embed --run {_run(run).root} --shards {unit} --overwrite")
    table = pq.read_table(path)
    check(table, META_SCHEMA, str(path))
    return table.to_pandas()


def read_embeddings(run: RunFolder | str | Path, unit: str, mmap: bool = False):
    """``(float32 [N, D] L2-normalised image embeddings, metadata DataFrame)`` of one unit; with
    ``mmap`` the stored array (float16|float32) memory-mapped. A missing, damaged or misshapen
    file is one :class:`GeobuildError` saying how to redo it."""
    path = npy_path(run, unit)
    rf = _run(run)
    redo = f"redo it with: geobuild embed --run {rf.root} --shards {unit} --overwrite"
    if not path.exists():
        raise GeobuildError(f"missing embeddings file {path}; {redo}")
    try:
        emb = np.load(path, mmap_mode="r" if mmap else None)
    except Exception as exc:  # noqa: BLE001 - a corrupt file of any kind is one clear line
        raise GeobuildError(f"unreadable embeddings file {path} ({type(exc).__name__}: {exc}); {redo}") from None
    if emb.ndim != 2:
        raise GeobuildError(f"{path} has shape {tuple(emb.shape)}, expected [N, D]; {redo}")
    if not mmap:
        emb = emb.astype(np.float32, copy=False)
    meta = read_meta(run, unit)
    if len(meta) != emb.shape[0]:
        raise GeobuildError(f"{path} has {emb.shape[0]} rows but {meta_path(run, unit).name} has {len(meta)}; rerun geobuild embed --overwrite")
    return emb, meta


def read_text_embeddings(run: RunFolder | str | Path, unit: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(float32 [N, D] text embeddings, bool mask [N])`` of one unit, or None without a text tower."""
    path = text_npy_path(run, unit)
    if not path.exists():
        return None
    emb = np.load(path).astype(np.float32, copy=False)
    meta = read_meta(run, unit)
    mask = meta["location_text"].notna().to_numpy()
    return emb, mask
