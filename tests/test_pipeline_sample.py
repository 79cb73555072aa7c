"""`geobuild run pipelines/sample.yaml` end to end on real IM2GPS3K photos (a 300-row slice of the
metadata, so every stage runs in a few minutes on a laptop; `make sample` runs all 3000). The run is
the session's ``sample_run`` fixture (tests/sample_run.py), which the report test reads too."""

from __future__ import annotations

import json

import pytest

from georanker_reads import check_georanker_row
from sample_run import geobuild

pytestmark = pytest.mark.slow


def test_sample_pipeline_end_to_end(sample_run, tmp_path):
    out, subset, rows, env = sample_run.out, sample_run.subset, sample_run.rows, sample_run.env
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"]
    st = {s["stage"]: s for s in summary["stages"]}
    assert list(st) == ["shard", "embed", "index", "mine", "distances", "publish"]
    assert all(s["status"] == "ok" and s["failed"] == 0 for s in st.values())
    # every photo of the zip (3000 members) is accounted for: 300 shard samples, the other 2700 in the ledger
    assert st["shard"]["samples_out"] == rows
    assert sum(st["shard"]["rejects"].values()) + st["shard"]["samples_out"] == 3000
    assert st["shard"]["rejects"] == {"no_metadata": 2700}
    assert st["embed"]["samples_out"] + sum(st["embed"]["rejects"].values()) == rows
    assert st["mine"]["samples_in"] == st["embed"]["samples_out"]
    mined = st["mine"]["samples_out"]
    assert mined > 0 and st["distances"]["samples_out"] == mined
    assert st["publish"]["samples_out"] == mined

    # the resolved configuration is in the run folder; the published folder loads with datasets
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["embed"]["model"] == "efficientnet-lite0" and cfg["shard"]["metadata"] == str(subset)
    assert yaml.safe_load((out / "pipeline.yaml").read_text())["stages"]["publish"]["to"] == str(out / "publish")
    import datasets

    files = sorted(str(p) for p in (out / "publish" / "dataset" / "candidates").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == mined
    # both configs through the repository's own card; GeoRanker's reads on every row
    dataset_dir = out / "publish" / "dataset"
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    dd = {name: datasets.load_dataset(str(dataset_dir), name, cache_dir=str(tmp_path / "hf")) for name in ("candidates", "georanker")}
    for name in dd:
        assert set(dd[name]) == {"train", "validation"}
        assert {s: dd[name][s].num_rows for s in dd[name]} == manifest["rows"][name]
    # 30 candidates per query (20 image, 10 GPS, no band points by default): none is left out of the georanker config
    assert sum(dd["georanker"][s].num_rows for s in dd["georanker"]) == sum(dd["candidates"][s].num_rows for s in dd["candidates"]) == mined
    near_and_far = 0
    for split in ("train", "validation"):
        queries = {r["id"]: r for r in dd["candidates"][split]}
        assert sorted(dd["georanker"][split]["img_id"]) == sorted(queries)
        for row in dd["georanker"][split]:
            q = queries[row["img_id"]]
            both = {"near", "far"} <= set(q["cand_band"])
            near_and_far += both
            image = sorted((r, i) for i, (s, r) in enumerate(zip(q["cand_source"], q["cand_rank"])) if s == "image")
            cands = [(q["cand_id"][i].replace("/", "_"), q["cand_lat"][i], q["cand_lon"][i],
                          [q[f"cand_{f}"][i] or "" for f in ("city", "state", "country")]) for _, i in image]
            check_georanker_row(row, query=(q["lat"], q["lon"]), close_and_far=both, candidates=cands[: len(row["ref_gps"]) - 1])
    assert near_and_far == 0  # distance-band points (they leak the true location) are off by default

    # a rerun does nothing but report
    r = geobuild(*sample_run.args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert all(s["done"] == 0 and s["skipped"] == s["units"] for s in again["stages"])
