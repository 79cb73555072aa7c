"""Read side of the index stage: the image gallery (faiss + id map) and the GPS gallery.

>>> gallery = load_gallery("runs/mp16")            # index/gallery.faiss + index/ids.parquet
>>> scores, rows = gallery.search(queries, k=10)   # float32 [n, D] L2-normalised queries
>>> gallery.meta.iloc[rows[0]]                     # key, id, lat, lon, author, city, ..., shard, row
>>> gps = load_gps_gallery("runs/mp16")            # .lat, .lon, .features (GeoCLIP 512-d) or None

Search runs on faiss's GPU build when it is installed and a GPU is present, else (flat indexes)
with torch on CUDA when available, else on the CPU with faiss.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.errors import GeobuildError
from ..core.log import get_logger
from ..core.runfolder import RunFolder, read_json

log = get_logger("gallery")

INDEX_DIR = "index"
#: the index stage's units: the faiss gallery and the GPS gallery
GALLERY_UNIT = "gallery"
GPS_UNIT = "gps"
GALLERY_FILE = "gallery.faiss"
IDS_FILE = "ids.parquet"
INFO_FILE = "info.json"
GPS_FILE = "gps_gallery.parquet"
GPS_FEATURES_FILE = "gps_gallery.npy"
GPS_INFO_FILE = "gps_info.json"
DEVICES = ("auto", "cpu", "cuda")


def _run(run: RunFolder | str | os.PathLike) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run)


def index_path(run: RunFolder | str | os.PathLike, name: str) -> Path:
    return _run(run).path(INDEX_DIR, name)


def _gpu_driver() -> bool:
    """Whether an NVIDIA or ROCm driver is present (checked without importing torch)."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd"))


def _torch_cuda() -> bool:
    """torch sees a CUDA (or ROCm) device. Without a driver torch is not imported: on a CPU-only
    machine that import alone costs hundreds of MB of memory in every searching process."""
    if "torch" not in sys.modules and not _gpu_driver():
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


@dataclass
class Gallery:
    """A searchable image gallery: a faiss index, its id map and its info."""

    index: Any
    ids_path: Path
    info: dict[str, Any]
    ids_columns: tuple[str, ...] = ()  # the id map's columns (from its footer, read once at load)
    backend: str = "faiss-cpu"
    _torch: Any = field(default=None, repr=False)
    _meta: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def meta(self) -> pd.DataFrame:
        """The id map (one row per vector), read from ``ids.parquet`` on first use."""
        if self._meta is None:
            self._meta = self.read_ids().to_pandas()
        return self._meta

    def read_ids(self, columns: list[str] | None = None):
        """The id map as an Arrow table (only ``columns``, if given): for callers that keep a few
        columns of a large gallery without a pandas copy of all of them."""
        import pyarrow.parquet as pq

        return pq.read_table(self.ids_path, columns=columns)

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def model(self) -> str:
        return str(self.info.get("model", ""))

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", "flat"))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product (cosine on L2-normalised vectors).

        Returns (scores float32 [n, k'], rows int64 [n, k']) with k' = min(k, gallery size); rows
        index :attr:`meta`.
        """
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise GeobuildError(
                f"query embeddings have shape {tuple(q.shape)}, the gallery index expects [n, {self.dim}] "
                f"({self.model}); embed the queries with the gallery's model"
            )
        k = int(min(k, self.ntotal))
        if k <= 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], max(k, 0)), np.float32), np.zeros((q.shape[0], max(k, 0)), np.int64)
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self._torch is not None:
            return self._torch.search(q, k)
        scores, rows = self.index.search(q, k)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


def load_gallery(
    run: RunFolder | str | os.PathLike, device: str = "auto", nprobe: int | None = None,
    ef_search: int | None = None,
) -> Gallery:
    """Load ``index/gallery.faiss`` + ``ids.parquet`` + ``info.json`` of ``run`` for searching."""
    from ..retrieval import faiss_index as fi
    from ..core.schemas import check, check_json

    if device not in DEVICES:
        raise GeobuildError(f"unknown device '{device}' (choose auto, cpu or cuda)")
    run = _run(run)
    paths = {n: index_path(run, n) for n in (GALLERY_FILE, IDS_FILE, INFO_FILE)}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise GeobuildError(f"no gallery index in {run.root} (missing {missing[0]}); run: geobuild index --run {run.root}")
    faiss = fi.faiss_module()
    info = read_json(paths[INFO_FILE], f"rebuild it: geobuild index --run {run.root} --overwrite")
    check_json(info, "index_info", str(paths[INFO_FILE]))  # files without schema_version are accepted
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        ids_file = pq.ParquetFile(paths[IDS_FILE])
    except (OSError, pa.ArrowInvalid) as exc:
        raise GeobuildError(f"cannot read {paths[IDS_FILE]} ({str(exc).splitlines()[0]}); "
                            f"rebuild with: geobuild index --run {run.root} --overwrite") from None
    check(ids_file.schema_arrow, "gallery_ids", str(paths[IDS_FILE]))
    n_ids = ids_file.metadata.num_rows
    index = faiss.read_index(str(paths[GALLERY_FILE]))
    if index.ntotal != n_ids:
        raise GeobuildError(
            f"{paths[GALLERY_FILE]} has {index.ntotal} vectors but {paths[IDS_FILE]} has {n_ids} rows; "
            f"rebuild with: geobuild index --run {run.root} --overwrite"
        )
    params = dict(info.get("params", {}))
    if nprobe:
        params["nprobe"] = nprobe
    if ef_search:
        params["ef_search"] = ef_search
    fi.set_search_params(index, params)
    gallery = Gallery(index=index, ids_path=paths[IDS_FILE], info=info, ids_columns=tuple(ids_file.schema_arrow.names))
    _place(gallery, device, params)
    return gallery


def _place(gallery: Gallery, device: str, params: dict[str, Any]) -> None:
    """Move the gallery to a GPU when asked/available: faiss-gpu first, torch for flat indexes."""
    from ..retrieval import faiss_index as fi

    if device == "cpu":
        return
    if fi.num_gpus() > 0 and gallery.kind != "hnsw":
        gallery.index = fi.to_gpu(gallery.index)
        fi.set_search_params(gallery.index, params)
        gallery.backend = "faiss-gpu"
    elif gallery.kind == "flat" and _torch_cuda():
        from ..retrieval.knn import TorchGallery

        vectors = gallery.index.reconstruct_n(0, gallery.index.ntotal)
        gallery._torch = TorchGallery(vectors, device="cuda")
        gallery.backend = "torch-cuda"
    elif device == "cuda":
        raise GeobuildError(
            "--device cuda: no GPU usable for search (install faiss-gpu, or torch with CUDA for flat indexes)"
        )
    log.info("gallery search on %s", gallery.backend)


@dataclass
class GpsGallery:
    """GPS gallery points with their location-encoder features (None if not encoded)."""

    lat: np.ndarray
    lon: np.ndarray
    features: np.ndarray | None
    info: dict[str, Any]

    def __len__(self) -> int:
        return int(self.lat.shape[0])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k GPS points by inner product of ``q`` [n, F] with :attr:`features`."""
        from ..retrieval.knn import topk_numpy

        if self.features is None:
            raise GeobuildError("this GPS gallery has no location features; rebuild it with geobuild index")
        if q.ndim != 2 or q.shape[1] != self.features.shape[1]:
            raise GeobuildError(f"GPS gallery features are {self.features.shape[1]}-d, queries have shape {tuple(q.shape)}")
        chunks = (self.features[i : i + 65536] for i in range(0, len(self), 65536))
        return topk_numpy(chunks, q, k)


def load_gps_gallery(run: RunFolder | str | os.PathLike, features: bool = True, mmap: bool = True) -> GpsGallery:
    """Load ``index/gps_gallery.parquet`` (lat, lon) and, if present, ``gps_gallery.npy`` features."""
    import pyarrow.parquet as pq

    from ..core.schemas import check, check_json

    run = _run(run)
    path = index_path(run, GPS_FILE)
    if not path.exists():
        raise GeobuildError(f"no GPS gallery in {run.root} (missing {path}); run: geobuild index --run {run.root}")
    table = pq.read_table(path)
    check(table, "gps_gallery", str(path))
    lat = table.column("lat").to_numpy()
    lon = table.column("lon").to_numpy()
    info_p = index_path(run, GPS_INFO_FILE)
    info = read_json(info_p, f"rebuild it: geobuild index --run {run.root} --overwrite") if info_p.exists() else {}
    check_json(info, "gps_info", str(info_p))
    feats = None
    fpath = index_path(run, GPS_FEATURES_FILE)
    if features and fpath.exists():
        feats = np.load(fpath, mmap_mode="r" if mmap else None)
        if feats.shape[0] != lat.shape[0]:
            raise GeobuildError(f"{fpath} has {feats.shape[0]} rows but {path} has {lat.shape[0]}; rebuild the GPS gallery")
    return GpsGallery(lat=lat, lon=lon, features=feats, info=info)
