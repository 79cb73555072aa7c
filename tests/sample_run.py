"""The real-sample run the slow end-to-end tests share: ``geobuild run pipelines/sample.yaml`` on a
300-row slice of IM2GPS3K (real photos, EfficientNet-Lite0), made once per test session."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROWS = 300


@dataclass
class SampleRun:
    out: Path  # the run folder
    subset: Path  # the metadata slice it was made from
    rows: int
    args: list[str]  # the `geobuild ...` arguments that made it (a rerun resumes it)
    env: dict[str, str]


def geobuild(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geobuild", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def sample_run(shared, tmp_path_factory) -> SampleRun:
    base = tmp_path_factory.mktemp("sample")
    src = shared / "data" / "im2gps3k" / "im2gps3k_places365.csv"
    subset = base / "im2gps3k_300.csv"
    with open(src, newline="") as f, open(subset, "w", newline="") as g:
        writer = csv.writer(g)
        for i, row in enumerate(csv.reader(f)):
            if i > ROWS:
                break
            writer.writerow(row)
    env = {**os.environ, "GEOBUILD_SHARED": str(shared), "GEOBUILD_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    out = base / "run"
    args = ["run", "pipelines/sample.yaml", "--out", str(out), "--set", f"shard.metadata={subset}", "--set", "shard.samples_per_shard=100"]
    r = geobuild(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return SampleRun(out=out, subset=subset, rows=ROWS, args=args, env=env)
