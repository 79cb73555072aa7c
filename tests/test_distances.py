"""The distances stage: correctness against independent formulas, ledger, resume, bad files."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _fixtures_index import candidate_columns, write_candidates
from geobuild.cli import app
from killpoint import run_killed
from geobuild.core.errors import GeobuildError
from geobuild.geo.sphere import EARTH_RADIUS_KM
from geobuild.geo.geodesic import geodesic_km, pairwise_km
from geobuild.core.runfolder import RunFolder

runner = CliRunner()


def _read(run, unit):
    t = pq.read_table(run.path("distances", f"{unit}.parquet"))
    assert t.schema.metadata[b"geobuild.schema"] == b"distances"
    return t.to_pydict()


def test_geodesic_matches_geopy():
    from geopy.distance import geodesic

    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-89, 89, (2, 40))
    lon1, lon2 = rng.uniform(-180, 180, (2, 40))
    # edge cases: same point, antipodes-ish, poles, dateline
    lat1 = np.r_[lat1, 10.0, 0.0, 90.0, 0.0]
    lon1 = np.r_[lon1, 20.0, 0.0, 0.0, 179.9]
    lat2 = np.r_[lat2, 10.0, 0.5, -90.0, 0.0]
    lon2 = np.r_[lon2, 20.0, 179.7, 0.0, -179.9]
    ours = geodesic_km(lat1, lon1, lat2, lon2)
    ref = np.array([geodesic((a, b), (c, d)).km for a, b, c, d in zip(lat1, lon1, lat2, lon2)])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-6)


def test_pairwise_matrix_is_symmetric_with_zero_diagonal():
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-70, 70, (3, 6)), rng.uniform(-180, 180, (3, 6))
    for method in ("haversine", "geodesic"):
        m = pairwise_km(lat, lon, method)
        np.testing.assert_allclose(m, m.transpose(0, 2, 1), atol=1e-6)
        np.testing.assert_allclose(m[:, range(6), range(6)], 0, atol=1e-6)


@pytest.mark.parametrize("method", ["haversine", "geodesic"])
def test_cli_distances_against_independent_formulas(tmp_path, method):
    from geopy.distance import geodesic
    from sklearn.metrics.pairwise import haversine_distances

    run = RunFolder(tmp_path / "run")
    cols = {u: candidate_columns(40 + 5 * i, 7, seed=i, unit=u) for i, u in enumerate(["00000", "00001"])}
    for u, c in cols.items():
        write_candidates(run, u, c)
    res = runner.invoke(app, ["distances", "--run", str(run.root), "--method", method, "--batch-rows", "16"])
    assert res.exit_code == 0, res.output
    for u, c in cols.items():
        out = _read(run, u)
        assert out["key"] == c["key"] and out["id"] == c["id"] and set(out["method"]) == {method}
        assert out["n_candidates"] == [7] * len(c["key"])
        for i in (0, 3, len(c["key"]) - 1):
            pts = np.c_[c["cand_lat"][i], c["cand_lon"][i]]
            q = np.array([[c["lat"][i], c["lon"][i]]])
            if method == "haversine":
                ref_q = haversine_distances(np.radians(q), np.radians(pts))[0] * EARTH_RADIUS_KM
                ref_m = haversine_distances(np.radians(pts)) * EARTH_RADIUS_KM
            else:
                ref_q = np.array([geodesic(q[0], p).km for p in pts])
                ref_m = np.array([[geodesic(a, b).km for b in pts] for a in pts])
            np.testing.assert_allclose(out["query_km"][i], ref_q, rtol=1e-5, atol=1e-2)
            np.testing.assert_allclose(np.reshape(out["matrix_km"][i], (7, 7)), ref_m, rtol=1e-5, atol=1e-2)


def test_bad_rows_to_ledger_and_rows_add_up(tmp_path):
    run = RunFolder(tmp_path / "run")
    c = candidate_columns(30, 5, seed=3)
    c["lat"][2] = 0.0
    c["lon"][2] = 0.0  # query at the (0, 0) placeholder
    c["cand_lat"][5][3] = 91.0  # one candidate out of range
    c["cand_lon"][8] = c["cand_lon"][8][:4]  # lat/lon lists of different lengths
    c["cand_lat"][11], c["cand_lon"][11] = [], []  # no candidates: kept, G = 0
    c["cand_lat"][12] = c["cand_lat"][12][:2] + [float("nan")] + c["cand_lat"][12][3:]
    write_candidates(run, "00000", c)
    res = runner.invoke(app, ["distances", "--run", str(run.root)])
    assert res.exit_code == 0, res.output
    out = _read(run, "00000")
    led = pq.read_table(run.ledger_path("distances", "00000")).to_pandas()
    assert len(out["key"]) + len(led) == 30
    assert dict(zip(led["key"], led["status"])) == {
        c["key"][2]: "bad_gps", c["key"][5]: "bad_candidate_gps", c["key"][8]: "bad_candidates", c["key"][12]: "bad_candidate_gps",
    }
    i11 = out["key"].index(c["key"][11])
    assert out["n_candidates"][i11] == 0 and out["matrix_km"][i11] == []
    assert out["key"] == [k for k in c["key"] if k not in set(led["key"])]  # order kept


def test_null_candidate_lists_are_no_candidates_rows(tmp_path):
    run = RunFolder(tmp_path / "run")
    c = candidate_columns(12, 4, seed=5)
    c["cand_lat"][4] = None
    c["cand_lon"][6] = None
    c["cand_lat"][9], c["cand_lon"][9] = None, None
    # a candidates file whose list columns allow nulls (as another writer may produce): same schema
    # name, version and columns, so the reader accepts it
    import pyarrow as pa
    from geobuild.core.schemas import arrow_schema

    schema = arrow_schema("candidates")
    for name in ("cand_lat", "cand_lon"):
        schema = schema.set(schema.get_field_index(name), schema.field(name).with_nullable(True))
    run.path("candidates").mkdir(parents=True)
    pq.write_table(pa.table(c, schema=schema), run.path("candidates", "00000.parquet"))
    run.marker_path("mine", "00000").parent.mkdir(parents=True)
    run.marker_path("mine", "00000").write_text("{}\n")
    t = pq.read_table(run.path("candidates", "00000.parquet"))
    assert t.column("cand_lat").null_count == 2 and t.column("cand_lon").null_count == 2  # real nulls in the file
    res = runner.invoke(app, ["distances", "--run", str(run.root)])
    assert res.exit_code == 0, res.output
    led = pq.read_table(run.ledger_path("distances", "00000")).to_pylist()
    assert [(r["key"], r["id"], r["status"], r["error_message"]) for r in led] == [
        (c["key"][i], c["id"][i], "no_candidates", "cand_lat/cand_lon is null") for i in (4, 6, 9)]
    out = _read(run, "00000")
    assert out["key"] == [k for i, k in enumerate(c["key"]) if i not in (4, 6, 9)]
    # the rows around the null ones keep their own candidates' distances
    from sklearn.metrics.pairwise import haversine_distances

    for i in (3, 5, 7, 10):
        j = out["key"].index(c["key"][i])
        ref = haversine_distances(np.radians([[c["lat"][i], c["lon"][i]]]), np.radians(np.c_[c["cand_lat"][i], c["cand_lon"][i]]))[0]
        np.testing.assert_allclose(out["query_km"][j], ref * EARTH_RADIUS_KM, rtol=1e-5, atol=1e-2)


def test_shards_selection_and_method_change_refused(tmp_path):
    run = RunFolder(tmp_path / "run")
    for i in range(4):
        write_candidates(run, f"{i:05d}", candidate_columns(5, 3, seed=i, unit=f"{i:05d}"))
    res = runner.invoke(app, ["distances", "--run", str(run.root), "--shards", "{00001..00002}"])
    assert res.exit_code == 0, res.output
    assert run.done_units("distances") == ["00001", "00002"]
    res = runner.invoke(app, ["distances", "--run", str(run.root), "--shards", "0,3"])
    assert run.done_units("distances") == ["00000", "00001", "00002", "00003"]
    res = runner.invoke(app, ["distances", "--run", str(run.root), "--shards", "7"])
    assert isinstance(res.exception, GeobuildError) and "not available" in str(res.exception)
    res = runner.invoke(app, ["distances", "--run", str(run.root), "--method", "geodesic"])
    assert isinstance(res.exception, GeobuildError) and "different 'distances' configuration" in str(res.exception)


def test_corrupt_or_missing_candidates_fail_clearly_others_finish(tmp_path):
    run = RunFolder(tmp_path / "run")
    for i in range(3):
        write_candidates(run, f"{i:05d}", candidate_columns(5, 3, seed=i, unit=f"{i:05d}"))
    run.path("candidates", "00001.parquet").write_bytes(b"PAR1 this is not parquet")
    run.path("candidates", "00002.parquet").unlink()
    r = subprocess.run([sys.executable, "-m", "geobuild", "distances", "--run", str(run.root)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "2 of 3 units failed" in r.stderr and "candidates" in r.stderr
    assert run.done_units("distances") == ["00000"]
    assert not run.path("distances", "00001.parquet").exists()


def test_kill_and_resume_equals_clean_run(tmp_path):
    units = [f"{i:05d}" for i in range(6)]
    cols = {u: candidate_columns(300, 12, seed=i, unit=u) for i, u in enumerate(units)}
    clean, killed = RunFolder(tmp_path / "clean"), RunFolder(tmp_path / "killed")
    for run in (clean, killed):
        for u in units:
            write_candidates(run, u, cols[u])
    args = ["distances", "--method", "geodesic", "--batch-rows", "64", "--run"]
    assert subprocess.run([sys.executable, "-m", "geobuild", *args, str(clean.root)], capture_output=True).returncode == 0

    # SIGKILL once unit 00003's output is written to its temporary file, before it is renamed
    run_killed(signal.SIGKILL, "distances/00003.parquet", 1, [*args, killed.root])
    assert killed.done_units("distances") == units[:3]
    assert not killed.path("distances", "00003.parquet").exists()
    assert len(list(killed.path("distances").glob("00003.parquet.tmp-*"))) == 1
    r = subprocess.run([sys.executable, "-m", "geobuild", *args, str(killed.root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "3 units done, 3 skipped" in r.stderr
    assert killed.done_units("distances") == units
    for u in units:
        a = pq.read_table(clean.path("distances", f"{u}.parquet"))
        b = pq.read_table(killed.path("distances", f"{u}.parquet"))
        assert a.equals(b), u
    assert not list(killed.path("distances").glob("*.tmp-*"))
