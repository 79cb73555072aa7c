"""End to end on the real IM2GPS3K sample: 2997 samples, 3 orphan images, readable by webdataset and datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shard_helpers import cli  # noqa: E402


@pytest.mark.slow
def test_real_sample_end_to_end(tmp_path, shared, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    run = tmp_path / "sample"
    cli("shard", "--out", str(run), "--format", "im2gps3k", "--images", str(shared / "data/im2gps3k/im2gps3ktest.zip"),
        "--metadata", str(shared / "data/im2gps3k/im2gps3k_places365.csv"), "--workers", "2")
    sizes = json.loads((run / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 2997
    rows = [r for p in sorted((run / "ledger" / "shard").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 3000
    orphans = [r for r in rows if r["status"] != "ok"]
    assert len(orphans) == 3 and {r["status"] for r in orphans} == {"no_metadata"}
    urls = sorted(str(p) for p in (run / "shards").glob("*.tar"))
    assert len(urls) == len(sizes)

    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert len(keys) == 2997 == len(set(keys))
    first = next(iter(wds.WebDataset(urls[:1], shardshuffle=False).decode("pil")))
    assert first["jpg"].mode == "RGB" and {"lat", "lon", "S365_Label"} <= set(first["json"])

    import datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 2997
    assert isinstance(ds[0]["json"]["lat"], float)
