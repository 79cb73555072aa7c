"""The data section of the report, accumulated batch by batch over the candidates (bounded memory:
fixed-size grids and histograms, counters keyed by country)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..geo.geocode import reverse_geocode
from ..geo.sphere import THRESHOLDS_KM
from ..stages.mine.quality import GROUPS, oracle_recall
from ..stages.publish.plots import DistanceHistogram

SOURCES: tuple[str, ...] = ("image", "gps", "negative")
#: columns of the candidates files the data section reads
COLUMNS = ["lat", "lon", "cand_source", "cand_rank", "cand_dist_km"]
GRID_DEG = 1.0
NO_COUNTRY = "(no country: sea or far from any town)"


def density_grid() -> np.ndarray:
    return np.zeros((int(180 / GRID_DEG), int(360 / GRID_DEG)), dtype=np.int64)


def add_density(grid: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> None:
    """Count points into ``grid`` (rows from 90°N, columns from 180°W)."""
    h, w = grid.shape
    ok = np.isfinite(lat) & np.isfinite(lon)
    i = np.clip(((90.0 - lat[ok]) / GRID_DEG).astype(np.int64), 0, h - 1)
    j = np.clip(((lon[ok] + 180.0) / GRID_DEG).astype(np.int64), 0, w - 1)
    np.add.at(grid, (i, j), 1)


@dataclass
class PlaceMix:
    """Countries and continents of a set of points (reverse-geocoded), counted batch by batch."""

    countries: Counter = field(default_factory=Counter)
    continents: Counter = field(default_factory=Counter)
    n: int = 0

    def add(self, lat: np.ndarray, lon: np.ndarray) -> None:
        if len(lat) == 0:
            return
        geo = reverse_geocode(lat, lon)
        self.countries.update(c or NO_COUNTRY for c in geo["country"])
        self.continents.update(c or NO_COUNTRY for c in geo["continent"])
        self.n += len(lat)


@dataclass
class DataStats:
    """Everything the data section shows, over all mined queries."""

    queries: int = 0
    density: np.ndarray = field(default_factory=density_grid)
    per_query: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SOURCES})
    hist: dict[str, DistanceHistogram] = field(default_factory=lambda: {s: DistanceHistogram() for s in SOURCES})
    within: dict[str, np.ndarray] = field(default_factory=lambda: {s: np.zeros(len(THRESHOLDS_KM), np.int64) for s in SOURCES})
    recall_hits: dict[str, np.ndarray] = field(default_factory=dict)
    recall_n: int = 0
    places: PlaceMix = field(default_factory=PlaceMix)

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        n = batch.num_rows
        if n == 0:
            return
        lat = batch.column("lat").to_numpy(zero_copy_only=False).astype(np.float64)
        lon = batch.column("lon").to_numpy(zero_copy_only=False).astype(np.float64)
        self.queries += n
        add_density(self.density, lat, lon)
        self.places.add(lat, lon)
        src_col = batch.column("cand_source")
        lengths = pc.list_value_length(src_col).to_numpy(zero_copy_only=False)
        row = np.repeat(np.arange(n), lengths)
        src = np.asarray(pc.list_flatten(src_col).to_numpy(zero_copy_only=False), dtype=object)
        km = pc.list_flatten(batch.column("cand_dist_km")).to_numpy(zero_copy_only=False).astype(np.float64)
        thr = np.asarray(THRESHOLDS_KM)
        for s in SOURCES:
            m = src == s
            self.per_query[s].update(np.bincount(row[m], minlength=n).tolist())
            self.hist[s].add(km[m])
            d = km[m]
            d = d[np.isfinite(d)]
            self.within[s] += (d[:, None] < thr[None, :]).sum(axis=0)
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        recall = oracle_recall(table)
        for g in (*GROUPS, "top1_image"):
            hits = np.array([recall[g][f"acc@{t:g}km"] * n for t in THRESHOLDS_KM])
            self.recall_hits[g] = self.recall_hits.get(g, 0) + np.rint(hits).astype(np.int64)
        self.recall_n += n

    def candidates(self, source: str) -> int:
        return sum(k * v for k, v in self.per_query[source].items())

    def accuracy(self) -> dict[str, list[float]]:
        """Per group (image, gps, image+gps, all, top1_image): share of queries within each threshold."""
        if not self.recall_n:
            return {}
        return {g: (hits / self.recall_n).tolist() for g, hits in self.recall_hits.items()}
