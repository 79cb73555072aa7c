"""Distances between many coordinate pairs at once: haversine (numpy) or WGS-84 geodesic (pyproj).

GeoRanker computes its distances with ``geopy.distance.geodesic`` one pair at a time; the
geodesic method here gives the same WGS-84 ellipsoidal distances (Karney's algorithm in PROJ's
``geod_inverse``) vectorised over arrays, and haversine uses the mean Earth radius.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..core.errors import GeobuildError, require
from .sphere import EARTH_RADIUS_KM, haversine_km

METHODS = ("haversine", "geodesic")


@lru_cache(maxsize=1)
def _geod():
    pyproj = require("pyproj", "geo")
    return pyproj.Geod(ellps="WGS84")


def geodesic_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Element-wise (broadcasting) WGS-84 geodesic distance in km; inputs in degrees."""
    lat1, lon1, lat2, lon2 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (lat1, lon1, lat2, lon2)))
    shape = lat1.shape
    _, _, dist_m = _geod().inv(lon1.ravel(), lat1.ravel(), lon2.ravel(), lat2.ravel())
    return (np.asarray(dist_m, dtype=np.float64) / 1000.0).reshape(shape)


def distance_km(lat1, lon1, lat2, lon2, method: str = "haversine") -> np.ndarray:
    """Element-wise distance in km with ``method`` (haversine or geodesic)."""
    if method == "haversine":
        return haversine_km(lat1, lon1, lat2, lon2)
    if method == "geodesic":
        return geodesic_km(lat1, lon1, lat2, lon2)
    raise GeobuildError(f"unknown distance method '{method}' (choose haversine or geodesic)")


def _haversine_pairwise(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Haversine for all pairs within each group via unit vectors: the haversine term
    sin^2(dlat/2) + cos(lat1) cos(lat2) sin^2(dlon/2) equals (chord/2)^2, so the trigonometry is
    done once per point (G per group) instead of once per pair (G^2)."""
    phi, lam = np.radians(lat), np.radians(lon)
    cphi = np.cos(phi)
    comps = (cphi * np.cos(lam), cphi * np.sin(lam), np.sin(phi))
    chord2 = np.zeros(lat.shape + (lat.shape[-1],), dtype=np.float64)
    for c in comps:
        diff = c[:, :, None] - c[:, None, :]
        chord2 += diff * diff
    half = np.sqrt(chord2, out=chord2)
    half *= 0.5
    np.clip(half, 0.0, 1.0, out=half)
    return np.multiply(np.arcsin(half, out=half), 2.0 * EARTH_RADIUS_KM, out=half)


def pairwise_km(lat: np.ndarray, lon: np.ndarray, method: str = "haversine") -> np.ndarray:
    """Candidate x candidate distances for a batch of groups.

    ``lat``/``lon`` are [R, G] (R groups of G points); returns [R, G, G] km. Geodesic distances are
    computed once per unordered pair (i < j) and mirrored; the diagonal is 0.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if method == "haversine":
        return _haversine_pairwise(lat, lon)
    r, g = lat.shape
    out = np.zeros((r, g, g), dtype=np.float64)
    if g < 2:
        return out
    iu, ju = np.triu_indices(g, k=1)
    d = distance_km(lat[:, iu], lon[:, iu], lat[:, ju], lon[:, ju], method)
    out[:, iu, ju] = d
    out[:, ju, iu] = d
    return out
