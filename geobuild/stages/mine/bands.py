"""Distance-band negatives: candidates drawn at chosen distances from the query, so a ranking group
can hold both close and distant locations (:mod:`geobuild.georanker` puts a ``near`` and a ``far``
one, when the query has both, in its GeoRanking group).

Default bands (km from the query): ``near`` [0, 25), ``regional`` [25, 750), ``far`` [750, 20040].
For each query and band, target points are drawn uniformly by area in the band's annulus around
the query and snapped to the nearest point of a pool (gallery photos and/or GPS-gallery points); a
snapped point is kept when its true distance lies in the band, it is not the query itself and it
was not taken already. Only the ``near`` band (the one starting at 0 km) falls back, when its draws
come up short, to the query's nearest ``fallback_k`` pool points inside the band; a ``regional`` or
``far`` band keeps what its draws found and the shortfall is counted in ``NegativePick.short``
(the ``negatives_short`` statistic of the mine stage). Draws are seeded by
``(seed, crc32(query key))``, so each query's negatives do not depend on which other queries share
its shard.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ...core.errors import GeobuildError
from ...geo.sphere import EARTH_RADIUS_KM, haversine_km
from ...geo.spatial import PointTree, destination

MAX_KM = float(np.pi * EARTH_RADIUS_KM)  # half the circumference
BAND_NAMES = ("near", "regional", "far")


@dataclass(frozen=True)
class Band:
    name: str
    lo_km: float
    hi_km: float
    count: int

    def contains(self, km: np.ndarray) -> np.ndarray:
        return (km >= self.lo_km) & (km < self.hi_km)


def parse_bands(spec: str, edges_km: tuple[float, float] = (25.0, 750.0)) -> list[Band]:
    """``near=2,regional=2,far=2`` -> bands; ``edges_km`` are the near/regional/far limits."""
    lo_edge, hi_edge = float(edges_km[0]), float(edges_km[1])
    if not 0 < lo_edge < hi_edge < MAX_KM:
        raise GeobuildError(f"--band-edges must be 0 < near/regional < regional/far < {MAX_KM:.0f} km, got {edges_km}")
    limits = {"near": (0.0, lo_edge), "regional": (lo_edge, hi_edge), "far": (hi_edge, MAX_KM + 1.0)}
    counts: dict[str, int] = {}
    for part in (p.strip() for p in (spec or "").split(",")):
        if not part or part.lower() == "none":
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq or name not in limits or not value.strip().isdigit():
            raise GeobuildError(f"--negatives: cannot read '{part}'; use e.g. near=2,regional=2,far=2 (bands: near, regional, far)")
        counts[name] = int(value)
    return [Band(n, *limits[n], counts[n]) for n in BAND_NAMES if counts.get(n, 0) > 0]


def query_rng(seed: int, key: str) -> np.random.Generator:
    """The per-query random generator: depends only on the seed and the query key."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(key).encode())])


@dataclass
class NegativePick:
    """Pool indices (or -1) and their km to the query, per query: lists aligned by entry."""

    index: list[np.ndarray]
    band: list[np.ndarray]
    km: list[np.ndarray]
    short: int  # negatives asked for but not found


class BandSampler:
    """Draw band negatives from a pool of points (``lat``, ``lon``, and their ``key`` for exclusion)."""

    def __init__(self, lat, lon, keys: np.ndarray | None = None, tries: int = 8, fallback_k: int = 64):
        self.tree = PointTree(lat, lon)
        self.keys = keys
        self.tries = int(tries)
        self.fallback_k = int(fallback_k)

    def sample(
        self, qlat, qlon, qkeys, bands: list[Band], seed: int, exclude: list[set[int]] | None = None
    ) -> NegativePick:
        """Negatives for each query, band by band (entries ordered by band, then draw order)."""
        qlat = np.asarray(qlat, dtype=np.float64)
        qlon = np.asarray(qlon, dtype=np.float64)
        n = qlat.size
        empty = NegativePick([np.zeros(0, np.int64)] * n, [np.zeros(0, np.int32)] * n, [np.zeros(0)] * n, 0)
        if not bands or n == 0:
            return empty
        if len(self.tree) == 0:
            empty.short = n * sum(b.count for b in bands)
            return empty
        # targets: per query, per band, count * tries points area-uniform in the annulus
        per_q = sum(b.count * self.tries for b in bands)
        t_lat = np.empty((n, per_q))
        t_lon = np.empty((n, per_q))
        for i in range(n):
            rng = query_rng(seed, qkeys[i])
            col = 0
            for b in bands:
                m = b.count * self.tries
                c_lo, c_hi = np.cos(b.lo_km / EARTH_RADIUS_KM), np.cos(min(b.hi_km, MAX_KM) / EARTH_RADIUS_KM)
                ang = np.arccos(rng.uniform(c_hi, c_lo, m))
                bearing = rng.uniform(0.0, 2 * np.pi, m)
                la, lo = destination(qlat[i], qlon[i], ang * EARTH_RADIUS_KM, bearing)
                t_lat[i, col : col + m] = la
                t_lon[i, col : col + m] = lo
                col += m
        _, snapped = self.tree.nearest(t_lat.ravel(), t_lon.ravel(), k=1)
        snapped = snapped[:, 0].reshape(n, per_q)
        km_all = haversine_km(qlat[:, None], qlon[:, None], self.tree.lat[snapped], self.tree.lon[snapped])
        out_idx, out_band, out_km, short = [], [], [], 0
        for i in range(n):
            taken = set(exclude[i]) if exclude is not None else set()
            idx_i, band_i, km_i = [], [], []
            col = 0
            for bi, b in enumerate(bands):
                m = b.count * self.tries
                cand = snapped[i, col : col + m]
                ckm = km_all[i, col : col + m]
                col += m
                got = self._take(cand, ckm, b, qkeys[i], taken)
                if len(got) < b.count and b.lo_km == 0.0:
                    km_nn, idx_nn = self.tree.nearest(qlat[i : i + 1], qlon[i : i + 1], k=self.fallback_k)
                    got += self._take(idx_nn[0], km_nn[0], b, qkeys[i], taken, need=b.count - len(got))
                short += b.count - len(got)
                for j, k in got:
                    idx_i.append(j)
                    km_i.append(k)
                    band_i.append(bi)
            out_idx.append(np.asarray(idx_i, dtype=np.int64))
            out_band.append(np.asarray(band_i, dtype=np.int32))
            out_km.append(np.asarray(km_i, dtype=np.float64))
        return NegativePick(out_idx, out_band, out_km, short)

    def _take(self, cand, ckm, band: Band, qkey, taken: set[int], need: int | None = None) -> list[tuple[int, float]]:
        need = band.count if need is None else need
        got: list[tuple[int, float]] = []
        for j, k in zip(cand.tolist(), ckm.tolist()):
            if len(got) >= need:
                break
            if j in taken or not (band.lo_km <= k < band.hi_km):
                continue
            if self.keys is not None and self.keys[j] is not None and self.keys[j] == qkey:
                continue
            taken.add(j)
            got.append((j, k))
        return got
