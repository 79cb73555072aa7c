"""GPS candidates: top points of the GPS gallery for each query, by one of two scorers.

``kde`` (any encoder): a similarity-weighted Gaussian kernel density of the query's image
neighbours' locations, evaluated at GPS-gallery points near those neighbours::

    density(g) = sum_j w_j exp(-d(g, n_j)^2 / (2 h^2)),   w = softmax(sim / T)

with ``h`` the bandwidth in km and ``T`` the similarity temperature. Only the ``probe`` nearest
gallery points of every neighbour are evaluated (the kernel is negligible elsewhere), so the cost
does not grow with the GPS gallery. The score stored is the density (weights sum to 1).

``geoclip`` (open_clip ViT-L-14 with OpenAI weights only): GeoCLIP's image head, an MLP read
directly from the ``geoclip`` wheel (``weights/image_encoder_mlp_weights.pth``), maps the query's
CLIP image embedding into GeoCLIP's space; scores are GeoCLIP's softmax over the GPS gallery's
location features (``exp(logit_scale) * cos``). GeoCLIP's image backbone is never built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...core.errors import GeobuildError, require
from ...geo.sphere import haversine_matrix_km
from ...geo.spatial import PointTree

# open_clip specs whose image embeddings GeoCLIP's MLP head was trained on (CLIP ViT-L/14, OpenAI).
GEOCLIP_MODEL_RE = re.compile(r"^open_clip:ViT-L-14(-quickgelu)?:openai$", re.IGNORECASE)
GEOCLIP_DIM = 768
# Stored embeddings are L2-normalised; GeoCLIP's MLP saw raw CLIP projections. Its normalised output
# is nearly scale-invariant above a norm of ~10 (cosine > 0.99 between norms 10 and 50), so unit
# vectors are rescaled to this norm before the head.
GEOCLIP_INPUT_NORM = 20.0


@dataclass
class GpsPick:
    rows: np.ndarray  # int64 [n, k], -1 = none
    scores: np.ndarray  # float32 [n, k]


def kde_candidates(
    nb_lat: np.ndarray,
    nb_lon: np.ndarray,
    nb_sim: np.ndarray,
    nb_valid: np.ndarray,
    tree: PointTree,
    k: int,
    bandwidth_km: float = 25.0,
    temperature: float = 0.05,
    probe: int = 16,
    min_sep_km: float = 0.0,
) -> GpsPick:
    """Top-``k`` GPS-gallery points per query by neighbour-location kernel density.

    ``nb_*`` are [n, J] arrays of the query's image neighbours (``nb_valid`` masks padding).
    With ``min_sep_km`` > 0, points are taken greedily by density and a point closer than that to
    one already taken is skipped (so the K points cover several modes, not one peak); if too few
    probed points are that far apart, the next best fill the K places.
    """
    n, j = nb_lat.shape
    k = int(min(k, len(tree)))
    rows = np.full((n, max(k, 0)), -1, dtype=np.int64)
    scores = np.zeros((n, max(k, 0)), dtype=np.float32)
    if n == 0 or j == 0 or k <= 0:
        return GpsPick(rows, scores)
    probe = max(int(probe), k)
    flat_lat = np.where(nb_valid, nb_lat, 0.0).ravel()
    flat_lon = np.where(nb_valid, nb_lon, 0.0).ravel()
    _, near = tree.nearest(flat_lat, flat_lon, k=probe)  # [n*J, P]
    near = near.reshape(n, j, -1)
    sim = np.where(nb_valid, nb_sim, -np.inf).astype(np.float64)
    logw = sim / float(temperature)
    logw = logw - logw.max(axis=1, keepdims=True)
    logw = logw - np.log(np.exp(logw).sum(axis=1, keepdims=True))
    inv2h2 = 0.5 / float(bandwidth_km) ** 2
    for i in range(n):
        ok = nb_valid[i]
        if not ok.any():
            continue
        cand = np.unique(near[i][ok].ravel())
        d = haversine_matrix_km(nb_lat[i, ok], nb_lon[i, ok], tree.lat[cand], tree.lon[cand])  # [J', C]
        logk = logw[i, ok][:, None] - inv2h2 * d * d
        m = logk.max(axis=0)
        logd = m + np.log(np.exp(logk - m).sum(axis=0))
        order = np.lexsort((cand, -logd))  # density descending, ties by row
        top = order[:k] if min_sep_km <= 0 else _spread(cand[order], tree, k, min_sep_km, order)
        kk = top.size
        rows[i, :kk] = cand[top]
        scores[i, :kk] = np.exp(logd[top])
    return GpsPick(rows, scores)


def _spread(rows: np.ndarray, tree: PointTree, k: int, min_sep_km: float, order: np.ndarray) -> np.ndarray:
    """Greedy selection of up to ``k`` of ``rows`` (best first) at least ``min_sep_km`` apart."""
    from ...geo.sphere import haversine_matrix_km

    m = min(rows.size, 16 * k)  # the best points only: enough to find k separated ones
    lat, lon = tree.lat[rows[:m]], tree.lon[rows[:m]]
    close = haversine_matrix_km(lat, lon, lat, lon) < min_sep_km
    blocked = np.zeros(m, dtype=bool)
    chosen: list[int] = []
    for j in range(m):
        if blocked[j]:
            continue
        chosen.append(j)
        if len(chosen) == k:
            break
        blocked |= close[j]
    if len(chosen) < k:  # too few far-apart points among those probed: fill up with the next best
        taken = set(chosen)
        chosen += [j for j in range(rows.size) if j not in taken][: k - len(chosen)]
    return order[np.asarray(chosen, dtype=np.int64)]


def check_geoclip_model(model: str, dim: int) -> None:
    """Refuse image features GeoCLIP's head was not trained on."""
    if not GEOCLIP_MODEL_RE.match(model or "") or int(dim) != GEOCLIP_DIM:
        raise GeobuildError(
            f"--gps-scorer geoclip needs embeddings from open_clip:ViT-L-14:openai (768-d), this run has "
            f"'{model}' ({dim}-d); use --gps-scorer kde, or embed with --model open_clip:ViT-L-14:openai"
        )


@lru_cache(maxsize=2)
def load_geoclip_head(device: str = "cpu"):
    """GeoCLIP's image MLP (768 -> 768 -> 512) and logit scale, from the geoclip wheel."""
    torch = require("torch", "ml")
    from ...encoders.location import geoclip_dir

    wdir = geoclip_dir() / "weights"
    mlp_p, scale_p = wdir / "image_encoder_mlp_weights.pth", wdir / "logit_scale_weights.pth"
    for p in (mlp_p, scale_p):
        if not p.exists():
            raise GeobuildError(f"GeoCLIP weights missing from the geoclip wheel ({p}); reinstall geoclip")
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.ReLU(), torch.nn.Linear(768, 512))
    mlp.load_state_dict(torch.load(mlp_p, map_location="cpu", weights_only=True), strict=True)
    logit_scale = float(torch.load(scale_p, map_location="cpu", weights_only=True))
    return mlp.to(device).eval(), logit_scale


def geoclip_image_features(x: np.ndarray, input_norm: float = GEOCLIP_INPUT_NORM) -> np.ndarray:
    """GeoCLIP-space image features, L2-normalised float32 [n, 512], of CLIP embeddings ``x``."""
    import torch

    mlp, _ = load_geoclip_head()
    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) * float(input_norm)
    with torch.inference_mode():
        f = mlp(torch.from_numpy(x))
        f = torch.nn.functional.normalize(f, dim=1)
    return f.numpy().astype(np.float32)


def geoclip_candidates(x: np.ndarray, gps_features: np.ndarray, k: int, input_norm: float = GEOCLIP_INPUT_NORM) -> GpsPick:
    """Top-``k`` GPS-gallery points by GeoCLIP probability for CLIP ViT-L/14 image embeddings."""
    from ...retrieval.knn import topk_numpy

    _, logit_scale = load_geoclip_head()
    feats = geoclip_image_features(x, input_norm)
    k = int(min(k, gps_features.shape[0]))
    scale = float(np.exp(logit_scale))
    # softmax normaliser over the whole gallery, streamed in chunks
    lse = np.full(feats.shape[0], -np.inf)
    for s in range(0, gps_features.shape[0], 65536):
        logits = scale * (feats @ np.asarray(gps_features[s : s + 65536], dtype=np.float32).T)
        lse = np.logaddexp(lse, np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1))
    chunks = (np.asarray(gps_features[s : s + 65536], dtype=np.float32) for s in range(0, gps_features.shape[0], 65536))
    cos, rows = topk_numpy(chunks, feats, k)
    probs = np.exp(scale * cos - lse[:, None]).astype(np.float32)
    return GpsPick(rows.astype(np.int64), probs)
