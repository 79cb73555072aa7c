"""The shared unit mechanism: markers last, skip finished units, config guard, pool executor."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq
import pytest

from geobuild.core.errors import GeobuildError
from geobuild.core.executors import LocalExecutor
from geobuild.core.runfolder import RunFolder, atomic_path
from geobuild.core.stage import Stage, UnitResult
from geobuild.core.runner import run_stage


@dataclass
class CountStage(Stage):
    """Writes units/<u>.txt; fails on units listed in ``fail``."""

    n: int = 4
    fail: tuple[str, ...] = ()
    name = "count"

    def units(self, run):
        return [f"{i:05d}" for i in range(self.n)]

    def config(self):
        return {"n": self.n}

    def process(self, run, unit):
        if unit in self.fail:
            raise RuntimeError(f"boom {unit}")
        out = run.path("units", f"{unit}.txt")
        with atomic_path(out) as tmp:
            tmp.write_text(unit)
        return UnitResult(stats={"samples": 1}, ledger=[{"key": unit, "id": unit, "status": "ok", "error_message": None}])


def test_run_marks_and_skips(tmp_path):
    run = RunFolder(tmp_path / "run")
    s = run_stage(CountStage(), run)
    assert s.done == ["00000", "00001", "00002", "00003"]
    assert run.done_units("count") == s.done
    assert pq.read_table(run.ledger_path("count", "00002")).column("key").to_pylist() == ["00002"]
    again = run_stage(CountStage(), run)
    assert again.done == [] and len(again.skipped) == 4


def test_failed_unit_has_no_marker_and_is_retried_on_rerun(tmp_path):
    run = RunFolder(tmp_path / "run")
    with pytest.raises(GeobuildError, match="1 of 4 units failed"):
        run_stage(CountStage(fail=("00001",)), run)
    assert run.done_units("count") == ["00000", "00002", "00003"]
    assert not run.path("units", "00001.txt").exists()
    s = run_stage(CountStage(), run)
    assert s.done == ["00001"]


def test_changed_config_refused_unless_overwrite(tmp_path):
    run = RunFolder(tmp_path / "run")
    run_stage(CountStage(n=2), run)
    with pytest.raises(GeobuildError, match="different 'count' configuration"):
        run_stage(CountStage(n=3), run)
    s = run_stage(CountStage(n=3), run, overwrite=True)
    assert len(s.done) == 3


def test_process_pool_executor(tmp_path):
    run = RunFolder(tmp_path / "run")
    s = run_stage(CountStage(n=5), run, executor=LocalExecutor(workers=2))
    assert sorted(s.done) == [f"{i:05d}" for i in range(5)]
    assert all(run.path("units", f"{i:05d}.txt").read_text() == f"{i:05d}" for i in range(5))
