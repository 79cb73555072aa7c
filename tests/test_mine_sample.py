"""The mine stage on the real IM2GPS3K sample (a slice of it), EfficientNet-Lite0 embeddings."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

N_PHOTOS = 400


def _cli(*args: str) -> None:
    env = dict(os.environ, GEOBUILD_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "geobuild", *args], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_mine_real_sample_slice(shared, tmp_path):
    import geobuild.encoders.location as le
    from geobuild.stages.mine.quality import oracle_recall
    from geobuild.core.runfolder import RunFolder
    from geobuild.artifacts.candidates import read_candidates

    data = shared / "data" / "im2gps3k"
    meta = pd.read_csv(data / "im2gps3k_places365.csv").head(N_PHOTOS)
    csv = tmp_path / "slice.csv"
    meta.to_csv(csv, index=False)
    # GPS gallery: every 10th point of GeoCLIP's 100K gallery keeps the test short
    gps = pd.read_csv(le.geoclip_gallery_csv()).iloc[::10]
    gps.to_csv(tmp_path / "gps.csv", index=False)
    run = tmp_path / "run"
    _cli("shard", "--out", str(run), "--format", "im2gps3k", "--images", str(data / "im2gps3ktest.zip"),
         "--metadata", str(csv), "-n", "100")
    _cli("embed", "--run", str(run), "--model", "efficientnet-lite0")
    _cli("index", "--run", str(run), "--gps-gallery", str(tmp_path / "gps.csv"))
    # band points asked for explicitly (the default is none: they leak the true location)
    _cli("mine", "--run", str(run), "--exclude-same-author", "--k-image", "10", "--negatives", "near=2,regional=2,far=2")
    rf = RunFolder(run)
    units = rf.done_units("mine")
    assert len(units) == 4
    tables = [read_candidates(rf, u) for u in units]
    n_ledger = sum(len(pd.read_parquet(rf.ledger_path("mine", u))) for u in units if rf.ledger_path("mine", u).exists())
    assert sum(t.num_rows for t in tables) + n_ledger == N_PHOTOS
    df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    ids = pd.read_parquet(rf.path("index", "ids.parquet")).set_index("key")
    for _, r in df.iterrows():
        img = [k for k, s in zip(r["cand_key"], r["cand_source"]) if s == "image"]
        assert len(img) == 10 and r["key"] not in img
        if r["author"]:
            assert not (ids.loc[img, "author"] == r["author"]).any()
        assert r["n_gps"] == 10 and r["n_negative"] >= 4
    import pyarrow as pa

    rec = oracle_recall(pa.concat_tables(tables))
    for t in ("acc@25km", "acc@750km", "acc@2500km"):
        assert rec["all"][t] >= rec["image+gps"][t] >= rec["image"][t] >= rec["top1_image"][t]
    assert rec["all"]["acc@2500km"] >= 0.98  # near/regional band negatives are within 750 km
    assert (df["texts"].map(len) > 0).mean() > 0.95  # photos on land or near a GeoNames place
    assert rec["image"]["acc@2500km"] > rec["top1_image"]["acc@2500km"]
    _cli("export", "georanker", "--run", str(run), "--out", str(tmp_path / "gr"), "--candidates", "10")
    gr = pd.read_parquet(tmp_path / "gr" / "GeoRanking.parquet")
    n_left = len(pd.read_parquet(tmp_path / "gr" / "ledger.parquet"))
    assert len(gr) + n_left == len(df) and all(len(x) == 11 for x in gr["ref_gps"])
    assert np.all([row[0] == i for row, i in zip(gr["ref_img_id"], gr["img_id"])])
    assert not any(i.startswith("gps:") for row in gr["ref_img_id"] for i in row)  # photos only, never band/GPS points
