"""Shared fixtures: where the real sample data lives, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sample_run import sample_run  # noqa: F401 - the shared real-sample run fixture

# helper modules whose assertions should report their operands like test modules do
pytest.register_assert_rewrite("georanker_reads", "killpoint")

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("GEOBUILD_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if not (d / "data" / "im2gps3k" / "im2gps3ktest.zip").exists():
        if os.environ.get("CI"):  # .ci/run exports CI: there a missing sample is a failure, never a skip
            pytest.fail(f"shared sample data not found under {d} (set GEOBUILD_SHARED)")
        pytest.skip(f"shared sample data not found under {d}")
    return d


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("GEOBUILD_NO_PROGRESS", "1")
