"""GeoRanker's evaluation protocol in geobuild eval, checked against numbers worked out by hand.

Every query sits on the equator at longitude 10 and every candidate on the equator too, so each
WGS-84 geodesic distance is the equatorial arc ``a * |dlon|`` (a = 6378.137 km): 111.3195 km per
degree, where haversine (mean radius 6371.0088 km) gives 111.1951. The rows are built so that each
rule of the protocol changes the result if it is broken:

* q1: image candidate 0 at 0.2246 deg = 25.002 km geodesic (24.974 km haversine, which would count
  at 25 km); image 12 (the 13th) at 0.001 deg and GPS 3 (the 4th) at 0.0001 deg would count at
  1 km if more than 12 + 3 candidates were ranked; GPS candidate 1 at 0.1 deg = 11.13 km is the
  oracle; a GPS candidate comes first in the list, so top-1 retrieval must skip it.
* q2: top-1 at 10 deg = 1113.2 km, the oracle image 1 at 6 deg = 667.9 km.
* q3: three image candidates only (ranked over what it has); no query photo: wrong for the ranker,
  still scored for top-1 retrieval (111.3 km) and the oracle (0.005 deg = 0.557 km).
* q4 has no candidate, q5 no valid location, q6 was sharded but never mined: wrong for every row.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("datasets")
pytest.importorskip("pyproj")

from typer.testing import CliRunner  # noqa: E402

from _ranker_fixture import make_dataset, write_tar  # noqa: E402
from geobuild.cli import app  # noqa: E402
from geobuild.core.errors import GeobuildError  # noqa: E402
from geobuild.core.ledger import write_ledger  # noqa: E402
from geobuild.ranker.data import GroupSpec, groups_from_rows  # noqa: E402
from geobuild.ranker.evaluate import report  # noqa: E402
from geobuild.ranker.protocol import GEORANKER  # noqa: E402

KM_PER_DEG = 6378.137 * math.pi / 180.0  # equatorial arc: the geodesic along the equator
LON0 = 10.0
T = (1, 25, 200, 750, 2500)


def _row(key, cands, lat=0.0, lon=LON0):
    """A candidates row: ``cands`` = [(source, dlon, gallery key or None)] in list order."""
    ranks, seen = [], {}
    for s, _, _ in cands:
        ranks.append(seen.get(s, 0))
        seen[s] = ranks[-1] + 1
    clon = [LON0 + d for _, d, _ in cands]
    hav = [6371.0088 * math.radians(abs(d)) for _, d, _ in cands]  # what a haversine distances stage stores
    return {
        "key": key, "id": f"{key}.jpg", "shard": "00000", "lat": lat, "lon": lon,
        "cand_source": [s for s, _, _ in cands], "cand_key": [k for _, _, k in cands],
        "cand_id": [k or f"gps:{i}" for i, (_, _, k) in enumerate(cands)],
        "cand_lat": [0.0] * len(cands), "cand_lon": clon, "cand_rank": ranks,
        "cand_texts": [["c", "s", "x"]] * len(cands), "cand_dist_km": hav,
    }


def hand_rows():
    q1 = ([("gps", 3.0, None)] + [("image", 0.2246, "g00")] + [("image", 5.0, f"g{i:02d}") for i in range(1, 12)]
          + [("image", 0.001, "g12"), ("image", 0.001, "g13"), ("gps", 0.1, None), ("gps", 2.0, None), ("gps", 0.0001, None)])
    q2 = ([("image", 10.0, "g20"), ("image", 6.0, "g21")] + [("image", 30.0, f"g{i:02d}") for i in range(22, 32)]
          + [("gps", -25.0, None)])
    q3 = [("image", 1.0, "g40"), ("image", 0.005, "g41"), ("image", 20.0, "g42")]
    return [_row("q1", q1), _row("q2", q2), _row("q3", q3), _row("q4", []), _row("q5", q3[:1], lat=0.0, lon=0.0)]


# hand-worked errors (km) per row under the protocol: q1, q2, q3, then q4, q5, q6 (wrong: inf)
TOP1 = [0.2246 * KM_PER_DEG, 10.0 * KM_PER_DEG, 1.0 * KM_PER_DEG]  # 25.002, 1113.2, 111.3
ORACLE = [0.1 * KM_PER_DEG, 6.0 * KM_PER_DEG, 0.005 * KM_PER_DEG]  # 11.13, 667.9, 0.557
N_QUERIES = 6


def _acc(errors):
    e = np.array(list(errors) + [np.inf] * (N_QUERIES - len(errors)))
    return [100.0 * np.sum(e < t) / N_QUERIES for t in T]


def test_georanker_protocol_by_hand():
    assert TOP1[0] > 25.0 > 6371.0088 * math.radians(0.2246)  # the case that tells geodesic from haversine
    spec = GroupSpec(quota=GEORANKER.quota, pad=True, distance="geodesic")
    groups = groups_from_rows(hand_rows(), spec, "hand")
    assert groups.group_size == 15 and len(groups) == 3
    assert groups.skipped == {"no_candidates": 1, "bad_query": 1}
    assert groups.mask.sum(1).tolist() == [15, 13, 3]
    # ranker picks: q1 image 0 (position 0 of the group), q2 image 1; q3 has no query photo
    scores = np.zeros((3, 15), dtype=np.float32)
    scores[0, 0] = 1.0
    scores[1, 1] = 1.0
    res = report(groups, scores, protocol=GEORANKER, evaluated=np.array([True, True, False]), missing=3)
    rows = res["rows"]
    # top-1: 25.002, 1113.2, 111.3 -> <200: q1, q3; <2500: all three of 6
    assert [rows["top-1 retrieval"][f"acc@{t}km"] for t in T] == pytest.approx([0.0, 0.0, 100 / 3, 100 / 3, 50.0])
    assert [rows["top-1 retrieval"][f"acc@{t}km"] for t in T] == pytest.approx(_acc(TOP1))
    # oracle: 11.13, 667.9, 0.557 -> <1: q3; <25: q1, q3; <750: all three
    assert [rows["oracle"][f"acc@{t}km"] for t in T] == pytest.approx([100 / 6, 100 / 3, 100 / 3, 50.0, 50.0])
    # ranker: 25.002, 667.9, wrong -> <200: q1; <750: q1, q2
    assert [rows["ranker"][f"acc@{t}km"] for t in T] == pytest.approx([0.0, 0.0, 100 / 6, 100 / 3, 100 / 3])
    assert all(r["n"] == N_QUERIES for r in rows.values())
    assert rows["top-1 retrieval"]["median_km"] == math.inf  # four of six errors are at least 1113 km / wrong
    assert res["protocol"]["name"] == "georanker" and res["protocol"]["comparison"] == "<"
    assert res["protocol"]["distance"] == "geodesic" and res["protocol"]["candidates"] == {"image": 12, "gps": 3}
    assert res["protocol"]["not_evaluated_reasons"] == {"no_candidates": 1, "bad_query": 1, "query_photo_missing": 1}
    assert res["info"]["queries"] == 6 and res["info"]["not_evaluated"] == 4
    # the same rows with the dataset's haversine distances and no quota count q1's top-1 at 25 km
    # and q1's 13th image candidate at 1 km: the protocol's rules are what the numbers above show
    loose = groups_from_rows(hand_rows(), GroupSpec(group_size=3, sources=("image", "gps"), select="order", pad=True), "loose")
    assert loose.retrieval_km[0] < 25.0
    full = groups_from_rows(hand_rows(), GroupSpec(group_size=18, sources=("image", "gps"), select="order", pad=True,
                                                   distance="geodesic"), "full")
    assert full.dists[0][full.mask[0]].min() < 1.0


def _write_run(root, rows, rng):
    import pyarrow as pa
    import pyarrow.parquet as pq

    gallery = [{"key": k, "region": int(i % 6), "lat": 0.0, "lon": LON0}
               for i, k in enumerate(sorted({k for r in rows for k in r["cand_key"] if k}))]
    write_tar(root / "gallery" / "shards" / "00000.tar", gallery, rng)
    run = root / "queries"
    write_tar(run / "shards" / "00000.tar", [{"key": k, "region": 0, "lat": 0.0, "lon": LON0} for k in ("q1", "q2")], rng)
    (run / "candidates").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([dict(r, cand_key=[k or "" for k in r["cand_key"]]) for r in rows]),
                   run / "candidates" / "00000.parquet")
    ok = [{"key": f"q{i}", "id": f"q{i}.jpg", "status": "ok", "error_message": None} for i in range(1, 7)]
    write_ledger(run / "ledger" / "shard" / "00000.parquet",
                 ok + [{"key": "q7", "id": "q7.jpg", "status": "no_metadata", "error_message": "no row"}])
    return root / "gallery", run


def test_eval_cli_georanker_protocol(tmp_path):
    pub = make_dataset(tmp_path / "pub", n_train=48, n_val=8)
    ckpt = tmp_path / "ckpt"
    res = CliRunner().invoke(app, [
        "train-ranker", "--data", str(pub), "--out", str(ckpt), "--epochs", "1", "--encoder", "thumbnail:4",
        "--group-size", "6", "--batch-size", "16", "--d-model", "16", "--layers", "1", "--val-split", "none"])
    assert res.exit_code == 0, res.output
    gal, run = _write_run(tmp_path / "bench", hand_rows(), np.random.default_rng(0))
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt), "--run", str(run), "--gallery", str(gal),
                                   "--protocol", "georanker", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "protocol georanker" in res.output and "12 retrieval" in res.output
    result = json.loads((out / "eval.json").read_text())
    rows = result["rows"]
    assert [rows["top-1 retrieval"][f"acc@{t}km"] for t in T] == pytest.approx(_acc(TOP1))
    assert [rows["oracle"][f"acc@{t}km"] for t in T] == pytest.approx(_acc(ORACLE))
    assert all(r["n"] == N_QUERIES for r in rows.values())
    # the ranker scores q1 and q2 only: never below 1 km there; q1's candidates are all < 2500 km
    assert rows["ranker"]["acc@1km"] == 0.0
    assert 100 / 6 - 1e-9 <= rows["ranker"]["acc@2500km"] <= 100 / 3 + 1e-9
    assert result["protocol"]["name"] == "georanker"
    assert result["protocol"]["not_evaluated_reasons"] == {
        "no_candidates": 1, "bad_query": 1, "not_mined": 1, "query_photo_missing": 1}
    assert result["info"]["protocol"] == "georanker" and result["info"]["queries"] == 6
    with open(out / "eval.csv") as f:
        assert {r["protocol"] for r in csv.DictReader(f)} == {"georanker"}
    # GeoRanker's protocol counts strictly below: --le is refused (a GeobuildError: one error line)
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt), "--run", str(run), "--protocol", "georanker", "--le"])
    assert isinstance(res.exception, GeobuildError) and "strictly below" in str(res.exception)
    # the default protocol says so too
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt), "--run", str(run), "--gallery", str(gal),
                                   "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g.json").read_text())["protocol"]["name"] == "groups"
