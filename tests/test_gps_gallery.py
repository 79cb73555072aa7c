"""The GPS gallery: GeoCLIP's location encoder loaded offline, GeoCLIP's 100K gallery, user CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _fixtures_index import write_embeddings
from geobuild.cli import app
from geobuild.core.errors import GeobuildError
from geobuild.artifacts.gallery import load_gps_gallery
from geobuild.core.runfolder import RunFolder
from geobuild.core.runner import run_stage
from geobuild.stages.index.stage import IndexConfig, IndexStage, read_gps_csv

torch = pytest.importorskip("torch")
pytest.importorskip("geoclip")
runner = CliRunner()


def test_encoder_matches_geoclip_location_encoder():
    """Same features as GeoCLIP's own LocationEncoder + the normalisation of GeoCLIP.forward."""
    from geoclip.model.location_encoder import LocationEncoder

    from geobuild.encoders.location import encode_gps, geoclip_gallery_csv

    pts = pd.read_csv(geoclip_gallery_csv(), nrows=300)
    ours = encode_gps(pts["LAT"].to_numpy(), pts["LON"].to_numpy(), device="cpu", batch_size=128)
    ref_model = LocationEncoder()  # loads the wheel's weights itself
    ref_model.eval()
    with torch.no_grad():
        ref = torch.nn.functional.normalize(ref_model(torch.tensor(pts[["LAT", "LON"]].to_numpy(), dtype=torch.float32)), dim=1)
    assert ours.shape == (300, 512) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # nearby places are more similar than far ones
    near = encode_gps([48.85, 48.86, -33.9], [2.35, 2.36, 151.2], device="cpu")
    assert near[0] @ near[1] > near[0] @ near[2]


def _csv(tmp_path, text):
    p = tmp_path / "gallery.csv"
    p.write_text(text)
    return p


def test_user_csv_bad_rows_go_to_the_ledger(tmp_path):
    p = _csv(
        tmp_path,
        "Latitude,LONGITUDE,name\n"
        "48.85,2.35,paris\n"
        "abc,2.0,text\n"
        "0,0,null island\n"
        "95,10,too north\n"
        "10,-190,too west\n"
        ",5,empty\n"
        "-33.9,151.2,sydney\n",
    )
    lat, lon, ledger = read_gps_csv(p)
    assert lat.tolist() == [48.85, -33.9] and lon.tolist() == [2.35, 151.2]
    assert [r["status"] for r in ledger] == ["bad_value", "zero_gps", "out_of_range", "out_of_range", "bad_value"]
    assert ledger[0]["id"] == "gallery.csv:3"

    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [30], dim=8)
    res = runner.invoke(app, ["index", "--run", str(run.root), "--gps-gallery", str(p), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    gps = load_gps_gallery(run)
    assert gps.lat.tolist() == [48.85, -33.9] and gps.features.shape == (2, 512)
    led = pq.read_table(run.ledger_path("index", "gps")).to_pandas()
    assert len(led) == 5 and len(gps) + len(led) == 7
    s, r = gps.search(np.asarray(gps.features[:1]), 2)
    assert r[0].tolist() == [0, 1]


@pytest.mark.parametrize(
    "text, message",
    [("lat,lon\nfoo,bar\n0,0\n", "is empty: 0 valid rows of 2"), ("lat,lon\n", "is empty: 0 valid rows of 0"),
     ("x,y\n1,2\n", "needs columns lat and lon")],
)
def test_user_csv_unusable(tmp_path, text, message):
    with pytest.raises(GeobuildError, match=message):
        read_gps_csv(_csv(tmp_path, text))


def test_missing_csv_is_a_clear_error(tmp_path):
    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [10], dim=8)
    res = runner.invoke(app, ["index", "--run", str(run.root), "--gps-gallery", str(tmp_path / "nope.csv")])
    assert isinstance(res.exception, GeobuildError) and "not found" in str(res.exception)


@pytest.mark.slow
def test_geoclip_100k_gallery_through_the_stage(tmp_path):
    """Encodes all of GeoCLIP's 100K GPS gallery once (about 15 s on 2 cores)."""
    from geobuild.encoders.location import encode_gps

    run = RunFolder(tmp_path / "run")
    write_embeddings(run, [20], dim=8)
    run_stage(IndexStage(IndexConfig(gps_gallery="geoclip", device="cpu")), run)
    gps = load_gps_gallery(run)
    assert len(gps) == 100_000 and gps.features.shape == (100_000, 512)
    assert gps.info["source"] == "geoclip:coordinates_100K" and gps.info["rejected"] == 0
    idx = np.array([0, 12345, 99999])
    again = encode_gps(gps.lat[idx], gps.lon[idx], device="cpu")
    np.testing.assert_allclose(np.asarray(gps.features[idx]), again, atol=1e-4)
