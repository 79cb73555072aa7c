"""Great-circle geometry and the accuracy thresholds geolocalization benchmarks use."""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)
THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
THRESHOLD_NAMES: tuple[str, ...] = ("street", "city", "region", "country", "continent")


def valid_latlon(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """True where (lat, lon) is finite, in range and not the (0, 0) placeholder."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    return ok & ~((lat == 0) & (lon == 0))


def unit_vectors(lat, lon) -> np.ndarray:
    """(lat, lon) in degrees -> 3-D unit vectors on the sphere, shape [..., 3]."""
    lat = np.radians(np.asarray(lat, dtype=np.float64))
    lon = np.radians(np.asarray(lon, dtype=np.float64))
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)], axis=-1)


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Element-wise (broadcasting) haversine distance in km; inputs in degrees."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    dlat = lat2 - lat1
    dlon = lon2 - lon1
    a = np.sin(dlat * 0.5) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin(dlon * 0.5) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def haversine_matrix_km(lat_a, lon_a, lat_b, lon_b) -> np.ndarray:
    """All-pairs haversine distance (len(a) x len(b)) in km."""
    lat_a = np.asarray(lat_a, dtype=np.float64)[:, None]
    lon_a = np.asarray(lon_a, dtype=np.float64)[:, None]
    return haversine_km(lat_a, lon_a, np.asarray(lat_b)[None, :], np.asarray(lon_b)[None, :])


def accuracy_at(errors_km, thresholds=THRESHOLDS_KM, strict: bool = True) -> dict[str, float]:
    """Share of errors below each threshold (strictly below by default, as GeoRanker/G3 count)."""
    err = np.asarray(errors_km, dtype=np.float64)
    out = {}
    for t in thresholds:
        hit = err < t if strict else err <= t
        out[f"acc@{t:g}km"] = float(hit.mean()) if err.size else float("nan")
    return out
