"""GPS candidates: top points of the GPS gallery for each query, by one of two scorers.

``kde`` (any encoder): a similarity-weighted Gaussian kernel density of the query's image
neighbours' locations, evaluated at GPS-gallery points near those neighbours::

    density(g) = sum_j w_j exp(-d(g, n_j)^2 / (2 h^2)),   w = softmax(sim / T)

with ``h`` the bandwidth in km and ``T`` the similarity temperature. Only the ``probe`` nearest
gallery points of every neighbour are evaluated (the kernel is negligible elsewhere), so the cost
does not grow with the GPS gallery. The score stored is the density (weights sum to 1). Queries
are scored in batches with numpy; a (neighbour, point) term is computed only when a triangle-
inequality bound says it can exceed exp(-745) (smaller ones are 0.0 in float64), and the kept
terms are summed in neighbour order, so the densities are bitwise those of the full sum.

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
from ...geo.sphere import EARTH_RADIUS_KM
from ...geo.spatial import PointTree

# open_clip specs whose image embeddings GeoCLIP's MLP head was trained on (CLIP ViT-L/14, OpenAI).
GEOCLIP_MODEL_RE = re.compile(r"^open_clip:ViT-L-14(-quickgelu)?:openai$", re.IGNORECASE)
GEOCLIP_DIM = 768
# Stored embeddings are L2-normalised; GeoCLIP's MLP saw raw CLIP projections. Its normalised output
# is nearly scale-invariant above a norm of ~10 (cosine > 0.99 between norms 10 and 50), so unit
# vectors are rescaled to this norm before the head.
GEOCLIP_INPUT_NORM = 20.0
#: queries per kde batch: bounds the per-batch work arrays
KDE_BATCH = 256
#: kernel terms whose log lies this far below the largest are exp(< -745) = 0.0 in float64: skipped
_NEGLIGIBLE_LOG = 760.0
#: km added to distance bounds against rounding in the haversine formula
_KM_MARGIN = 1e-3

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
    batch: int = KDE_BATCH,
) -> GpsPick:
    """Top-``k`` GPS-gallery points per query by neighbour-location kernel density.

    ``nb_*`` are [n, J] arrays of the query's image neighbours (``nb_valid`` masks padding).
    With ``min_sep_km`` > 0, points are taken greedily by density and a point closer than that to
    one already taken is skipped (so the K points cover several modes, not one peak); if too few
    probed points are that far apart, the next best fill the K places. Ties in density go to the
    lower gallery row. Queries are processed ``batch`` at a time, all of a batch in numpy at once.
    """
    n, j = nb_lat.shape
    k = int(min(k, len(tree)))
    rows = np.full((n, max(k, 0)), -1, dtype=np.int64)
    scores = np.zeros((n, max(k, 0)), dtype=np.float32)
    if n == 0 or j == 0 or k <= 0:
        return GpsPick(rows, scores)
    probe = max(int(probe), k)
    nb_valid = np.asarray(nb_valid, dtype=bool)
    nb_lat = np.where(nb_valid, nb_lat, 0.0).astype(np.float64)
    nb_lon = np.where(nb_valid, nb_lon, 0.0).astype(np.float64)
    # probe each distinct neighbour location once (neighbours repeat across queries)
    points, inverse = np.unique(np.stack([nb_lat.ravel(), nb_lon.ravel()], axis=1), axis=0, return_inverse=True)
    km, near = tree.nearest(points[:, 0], points[:, 1], k=probe)  # [U, P]
    inverse = inverse.ravel()
    near = near[inverse].reshape(n, j, -1)
    reach = km.max(axis=1)[inverse].reshape(n, j)  # km to a neighbour's farthest probed point
    sim = np.where(nb_valid, nb_sim, -np.inf).astype(np.float64)
    with np.errstate(invalid="ignore"):  # a query without neighbours: all -inf, never read
        logw = sim / float(temperature)
        logw = logw - logw.max(axis=1, keepdims=True)
        logw = logw - np.log(np.exp(logw).sum(axis=1, keepdims=True))
    inv2h2 = 0.5 / float(bandwidth_km) ** 2
    points_rad = _radians(tree.lat, tree.lon)
    step = max(int(batch), 1)
    for s in range(0, n, step):
        e = min(n, s + step)
        nb_rad = _radians(nb_lat[s:e], nb_lon[s:e])
        cand, size, logd = _densities(nb_rad, nb_valid[s:e], logw[s:e], near[s:e], reach[s:e], points_rad, inv2h2)
        order = np.lexsort((cand, -logd), axis=1)  # density descending, ties by row; padding last
        if min_sep_km > 0:
            top = _spread(np.take_along_axis(cand, order, 1), size, points_rad, k, min_sep_km, order)
        else:
            top = order[:, :k]
        got = np.arange(top.shape[1])[None, :] < np.minimum(size, k)[:, None]
        rows[s:e, : top.shape[1]] = np.where(got, np.take_along_axis(cand, top, 1), -1)
        scores[s:e, : top.shape[1]] = np.where(got, np.exp(np.take_along_axis(logd, top, 1)), 0.0)
    return GpsPick(rows, scores)


def _densities(nb_rad, nb_valid, logw, near, reach, points_rad, inv2h2: float):
    """(cand int64 [b, C], size int64 [b], log density float64 [b, C]) at the distinct probed points.

    ``cand`` holds each query's ``size`` distinct probed rows ascending, padded with ``len(tree)``
    (log density -inf); C is the largest count in the batch.

    Only the kernel terms that can be non-zero are computed. A point g probed by neighbour j' lies
    within ``reach[j']`` of it, so by the triangle inequality neighbour j is at least
    ``d(j, j') - reach[j']`` from g, while the term of j' at g is at least
    ``logw[j'] - reach[j']^2 / 2h^2``. Where j's bound lies more than 760 below that, j's term at
    every point probed by j' is below exp(-745), which is 0.0 in float64: it adds nothing to the
    density, exactly, and cannot be its largest term. The terms kept are summed in neighbour order,
    as a dense [J, C] sum over the neighbours would.
    """
    b, j, p = near.shape
    pad = points_rad[0].size
    raw = np.where(nb_valid[:, :, None], near, pad).reshape(b, j * p)
    order = np.argsort(raw, axis=1, kind="stable")
    srt = np.take_along_axis(raw, order, 1)
    first = np.ones(srt.shape, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first &= srt < pad
    uid = np.cumsum(first, axis=1) - 1  # column of every sorted entry
    size = first.sum(axis=1)
    width = max(int(size.max()), 1)
    cand = np.full((b, width), pad, dtype=np.int64)
    qq, pos = np.nonzero(first)
    cand[qq, uid[qq, pos]] = srt[qq, pos]
    col = np.empty_like(uid)
    np.put_along_axis(col, order, uid, axis=1)
    col = col.reshape(b, j, p)  # column in cand of each probed point (padding: unused)
    # (query, j, j') with j's terms possibly non-zero at the points probed by j'
    la, lo, co = nb_rad
    dnn = _haversine_rad(la[:, :, None], lo[:, :, None], co[:, :, None], la[:, None, :], lo[:, None, :], co[:, None, :])
    gap = np.maximum(dnn - reach[:, None, :] - _KM_MARGIN, 0.0)
    floor = logw - inv2h2 * (reach + _KM_MARGIN) ** 2  # [b, J']: a lower bound of the largest term there
    live = (logw[:, :, None] - inv2h2 * gap * gap >= floor[:, None, :] - _NEGLIGIBLE_LOG)
    live &= nb_valid[:, :, None] & nb_valid[:, None, :]
    qi, ji, jp = np.nonzero(live)
    # every (query, point, neighbour) pair they give, once, in (query, point, neighbour) order
    pair = np.zeros(b * width * j, dtype=bool)
    pair[(((qi * width)[:, None] + col[qi, jp]) * j + ji[:, None]).ravel()] = True
    pair = np.flatnonzero(pair)
    jn, flat = pair % j, pair // j  # flat: query * width + column
    q, g = flat // width, cand.ravel()[flat]
    pla, plo, pco = points_rad
    d = _haversine_rad(la[q, jn], lo[q, jn], co[q, jn], pla[g], plo[g], pco[g])
    logk = logw[q, jn] - inv2h2 * d * d
    m = np.full(b * width, -np.inf)
    np.maximum.at(m, flat, logk)
    total = np.zeros(b * width)
    np.add.at(total, flat, np.exp(logk - m[flat]))  # in key order: neighbour order within a point
    with np.errstate(divide="ignore", invalid="ignore"):  # padding columns: -inf + log(0)
        logd = (m + np.log(total)).reshape(b, width)
    return cand, size, np.where(cand < pad, logd, -np.inf)


def _spread(rows: np.ndarray, size: np.ndarray, points_rad, k: int, min_sep_km: float, order: np.ndarray) -> np.ndarray:
    """Greedy selection per query of up to ``k`` of ``rows`` [b, C] (best first, ``size`` real
    ones) at least ``min_sep_km`` apart; positions into ``order``'s columns, [b, <=k]."""
    b, c = rows.shape
    m = min(c, 16 * k)  # the best points only: enough to find k separated ones
    top = np.minimum(rows[:, :m], points_rad[0].size - 1)
    la, lo, co = (a[top] for a in points_rad)
    blocked = np.arange(m)[None, :] >= np.minimum(size, 16 * k)[:, None]  # beyond a query's best min(size, 16k)
    chosen = np.zeros((b, m), dtype=bool)
    count = np.zeros(b, dtype=np.int64)
    for jj in range(m):
        take = np.flatnonzero(~blocked[:, jj] & (count < k))
        if take.size == 0:
            continue
        chosen[take, jj] = True
        count[take] += 1
        # only a taken point's distances to the points after it are ever read: [taken, m - jj - 1]
        d = _haversine_rad(la[take, jj, None], lo[take, jj, None], co[take, jj, None], la[take, jj + 1 :], lo[take, jj + 1 :], co[take, jj + 1 :])
        blocked[take, jj + 1 :] |= d < min_sep_km
    # too few far-apart points among those probed: fill up with the next best, in density order
    rest = np.ones((b, c), dtype=bool)
    rest[:, :m] = ~chosen
    rest &= np.arange(c)[None, :] < size[:, None]
    rest &= np.cumsum(rest, axis=1) <= (k - count)[:, None]
    col = np.arange(c)[None, :]
    key = np.full((b, c), 2 * c, dtype=np.int64)  # chosen first (ascending), then the fill (ascending)
    key[:, :m] = np.where(chosen, col[:, :m], key[:, :m])
    key = np.where(rest, c + col, key)
    pos = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(order, pos, 1)


def _radians(lat, lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latitude, longitude) in radians and the cosine of the latitude, for :func:`_haversine_rad`."""
    la = np.radians(np.asarray(lat, dtype=np.float64))
    return la, np.radians(np.asarray(lon, dtype=np.float64)), np.cos(la)


def _haversine_rad(la1, lo1, cos1, la2, lo2, cos2) -> np.ndarray:
    """:func:`geobuild.geo.sphere.haversine_km` of points prepared by :func:`_radians`: the same
    operations in the same order (so the same bits), without converting each pair's degrees."""
    a = np.sin((la2 - la1) * 0.5) ** 2 + cos1 * cos2 * np.sin((lo2 - lo1) * 0.5) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


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
