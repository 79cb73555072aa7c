"""Nearest-point search on the sphere: a k-d tree over unit vectors (chord distance is monotonic in
great-circle distance), plus destination points for sampling at a given distance and bearing."""

from __future__ import annotations

import numpy as np

from .sphere import EARTH_RADIUS_KM, haversine_km, unit_vectors


def to_xyz(lat, lon) -> np.ndarray:
    """Unit vectors [n, 3] of degrees ``lat``/``lon`` (flattened)."""
    return unit_vectors(np.ravel(lat), np.ravel(lon))


def destination(lat, lon, dist_km, bearing_rad) -> tuple[np.ndarray, np.ndarray]:
    """Points reached from (lat, lon) after ``dist_km`` along ``bearing_rad`` (broadcasting)."""
    la1 = np.radians(np.asarray(lat, dtype=np.float64))
    lo1 = np.radians(np.asarray(lon, dtype=np.float64))
    d = np.asarray(dist_km, dtype=np.float64) / EARTH_RADIUS_KM
    b = np.asarray(bearing_rad, dtype=np.float64)
    la2 = np.arcsin(np.clip(np.sin(la1) * np.cos(d) + np.cos(la1) * np.sin(d) * np.cos(b), -1, 1))
    lo2 = lo1 + np.arctan2(np.sin(b) * np.sin(d) * np.cos(la1), np.cos(d) - np.sin(la1) * np.sin(la2))
    lon2 = (np.degrees(lo2) + 540.0) % 360.0 - 180.0
    return np.degrees(la2), lon2


class PointTree:
    """Exact nearest neighbours among fixed points on the sphere (scipy cKDTree on unit vectors)."""

    def __init__(self, lat, lon):
        from scipy.spatial import cKDTree

        self.lat = np.asarray(lat, dtype=np.float64).ravel()
        self.lon = np.asarray(lon, dtype=np.float64).ravel()
        self._tree = cKDTree(to_xyz(self.lat, self.lon)) if self.lat.size else None

    def __len__(self) -> int:
        return int(self.lat.size)

    def nearest(self, lat, lon, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(km [n, k], index [n, k]) of the ``k`` nearest points (k clamped to the point count)."""
        lat = np.asarray(lat, dtype=np.float64).ravel()
        lon = np.asarray(lon, dtype=np.float64).ravel()
        k = int(min(k, len(self)))
        if self._tree is None or k <= 0 or lat.size == 0:
            return np.zeros((lat.size, 0)), np.zeros((lat.size, 0), dtype=np.int64)
        _, idx = self._tree.query(to_xyz(lat, lon), k=k)
        idx = np.asarray(idx, dtype=np.int64).reshape(lat.size, k)
        km = haversine_km(lat[:, None], lon[:, None], self.lat[idx], self.lon[idx])
        return km, idx
