"""The million-vector benchmark's path, at 3,000 vectors: it drives `geobuild index` (IVF-PQ) and
mining end to end and reads their outputs where the stages write them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from geobuild.core.runfolder import RunFolder

from _fixtures_index import write_embeddings

REPO = Path(__file__).resolve().parent.parent


def test_a_small_gallery_runs_the_whole_benchmark(tmp_path):
    source = RunFolder(tmp_path / "source")
    write_embeddings(source, [200, 100], dim=64)
    out = tmp_path / "g.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gallery_1m", "--source", str(source.root), "--work", str(tmp_path / "work"),
         "--vectors", "3000", "--unit-size", "1000", "--queries", "50", "--flat-max", "1000", "--gps-gallery", "none",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    ix, se, mi = res["index"], res["search"], res["mine"]
    assert ix["kind"] == "ivfpq" and ix["ntotal"] == 3000 and ix["gallery_build_seconds"] > 0
    assert ix["gps_encode_seconds"] is None and ix["peak_rss_mib"] > 0
    assert 0.5 < se["recall@10_heldout"] <= 1.0 and se["heldout_queries"] == 50
    assert mi["qps"] > 0 and mi["candidates"] > 0 and mi["subprocess_peak_rss_mib"] > 0
    assert "| mine (defaults, in process) |" in proc.stdout
