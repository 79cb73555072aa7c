"""The batched kde GPS scorer against straightforward per-query evaluations, on real coordinates:
IM2GPS3K photo locations as image neighbours and GeoCLIP's 100K-point GPS gallery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geobuild.geo.sphere import haversine_km
from geobuild.geo.spatial import PointTree
from geobuild.stages.mine.gps_candidates import kde_candidates

K, PROBE, H, T = 10, 16, 25.0, 0.05


@pytest.fixture(scope="module")
def fixture(shared):
    """(nb_lat, nb_lon, nb_sim, nb_valid, tree): 40 queries x 16 neighbours.

    Each query's neighbours are a real photo, the photos nearest to it (same place or city: their
    probed GPS points overlap) and photos drawn at random from the world (thousands of km away:
    their kernel terms at the others' points are zero). Similarities are seeded; some queries have
    padded (invalid) neighbours, one has none at all.
    """
    from geobuild.encoders.location import geoclip_gallery_csv

    pytest.importorskip("geoclip")
    photos = pd.read_csv(shared / "data" / "im2gps3k" / "im2gps3k_places365.csv")
    lat, lon = photos["LAT"].to_numpy(np.float64), photos["LON"].to_numpy(np.float64)
    gps = pd.read_csv(geoclip_gallery_csv())
    tree = PointTree(gps.iloc[:, 0].to_numpy(np.float64), gps.iloc[:, 1].to_numpy(np.float64))
    rng = np.random.default_rng(7)
    n, j = 40, 16
    nb = np.zeros((n, j), dtype=np.int64)
    for i in range(n):
        c = rng.integers(len(photos))
        close = np.argsort(haversine_km(lat[c], lon[c], lat, lon), kind="stable")[: 10]
        nb[i] = np.r_[close, rng.integers(len(photos), size=j - close.size)]
    sim = np.sort(rng.uniform(0.2, 0.95, (n, j)), axis=1)[:, ::-1].astype(np.float32)
    sim[::5, 1] = sim[::5, 0]  # equal weights too
    valid = np.ones((n, j), dtype=bool)
    valid[3, 5:] = False
    valid[11, ::2] = False
    valid[17] = False
    return lat[nb], lon[nb], sim, valid, tree


def reference(nb_lat, nb_lon, nb_sim, nb_valid, tree, k, min_sep_km):
    """Per query: density = sum_j w_j exp(-d^2 / 2h^2) at every point probed by a neighbour, in
    plain linear space; points by density (ties: lower row), greedily min_sep_km apart among the
    16k densest, then the next best."""
    rows, dens = [], []
    for i in range(nb_lat.shape[0]):
        ok = np.flatnonzero(nb_valid[i])
        if ok.size == 0:
            rows.append([]), dens.append([])
            continue
        e = np.exp((nb_sim[i, ok].astype(np.float64) - nb_sim[i, ok].max()) / T)
        w = e / e.sum()
        probed = set()
        for jj in ok:
            probed.update(tree.nearest([nb_lat[i, jj]], [nb_lon[i, jj]], k=max(PROBE, k))[1][0].tolist())
        pts = sorted(probed)
        density = {g: sum(w[a] * np.exp(-haversine_km(nb_lat[i, jj], nb_lon[i, jj], tree.lat[g], tree.lon[g]) ** 2 / (2 * H * H))
                          for a, jj in enumerate(ok)) for g in pts}
        ranked = sorted(pts, key=lambda g: (-density[g], g))
        if min_sep_km > 0:
            chosen = []
            for g in ranked[: 16 * k]:
                if len(chosen) == k:
                    break
                if all(haversine_km(tree.lat[g], tree.lon[g], tree.lat[c], tree.lon[c]) >= min_sep_km for c in chosen):
                    chosen.append(g)
            ranked = chosen + [g for g in ranked if g not in chosen]
        rows.append(ranked[:k])
        dens.append([density[g] for g in ranked[:k]])
    return rows, dens


def dense_log_density(nb_lat, nb_lon, nb_sim, nb_valid, tree, i, points):
    """log density of query ``i`` at ``points`` with every (neighbour, point) term, log-sum-exp
    over the neighbours in order (no term skipped)."""
    ok = nb_valid[i]
    logw = np.where(nb_valid, nb_sim, -np.inf).astype(np.float64)[i] / T
    logw = logw - logw.max()
    logw = (logw - np.log(np.exp(logw).sum()))[ok]
    d = haversine_km(nb_lat[i, ok][:, None], nb_lon[i, ok][:, None], tree.lat[points][None, :], tree.lon[points][None, :])
    logk = logw[:, None] - (0.5 / H**2) * d * d
    m = logk.max(axis=0)
    return m + np.log(np.exp(logk - m).sum(axis=0))


@pytest.mark.parametrize("min_sep_km", [0.0, 25.0])
def test_kde_matches_a_per_query_reference(fixture, min_sep_km):
    pick = kde_candidates(*fixture, k=K, bandwidth_km=H, temperature=T, probe=PROBE, min_sep_km=min_sep_km)
    rows, dens = reference(*fixture, k=K, min_sep_km=min_sep_km)
    for i, (r, d) in enumerate(zip(rows, dens)):
        assert pick.rows[i, : len(r)].tolist() == r, i
        assert (pick.rows[i, len(r):] == -1).all()
        np.testing.assert_allclose(pick.scores[i, : len(r)], np.asarray(d, dtype=np.float32), rtol=1e-5, atol=0)
    assert (pick.rows[17] == -1).all() and (pick.scores[17] == 0).all()  # no valid neighbour, no candidate


def test_skipped_kernel_terms_leave_the_scores_bytewise_unchanged(fixture):
    """Terms skipped as negligible are exactly 0.0 in float64: same bytes as the full sum."""
    pick = kde_candidates(*fixture, k=K, bandwidth_km=H, temperature=T, probe=PROBE)
    for i in range(pick.rows.shape[0]):
        r = pick.rows[i][pick.rows[i] >= 0]
        if r.size:
            full = np.exp(dense_log_density(*fixture, i, r)).astype(np.float32)
            assert full.tobytes() == pick.scores[i, : r.size].tobytes(), i


def test_batching_does_not_change_the_bytes(fixture):
    picks = [kde_candidates(*fixture, k=K, bandwidth_km=H, temperature=T, min_sep_km=25.0, batch=b) for b in (1, 7, 256)]
    for p in picks[1:]:
        assert p.rows.tobytes() == picks[0].rows.tobytes()
        assert p.scores.tobytes() == picks[0].scores.tobytes()


@pytest.fixture(scope="module")
def banded(fixture):
    """Neighbours around a real photo location at 0-400 km (the distances where one kernel term is
    between e^-60 and e^-20 of another at h = 25 km, so sums absorb some terms and not others),
    in shuffled order, plus some far away; 30 queries x 24 neighbours on GeoCLIP's GPS gallery."""
    from geobuild.geo.spatial import destination

    nb_lat, nb_lon, _, _, tree = fixture
    rng = np.random.default_rng(11)
    n, j = 30, 24
    c_lat = np.repeat(nb_lat[:n, :1], j, axis=1)
    c_lon = np.repeat(nb_lon[:n, :1], j, axis=1)
    km = rng.uniform(0.0, 400.0, (n, j))
    km[:, -4:] = rng.uniform(1000.0, 5000.0, (n, 4))
    lat, lon = destination(c_lat, c_lon, km, rng.uniform(0, 2 * np.pi, (n, j)))
    sim = np.sort(rng.uniform(0.6, 0.9, (n, j)), axis=1)[:, ::-1].astype(np.float32)
    valid = np.ones((n, j), dtype=bool)
    valid[4, ::3] = False
    return lat, lon, sim, valid, tree


@pytest.mark.parametrize("bandwidth_km", [25.0, 60.0])
def test_densities_have_the_dense_sums_bits(banded, bandwidth_km):
    """Every probed point's float64 log density (not only the float32 scores of the top K) equals
    the log-sum-exp over all neighbours in order, bit for bit: the terms skipped as 0.0 or as
    absorbed by the running sum change nothing."""
    from geobuild.stages.mine import gps_candidates as gc

    captured = []
    real = gc._densities

    def spy(*args):
        out = real(*args)
        captured.append(out)
        return out

    gc._densities = spy
    try:
        kde_candidates(*banded, k=K, bandwidth_km=bandwidth_km, temperature=T, probe=PROBE, batch=8)
    finally:
        gc._densities = real
    global H
    h, H = H, bandwidth_km
    try:
        i = 0
        for cand, size, logd in captured:
            for r in range(cand.shape[0]):
                pts = cand[r, : size[r]]
                if pts.size:
                    full = dense_log_density(*banded, i, pts)
                    assert full.tobytes() == logd[r, : size[r]].tobytes(), i
                i += 1
    finally:
        H = h
    assert i == banded[0].shape[0]


def test_min_separation_is_decided_exactly_at_the_edge(fixture):
    """GPS candidates closer than min_sep_km are skipped, ones at exactly min_sep_km are not: the
    chord shortcut hands pairs at the edge to the haversine itself."""
    pick = kde_candidates(*fixture, k=K, bandwidth_km=H, temperature=T, probe=PROBE)
    tree = fixture[4]
    for i in (0, 1, 2):
        a, b = pick.rows[i, 0], pick.rows[i, 1]
        edge = float(haversine_km(tree.lat[a], tree.lon[a], tree.lat[b], tree.lon[b]))
        q = tuple(x[i : i + 1] for x in fixture[:4])
        at = kde_candidates(*q, tree, k=2, bandwidth_km=H, temperature=T, probe=PROBE, min_sep_km=edge)
        above = kde_candidates(*q, tree, k=2, bandwidth_km=H, temperature=T, probe=PROBE, min_sep_km=np.nextafter(edge, np.inf))
        assert at.rows[0].tolist() == [a, b], i
        assert above.rows[0, 0] == a and above.rows[0, 1] != b, i


@pytest.mark.parametrize("km", [[0.0004, 0.0009, 0.0011], [3.0, 7.5, 9.0], [400.0, 900.0, 1500.0]])
def test_min_separation_edge_at_metres_and_at_hundreds_of_km(km):
    """The same exact edge for GPS points a metre apart (where the chord's rounding is relatively
    large) and hundreds of km apart: one neighbour at a real place, points around it."""
    from geobuild.geo.spatial import destination

    lat, lon = destination(np.full(3, 48.8566), np.full(3, 2.3522), np.asarray(km), np.array([0.3, 2.5, 4.4]))
    tree = PointTree(lat, lon)
    a, b = 0, 1  # nearest to the neighbour: densest
    edge = float(haversine_km(lat[a], lon[a], lat[b], lon[b]))
    nb = (np.array([[48.8566]]), np.array([[2.3522]]), np.ones((1, 1), np.float32), np.ones((1, 1), bool))
    at = kde_candidates(*nb, tree, k=2, bandwidth_km=1000.0, temperature=T, probe=3, min_sep_km=edge)
    above = kde_candidates(*nb, tree, k=2, bandwidth_km=1000.0, temperature=T, probe=3, min_sep_km=np.nextafter(edge, np.inf))
    assert at.rows[0].tolist() == [a, b]
    assert above.rows[0].tolist() == [a, 2]  # the third point is farther from the first than the second is
