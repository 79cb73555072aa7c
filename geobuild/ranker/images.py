"""Photos for rankers: where they are (WebDataset tars, by key) and their frozen embeddings.

Embeddings are computed once per tar with a frozen encoder and cached in the output folder
(``<out>/embed-cache/<encoder>/<tar-id>.npz``: keys + float16 rows), so a rerun or a resumed
training reads them back instead of embedding again. A tar's cache is written atomically after
the whole tar is embedded.

Encoders: any :func:`geobuild.encoders.load_encoder` spec (``efficientnet-lite0``, ``open_clip:...``),
or ``thumbnail[:N]``, a weight-free N x N colour thumbnail (default 8) that is fast enough for
tests and smoke runs.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core.errors import GeobuildError
from ..core.log import get_logger, progress
from ..core.runfolder import atomic_path
from ..artifacts.shards import iter_shard

log = get_logger("ranker.images")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class ImageSource:
    """Tars holding the query photos and the candidate photos (the same tars for a published dataset)."""

    query_tars: list[Path]
    cand_tars: list[Path]
    tar_index: Path | None = None  # a GeoRanker bundle: one tar, read through this tar_index.pkl

    @property
    def shared(self) -> bool:
        return self.query_tars == self.cand_tars


def published_images(source: str | Path) -> ImageSource:
    """The photo tars of a published dataset: ``DIR/images/**/*.tar`` or the Hub repo ``NAME-images``."""
    p = Path(source)
    if p.exists():
        root = p / "images" if (p / "images").is_dir() else None
        if root is None and p.name == "dataset" and (p.parent / "images").is_dir():
            root = p.parent / "images"
        if root is None:
            raise GeobuildError(f"no images/ folder beside {p}; publish the dataset with its photos or pass --images")
    else:
        from ..core.errors import require

        hub = require("huggingface_hub", "hub")
        try:
            root = Path(hub.snapshot_download(f"{source}-images", repo_type="dataset"))
        except Exception as exc:  # network, auth, missing repo
            raise GeobuildError(f"cannot fetch the photos repo {source}-images: {exc}") from None
    tars = sorted(root.rglob("*.tar"))
    if not tars:
        raise GeobuildError(f"no WebDataset tars under {root}")
    return ImageSource(tars, tars)


def georanker_bundle(source: str | Path | None) -> Path | None:
    """The folder of a GeoRanker train bundle (``geobuild export georanker``: ``GeoRanking.parquet``,
    ``tar_index.pkl`` and its tar) that ``source`` is or holds the table of; None otherwise."""
    from ..artifacts.georanker_bundle import TRAIN_TABLE

    if not source:
        return None
    p = Path(source)
    folder = p if p.is_dir() else p.parent if p.is_file() and p.suffix == ".parquet" else None
    if folder is None or not (folder / "tar_index.pkl").is_file():
        return None
    return folder if p.is_file() or (folder / TRAIN_TABLE).is_file() else None


def bundle_images(folder: str | Path) -> ImageSource:
    """The photos of a GeoRanker bundle: ``images.tar`` (or the tar its ``bundle.json`` names) through
    its ``tar_index.pkl``."""
    import json

    from ..artifacts.georanker_bundle import MANIFEST

    folder = Path(folder)
    tar = folder / "images.tar"
    if (folder / MANIFEST).is_file():
        try:
            tar = folder / json.loads((folder / MANIFEST).read_text()).get("images_tar", "images.tar")
        except (ValueError, AttributeError) as exc:
            raise GeobuildError(f"cannot read {folder / MANIFEST} ({exc}); export the bundle again") from None
    return ImageSource([tar], [tar], tar_index=folder / "tar_index.pkl")


def folder_images(root: str | Path) -> list[Path]:
    """Every tar below ``root`` (a run folder's ``shards/`` or an ``images/`` folder)."""
    root = Path(root)
    base = root / "shards" if (root / "shards").is_dir() else root
    tars = sorted(base.rglob("*.tar"))
    if not tars:
        raise GeobuildError(f"no WebDataset tars under {base}")
    return tars


# -- encoders ---------------------------------------------------------------------------------------
class ThumbnailEncoder:
    """A weight-free encoder: the photo resized to N x N RGB, centred and L2-normalised."""

    def __init__(self, size: int = 8):
        self.size = size
        self.spec = f"thumbnail:{size}"
        self.dim = 3 * size * size

    def encode_pil(self, images: list) -> np.ndarray:
        out = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size)), dtype=np.float32).reshape(-1) / 255.0 for im in images])
        out -= out.mean(axis=1, keepdims=True)
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(n, 1e-6)


class _ModelEncoder:
    def __init__(self, spec: str, device: str):
        try:
            from ..encoders import load_encoder
        except ImportError as exc:
            raise GeobuildError(f"image encoders are not available ({exc}); install geobuild[ml]") from exc
        self.enc = load_encoder(spec, device=device)
        self.spec = spec
        self.dim = int(self.enc.dim)

    def encode_pil(self, images: list) -> np.ndarray:
        import torch

        batch = torch.stack([self.enc.image_transform(im.convert("RGB")) for im in images])
        with torch.no_grad():
            out = self.enc.encode_images(batch)
        return out.detach().float().cpu().numpy()


def make_encoder(spec: str, device: str = "cpu"):
    """An image encoder with ``.spec``, ``.dim`` and ``.encode_pil(list[PIL.Image]) -> float32 [B, D]``."""
    m = re.fullmatch(r"thumbnail(?::(\d+))?", spec)
    if m:
        return ThumbnailEncoder(int(m.group(1) or 8))
    return _ModelEncoder(spec, device)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "encoder"


def _tar_id(path: Path) -> str:
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{_slug(path.stem)}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


@dataclass
class Embeddings:
    """Frozen photo embeddings by key, in two namespaces (query photos, candidate photos)."""

    matrix: np.ndarray  # float32 [M, D]
    query_rows: dict[str, int] = field(default_factory=dict)
    cand_rows: dict[str, int] = field(default_factory=dict)
    spec: str = ""

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def rows(self, keys: Iterable[str | None], namespace: str = "cand") -> np.ndarray:
        """Row of each key (-1 when there is no photo)."""
        table = self.query_rows if namespace == "query" else self.cand_rows
        return np.asarray([table.get(k, -1) if k is not None else -1 for k in keys], dtype=np.int64)


def cache_path(cache_dir: str | Path, encoder_spec: str, tar: Path) -> Path:
    """Where :func:`embed_images` caches the embeddings of ``tar``."""
    return Path(cache_dir) / _slug(encoder_spec) / f"{_tar_id(Path(tar))}.npz"


def seed_cache(cache_dir: str | Path, encoder_spec: str, tar: Path, vectors: dict[str, np.ndarray]) -> bool:
    """Fill the cache of ``tar`` from embeddings computed elsewhere (``vectors``: key -> row, e.g. a
    run's embed stage outputs for the same photos), so :func:`embed_images` reads instead of
    embedding. Refuses (False) when a photo of the tar has no vector; an existing cache is kept."""
    cache = cache_path(cache_dir, encoder_spec, tar)
    if cache.exists():
        return True
    keys = [sample["__key__"] for sample in iter_shard(tar) if any(e in sample for e in IMAGE_EXTS)]
    if any(k not in vectors for k in keys):
        return False
    dim = len(next(iter(vectors.values())))
    emb = np.stack([vectors[k] for k in keys]) if keys else np.zeros((0, dim))
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys, dtype=str), emb=emb.astype(np.float16), bad=np.int64(0))
    return True


def _embed_tar(tar: Path, encoder, cache: Path, batch_size: int) -> tuple[list[str], np.ndarray, int]:
    """Keys and embeddings of every photo in one tar (from the cache when present)."""
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return [str(k) for k in z["keys"]], z["emb"].astype(np.float32), int(z["bad"])
    from PIL import Image

    keys: list[str] = []
    chunks: list[np.ndarray] = []
    pending_keys: list[str] = []
    pending: list = []
    bad = 0

    def flush():
        if pending:
            chunks.append(np.asarray(encoder.encode_pil(pending), dtype=np.float32))
            keys.extend(pending_keys)
            pending.clear()
            pending_keys.clear()

    for sample in iter_shard(tar):
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if data is None:
            continue
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except Exception:  # undecodable photo: the key simply has no embedding
            bad += 1
            continue
        pending.append(im)
        pending_keys.append(sample["__key__"])
        if len(pending) >= batch_size:
            flush()
    flush()
    # stored as float16; hand back the same rounded values a cached rerun reads
    emb = (np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)).astype(np.float16)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys, dtype=str), emb=emb, bad=np.int64(bad))
    return keys, emb.astype(np.float32), bad


def embed_images(
    images: ImageSource, encoder_spec: str, cache_dir: str | Path, batch_size: int = 64, device: str = "cpu"
) -> Embeddings:
    """Embed every photo of ``images`` once (cached per tar under ``cache_dir``)."""
    if images.tar_index is not None:
        raise GeobuildError(
            "the compact ranker embeds photos from WebDataset tars, not a GeoRanker bundle's tar_index.pkl; "
            "train it on the published dataset (geobuild publish), or use --model vlm / --preset georanker"
        )
    tars = list(dict.fromkeys(list(images.query_tars) + list(images.cand_tars)))
    encoder = None
    per_tar: dict[Path, tuple[list[str], np.ndarray]] = {}
    bad_total = 0
    bar = progress(total=len(tars), desc=f"embedding photos ({encoder_spec})", unit="tar")
    for tar in tars:
        cache = cache_path(cache_dir, encoder_spec, tar)
        if not cache.exists() and encoder is None:
            encoder = make_encoder(encoder_spec, device)
        keys, emb, bad = _embed_tar(tar, encoder, cache, batch_size)
        bad_total += bad
        per_tar[tar] = (keys, emb)
        bar.update(1)
    bar.close()
    if bad_total:
        log.warning("%d photos could not be decoded and have no embedding", bad_total)
    blocks, query_rows, cand_rows, offset = [], {}, {}, 0
    qset, cset = set(images.query_tars), set(images.cand_tars)
    for tar in tars:
        keys, emb = per_tar[tar]
        for i, k in enumerate(keys):
            if tar in qset:
                query_rows.setdefault(k, offset + i)
            if tar in cset:
                cand_rows.setdefault(k, offset + i)
        blocks.append(emb)
        offset += len(keys)
    dims = {b.shape[1] for b in blocks if b.shape[0]}
    if not dims:
        raise GeobuildError("no decodable photos in the image tars")
    matrix = np.concatenate([b for b in blocks if b.shape[0]] or blocks).astype(np.float32)
    return Embeddings(matrix=matrix, query_rows=query_rows, cand_rows=cand_rows, spec=encoder_spec)
