"""GeoRanker's trainer's reads of one GeoRanking row, as assertions (shared by the export and publish tests)."""

from __future__ import annotations

from geobuild.geo.sphere import haversine_km
from geobuild.artifacts.georanking import negative_example_texts

GROUP_SIZE = 7  # the trainer skips entry 0 and ranks entries 1..GROUP_SIZE
TAIL = 5  # ... and shows the last TAIL entries as negative-example text


def check_georanker_row(row: dict, query: tuple[float, float] | None = None, close_and_far: bool = False,
                        candidates: list[tuple[str, float, float, list[str]]] | None = None) -> None:
    """Assert ``row`` satisfies exactly GeoRanker's reads; ``query``: the query's own (lat, lon);
    ``close_and_far``: the ranked group must hold a location < 25 km and one > 750 km from the query;
    ``candidates``: the (id, lat, lon, texts) the row must hold at entries 1..n, in order, taken by
    the caller from the mined candidates (not from the row)."""
    n = len(row["ref_gps"])
    assert len(row["ref_img_id"]) == n == len(row["ref_texts"])
    assert n >= 1 + GROUP_SIZE + TAIL, n  # the tail (last TAIL entries) does not overlap entries 1..GROUP_SIZE
    # entry 0 is the query's own hit
    assert row["ref_img_id"][0] == row["img_id"]
    assert row["ref_gps"][0] == row["gps"]
    lat, lon = row["gps"]
    assert -90 <= lat <= 90 and -180 <= lon <= 180
    if query is not None:
        assert [lat, lon] == [query[0], query[1]]
    group = list(zip(row["ref_gps"][1 : GROUP_SIZE + 1], row["ref_img_id"][1 : GROUP_SIZE + 1]))
    assert len(group) == GROUP_SIZE and all(len(g) == 2 for g, _ in group)
    assert row["img_id"] not in [i for _, i in group]
    assert all(isinstance(t, str) for texts in row["ref_texts"] for t in texts)
    if close_and_far:
        d = [float(haversine_km(lat, lon, g[0], g[1])) for g, _ in group]
        assert min(d) < 25 and max(d) > 750, d
    if candidates is not None:
        assert len(candidates) == n - 1
        assert row["ref_img_id"][1:] == [c[0] for c in candidates]
        assert row["ref_gps"][1:] == [[c[1], c[2]] for c in candidates]
        assert row["ref_texts"][1:] == [list(c[3]) for c in candidates]
        # the trainer's negative examples: the last TAIL candidates, as formats.md spells the text
        expected = [f"latitude: {la}, longitude: {lo}, {' '.join(t)}" for _, la, lo, t in candidates[-TAIL:]]
        assert negative_example_texts(row) == expected
    texts = negative_example_texts(row)
    assert len(texts) == TAIL and all(t.startswith("latitude: ") for t in texts)

