"""Building, tuning and moving faiss inner-product indexes (flat, IVF-PQ, HNSW).

Sizing rules (all overridable):

- ``auto`` picks an exact ``IndexFlatIP`` up to ``flat_max`` vectors (250K by default: 1.2 GB of
  float32 at 1280-d) and IVF-PQ above it.
- IVF-PQ: ``nlist`` is the power of two nearest ``4*sqrt(n)`` (8192 for MP16-Pro's 4.7M), capped so
  every list gets at least 39 training points; ``M`` sub-quantizers of 4 dimensions each (320
  codes per vector at 1280-d: 1.5 GB for 4.7M) of 8 bits (fewer for tiny galleries, so each
  codebook has 39 training points per centroid); ``nprobe`` = nlist/64, at least 16 (128 for
  nlist 8192). Training uses at most ``max(64*nlist, 100K)`` sampled vectors. By default the
  PQ shortlist (``k_factor`` x k, 16 x k by default) is re-ranked with 8-bit scalar-quantised vectors
  (``refine='sq8'``: +1 byte per dimension, 6 GB for 4.7M at 1280-d), which lifts recall@10
  markedly (measured in ``benchmarks/bench_search.py``); ``refine='flat'`` re-ranks with the float32 vectors, ``'none'`` keeps
  only the PQ codes.
- HNSW: ``M`` = 32 links, efConstruction 200, efSearch 128 (stores full vectors: 24 GB for 4.7M
  float32 at 1280-d, so it suits galleries up to a few million).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


from ..core.errors import GeobuildError, require

KINDS = ("auto", "flat", "ivfpq", "hnsw")
REFINES = ("sq8", "flat", "none")
FLAT_MAX = 250_000


def faiss_module():
    return require("faiss", "ml")


def choose_kind(n: int, kind: str = "auto", flat_max: int = FLAT_MAX) -> str:
    """The index kind for ``n`` vectors: the flag, or flat/ivfpq by size for ``auto``."""
    if kind not in KINDS:
        raise GeobuildError(f"unknown index kind '{kind}' (choose one of {', '.join(KINDS)})")
    if kind != "auto":
        return kind
    return "flat" if n <= flat_max else "ivfpq"


def default_nlist(n: int) -> int:
    """Power of two nearest 4*sqrt(n), with >= 39 points per list, at least 1."""
    if n < 39 * 2:
        return 1
    target = 4.0 * math.sqrt(n)
    nlist = 2 ** int(round(math.log2(target)))
    return int(max(1, min(nlist, n // 39)))


def default_pq_m(dim: int, dims_per_code: int = 4) -> int:
    """Number of PQ sub-quantizers: dim / dims_per_code, falling back to the nearest divisor of dim."""
    want = max(1, dim // dims_per_code)
    for m in sorted(range(1, dim + 1), key=lambda m: (abs(m - want), -m)):
        if dim % m == 0:
            return m
    return 1  # pragma: no cover


def default_nprobe(nlist: int) -> int:
    return int(min(nlist, max(16, nlist // 64)))


@dataclass
class IndexParams:
    """Resolved parameters of one index build (recorded in index/info.json)."""

    kind: str
    dim: int
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 8
    refine: str = "none"
    k_factor: int = 4
    nprobe: int = 0
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    train_size: int = 0

    def factory(self) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivfpq":
            rf = {"sq8": ",Refine(SQ8)", "flat": ",RFlat", "none": ""}[self.refine]
            # "np": no polysemous training (faiss's factory default), which reorders the PQ
            # centroids for Hamming-distance filtering that geobuild's search never uses; at 320
            # sub-quantizers it took most of the build time and changes no search result
            return f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}np{rf}"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        raise GeobuildError(f"unknown index kind '{self.kind}'")

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["factory"] = self.factory()
        return d


def resolve_params(
    kind: str, n: int, dim: int, nlist: int = 0, pq_m: int = 0, nprobe: int = 0,
    hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128, refine: str = "sq8", k_factor: int = 16,
) -> IndexParams:
    """Fill in automatic (0) parameters for ``n`` vectors of ``dim``."""
    if refine not in REFINES:
        raise GeobuildError(f"unknown refine '{refine}' (choose {', '.join(REFINES)})")
    p = IndexParams(kind=kind, dim=dim, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
    if kind == "ivfpq":
        p.nlist = nlist or default_nlist(n)
        p.pq_m = pq_m or default_pq_m(dim)
        p.pq_bits = int(max(4, min(8, math.floor(math.log2(max(n, 16) / 39)))))
        p.refine = refine
        p.k_factor = k_factor
        if dim % p.pq_m:
            raise GeobuildError(f"--pq-m {p.pq_m} does not divide the embedding dimension {dim}")
        p.nprobe = nprobe or default_nprobe(p.nlist)
        p.train_size = int(min(n, max(64 * p.nlist, 100_000)))
    return p


def new_index(p: IndexParams):
    """An empty (untrained) inner-product index for ``p``."""
    faiss = faiss_module()
    index = faiss.index_factory(p.dim, p.factory(), faiss.METRIC_INNER_PRODUCT)
    if p.kind == "hnsw":
        index.hnsw.efConstruction = p.ef_construction
        index.hnsw.efSearch = p.ef_search
    return index


def set_search_params(index, p: IndexParams | dict[str, Any]) -> None:
    """Apply nprobe / efSearch to a loaded index (CPU or GPU)."""
    faiss = faiss_module()
    get = p.get if isinstance(p, dict) else (lambda k, d=None: getattr(p, k, d))
    kind = get("kind")
    if kind == "ivfpq" and get("nprobe"):
        try:
            faiss.extract_index_ivf(index).nprobe = int(get("nprobe"))
        except RuntimeError:  # GPU indexes expose nprobe directly
            index.nprobe = int(get("nprobe"))
        top = faiss.downcast_index(index)
        if hasattr(top, "k_factor") and get("k_factor"):
            top.k_factor = float(get("k_factor"))
    elif kind == "hnsw" and get("ef_search"):
        index.hnsw.efSearch = int(get("ef_search"))


def num_gpus() -> int:
    """GPUs faiss can use (0 for faiss-cpu builds)."""
    faiss = faiss_module()
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0
    except Exception:  # pragma: no cover - broken CUDA installs
        return 0


def to_gpu(index):
    """Copy an index to GPU 0 with faiss's GPU build (float16 lookup tables for IVF-PQ).

    For a refined IVF-PQ index only the IVF-PQ part moves to the GPU; the re-ranking with the
    stored vectors stays on the CPU.
    """
    faiss = faiss_module()
    res = faiss.StandardGpuResources()
    opts = faiss.GpuClonerOptions()
    opts.useFloat16 = True
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexRefine):
        base = faiss.index_cpu_to_gpu(res, 0, top.base_index, opts)
        top.base_index = base
        top.referenced_objects = [res, base]  # keep them alive with the index
        return top
    gpu = faiss.index_cpu_to_gpu(res, 0, index, opts)
    gpu.referenced_objects = [res]
    return gpu


