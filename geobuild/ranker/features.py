"""Frozen input features for rankers: coordinates (random Fourier features or a location encoder)
and location text (a hashed bag of words and character n-grams)."""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np



def rff_matrix(dim: int, sigmas: Sequence[float] = (1.0, 4.0, 16.0, 64.0), seed: int = 0) -> np.ndarray:
    """Fixed Gaussian projection [3, dim/2] for random Fourier features at several scales.

    On the unit sphere a chord of 1/σ ≈ 6371/σ km, so σ = 1..64 spans continents down to ~100 km.
    """
    if dim % 2 or dim <= 0:
        raise ValueError(f"rff dim must be a positive even number, got {dim}")
    rng = np.random.default_rng(seed)
    half = dim // 2
    scales = np.repeat(np.asarray(sigmas, dtype=np.float64), int(np.ceil(half / len(sigmas))))[:half]
    return (rng.standard_normal((3, half)) * scales[None, :]).astype(np.float32)


def location_encoder_features(lat, lon) -> np.ndarray:
    """GeoCLIP-style pretrained location features via :func:`geobuild.location_encoder.encode_gps`."""
    from ..core.errors import GeobuildError

    try:
        from ..encoders.location import encode_gps
    except ImportError as exc:
        raise GeobuildError(
            f"the pretrained location encoder is not available ({exc}); use --location rff"
        ) from exc
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    shape = lat.shape
    feats = np.asarray(encode_gps(lat.reshape(-1), lon.reshape(-1)), dtype=np.float32)
    return feats.reshape(*shape, feats.shape[-1])


def _tokens(text: str, ngram: int = 3) -> list[str]:
    words = [w for w in "".join(ch.lower() if ch.isalnum() else " " for ch in text).split() if w]
    toks = ["w:" + w for w in words]
    for w in words:
        padded = f"<{w}>"
        toks.extend("c:" + padded[i : i + ngram] for i in range(max(1, len(padded) - ngram + 1)))
    return toks


@lru_cache(maxsize=200_000)
def _hashed(text: str, dim: int) -> np.ndarray:
    vec = np.zeros(dim, dtype=np.float32)
    for tok in _tokens(text):
        h = zlib.crc32(tok.encode("utf-8"))
        vec[h % dim] += 1.0 if (h >> 31) & 1 else -1.0
    n = float(np.linalg.norm(vec))
    return vec / n if n > 0 else vec


def hashed_text(parts: Iterable[str | None] | None, dim: int = 256) -> np.ndarray:
    """Signed hashed bag of words + character 3-grams of ``[city, state, country]``, L2-normalised.

    Uses CRC32, so the features are identical across processes and Python versions.
    """
    text = " | ".join(str(p) for p in (parts or []) if p)
    return _hashed(text, dim)
