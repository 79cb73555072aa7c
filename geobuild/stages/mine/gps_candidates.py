"""GPS candidates: top points of the GPS gallery for each query, by one of two scorers.

``kde`` (any encoder): a similarity-weighted Gaussian kernel density of the query's image
neighbours' locations, evaluated at GPS-gallery points near those neighbours::

    density(g) = sum_j w_j exp(-d(g, n_j)^2 / (2 h^2)),   w = softmax(sim / T)

with ``h`` the bandwidth in km and ``T`` the similarity temperature. Only the ``probe`` nearest
gallery points of every neighbour are evaluated (the kernel is negligible elsewhere), so the cost
does not grow with the GPS gallery. The score stored is the density (weights sum to 1). Queries
are scored in batches with numpy; a (neighbour, point) term is left out only when triangle-
inequality bounds show it cannot change the float64 sum (it is 0.0, or under half an ulp of the
sum it is added to), and the kept terms are summed in neighbour order, so the densities are
bitwise those of the full sum.

``geoclip`` (open_clip ViT-L-14 with OpenAI weights only): GeoCLIP's image head, an MLP read
directly from the ``geoclip`` wheel (``weights/image_encoder_mlp_weights.pth``), maps the query's
CLIP image embedding into GeoCLIP's space; scores are GeoCLIP's softmax over the GPS gallery's
location features (``exp(logit_scale) * cos``). GeoCLIP's image backbone is never built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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
#: queries per kde batch: bounds the per-batch work arrays (up to about 1 MB per query: 32 queries
#: peaked at +30 MB, 64 at +60 MB and 256 at +270 MB, mining 200K photos, at the same speed)
KDE_BATCH = 32
#: kernel terms whose log lies this far below the largest are exp(< -745) = 0.0 in float64: skipped
_NEGLIGIBLE_LOG = 760.0
#: a term this far (in log) below one already summed at the same point is under half an ulp of the
#: running sum (2^-54 = e^-37.4), so adding it leaves the sum's bits unchanged: skipped
_ABSORBED_LOG = 40.0
#: km added to distance bounds against rounding in the haversine formula and the chords
_KM_MARGIN = 1e-2
#: band around a distance threshold's chord (relative, and absolute on the unit sphere: rounding
#: in the unit vectors) where the haversine itself decides
_CHORD_TOL = 1e-9
_CHORD_ABS = 4e-15

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
    lat_lon = np.empty(n * j, dtype=np.complex128)  # one sortable value per (lat, lon)
    lat_lon.real, lat_lon.imag = nb_lat.ravel(), nb_lon.ravel()
    points, loc = np.unique(lat_lon, return_inverse=True)
    km, near = tree.nearest(points.real, points.imag, k=probe)  # [U, P]
    loc = loc.reshape(n, j)  # distinct location of each neighbour
    reach = km.max(axis=1)[loc]  # km to a neighbour's farthest probed point
    sim = np.where(nb_valid, nb_sim, -np.inf).astype(np.float64)
    with np.errstate(invalid="ignore"):  # a query without neighbours: all -inf, never read
        logw = sim / float(temperature)
        logw = logw - logw.max(axis=1, keepdims=True)
        logw = logw - np.log(np.exp(logw).sum(axis=1, keepdims=True))
    inv2h2 = 0.5 / float(bandwidth_km) ** 2
    points_rad = _radians(tree.lat, tree.lon)
    locs = _Locations(_radians(points.real, points.imag), near)
    step = max(int(batch), 1)
    for s in range(0, n, step):
        e = min(n, s + step)
        cand, size, logd = _densities(loc[s:e], locs, nb_valid[s:e], logw[s:e], reach[s:e], points_rad, inv2h2)
        order = np.argsort(-logd, axis=1, kind="stable")  # density descending, ties by row (cand ascends); padding last
        if min_sep_km > 0:
            top = _spread(np.take_along_axis(cand, order, 1), size, points_rad, k, min_sep_km, order)
        else:
            top = order[:, :k]
        got = np.arange(top.shape[1])[None, :] < np.minimum(size, k)[:, None]
        rows[s:e, : top.shape[1]] = np.where(got, np.take_along_axis(cand, top, 1), -1)
        scores[s:e, : top.shape[1]] = np.where(got, np.exp(np.take_along_axis(logd, top, 1)), 0.0)
    return GpsPick(rows, scores)


@dataclass
class _Locations:
    """The distinct neighbour locations of a kde call: (lat, lon, cos lat) in radians [U] and
    their probed GPS-gallery rows [U, P]."""

    rad: tuple[np.ndarray, np.ndarray, np.ndarray]
    near: np.ndarray
    xyz: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        la, lo, co = self.rad
        self.xyz = np.stack([co * np.cos(lo), co * np.sin(lo), np.sin(la)], axis=-1)  # unit vectors [U, 3]


def _densities(loc, locs: _Locations, nb_valid, logw, reach, points_rad, inv2h2: float):
    """(cand int64 [b, C], size int64 [b], log density float64 [b, C]) at the distinct probed points.

    ``cand`` holds each query's ``size`` distinct probed rows ascending, padded with ``len(tree)``
    (log density -inf); C is the largest count in the batch.

    Only the kernel terms that can change the float64 sum are computed (see :func:`_live_terms`);
    the terms kept are summed in neighbour order, as a dense [J, C] sum over the neighbours would,
    so the densities have the dense sum's bits.
    """
    near = locs.near[loc]
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
    # (query, j, j'): whether j's terms at the points probed by j' are computed
    up, floor = _term_bounds(locs.xyz[loc], logw, reach, inv2h2)
    live = _live_terms(up, floor) & nb_valid[:, :, None] & nb_valid[:, None, :]
    qi, ji, jp = np.nonzero(live)
    # the distances they need, once per (neighbour location, probing location) block: queries
    # share neighbours, and a distance depends only on the two locations (so it has the same bits)
    n_loc = locs.near.shape[0]
    blocks, block = np.unique(loc[qi, ji] * n_loc + loc[qi, jp], return_inverse=True)
    u, o = blocks // n_loc, blocks % n_loc
    la, lo, co = (a[u][:, None] for a in locs.rad)
    pla, plo, pco = (a[locs.near[o]] for a in points_rad)
    d = _haversine_rad(la, lo, co, pla, plo, pco).ravel()  # [blocks * P]
    block_sq = inv2h2 * d * d
    # every (query, point, neighbour) pair they give, once, in (query, point, neighbour) order,
    # with the position of its distance in the blocks
    key = (((qi * width)[:, None] + col[qi, jp]) * j + ji[:, None]).ravel()
    src = np.empty(b * width * j, dtype=np.int32 if block_sq.size < 2**31 else np.int64)
    src[key] = (block.ravel()[:, None] * p + np.arange(p)).ravel()
    pair = np.zeros(b * width * j, dtype=bool)
    pair[key] = True
    pair = np.flatnonzero(pair)
    flat = pair // j  # query * width + column
    logk = logw.ravel()[flat // width * j + (pair - flat * j)] - block_sq[src[pair]]
    # terms of one point are contiguous: its largest by segment, then the sum in neighbour order
    m = np.full(b * width, -np.inf)
    total = np.zeros(b * width)
    if flat.size:
        start = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
        peak = np.maximum.reduceat(logk, start)
        m[flat[start]] = peak
        np.add.at(total, flat, np.exp(logk - np.repeat(peak, np.diff(np.append(start, flat.size)))))
    with np.errstate(divide="ignore", invalid="ignore"):  # padding columns: -inf + log(0)
        logd = (m + np.log(total)).reshape(b, width)
    return cand, size, np.where(cand < pad, logd, -np.inf)


def _term_bounds(xyz, logw, reach, inv2h2: float) -> tuple[np.ndarray, np.ndarray]:
    """(up [b, J, J'], floor [b, J']): an upper bound of the log kernel term of neighbour j at any
    point probed by neighbour j', and a lower bound of j''s own term there.

    A point g probed by j' lies within ``reach[j']`` of it, so by the triangle inequality j is at
    least ``d(j, j') - reach[j']`` from g; d(j, j') is bounded below by the chord between the two
    (no longer than the arc) of their unit vectors ``xyz`` [b, J, 3], which needs no trigonometry
    (2 - 2 x.y loses precision only below a few metres, well inside ``_KM_MARGIN``).
    """
    dot = np.matmul(xyz, xyz.transpose(0, 2, 1))  # |x - y|^2 = 2 - 2 x.y for unit vectors
    chord = EARTH_RADIUS_KM * np.sqrt(np.maximum(2.0 - 2.0 * dot, 0.0))
    gap = np.maximum(chord - reach[:, None, :] - _KM_MARGIN, 0.0)
    up = logw[:, :, None] - inv2h2 * gap * gap
    floor = logw - inv2h2 * (reach + _KM_MARGIN) ** 2
    return up, floor


def _live_terms(up: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """bool [b, J, J']: j's terms at the points probed by j' are to be computed.

    The densities are sums, in neighbour order, of the terms t_j = exp(logk_j - max). A term is
    left out only when that leaves the float64 sum unchanged, bit for bit:

    - it is 0.0 (``up`` more than 760 below ``floor``: exp(< -745) underflows);
    - j comes after j' and its term is below 2^-54 of j''s (``up`` 40 below ``floor``): the running
      sum already holds t_j' and adding a value under half its ulp rounds back to it;
    - j comes before j', and every term before j' is below 2^-54 / J of j''s: whatever subset of
      them is summed, the sum rounds to exactly t_j' once t_j' is added.

    j''s own term is always kept, so every point keeps its largest term (the ``max``) and the
    term each skip relies on.
    """
    b, j, _ = up.shape
    order = np.arange(j)
    after = order[:, None] > order[None, :]  # [J, J']: j after j'
    live = up >= floor[:, None, :] - _NEGLIGIBLE_LOG
    live &= ~(after[None] & (up < floor[:, None, :] - _ABSORBED_LOG))
    before = after.T
    lead = np.where(before[None], up, -np.inf).max(axis=1)  # [b, J']: the largest bound of a term before j'
    dominant = lead < floor - (_ABSORBED_LOG + np.log(max(j, 1)))
    live &= ~(before[None] & dominant[:, None, :])
    return live


def _spread(rows: np.ndarray, size: np.ndarray, points_rad, k: int, min_sep_km: float, order: np.ndarray) -> np.ndarray:
    """Greedy selection per query of up to ``k`` of ``rows`` [b, C] (best first, ``size`` real
    ones) at least ``min_sep_km`` apart; positions into ``order``'s columns, [b, <=k]."""
    b, c = rows.shape
    m = min(c, 16 * k)  # the best points only: enough to find k separated ones
    top = np.minimum(rows[:, :m], points_rad[0].size - 1)
    la, lo, co = (a[top] for a in points_rad)
    xyz = np.stack([co * np.cos(lo), co * np.sin(lo), np.sin(la)], axis=-1)  # unit vectors [b, m, 3]
    # haversine < min_sep_km is decided by the chord between the unit vectors (monotonic in the arc)
    # where it lies clearly on one side, and by the haversine itself within a hair of the edge
    edge = 2.0 * np.sin(min(min_sep_km / EARTH_RADIUS_KM, np.pi) / 2.0)
    near2 = max(edge * (1.0 - _CHORD_TOL) - _CHORD_ABS, 0.0) ** 2
    far2 = (edge * (1.0 + _CHORD_TOL) + _CHORD_ABS) ** 2
    free = np.arange(m)[None, :] < np.minimum(size, 16 * k)[:, None]  # a query's best min(size, 16k)
    chosen = np.zeros((b, m), dtype=bool)
    # round by round, every query still short of k takes its densest point not within min_sep_km of
    # one it took (the greedy pass in density order, one taken point per query and round)
    active = np.arange(b)
    for _ in range(k):
        active = active[free[active].any(axis=1)]
        if active.size == 0:
            break
        jj = free[active].argmax(axis=1)
        chosen[active, jj] = True
        diff = xyz[active] - xyz[active, jj][:, None]
        chord2 = np.einsum("tik,tik->ti", diff, diff)  # [active, m]
        close = chord2 < near2
        ti, ci = np.nonzero((chord2 >= near2) & (chord2 <= far2))
        if ti.size:
            tk, tj = active[ti], jj[ti]
            d = _haversine_rad(la[tk, tj], lo[tk, tj], co[tk, tj], la[tk, ci], lo[tk, ci], co[tk, ci])
            close[ti, ci] = d < min_sep_km
        close[np.arange(active.size), jj] = True  # taken
        free[active] &= ~close
    count = chosen.sum(axis=1)
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
