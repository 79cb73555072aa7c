"""One contract for every stage: units of work over shards, written atomically, marked done last.

A :class:`Stage` names its units (usually one per shard, ``00000`` ...) and processes one unit at a
time. :func:`run_stage` skips units whose completion marker exists, runs the rest on an executor,
and for each finished unit writes, in this order: the ledger (if any rows), the stats JSON, and the
completion marker. A unit killed half-way leaves no marker, so a relaunch redoes it; outputs are
written under temporary names and renamed into place (:func:`geobuild.runfolder.atomic_path`), so a
half-written output is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import GeobuildError
from .ledger import write_ledger
from .log import get_logger
from .runfolder import RunFolder, atomic_path

log = get_logger("stage")


@dataclass
class UnitResult:
    """What a unit reports: counters for the stats JSON and the ledger rows of its rejects."""

    stats: dict[str, Any] = field(default_factory=dict)
    ledger: list[dict[str, Any]] | None = None


class Stage:
    """Base class for stages. Subclasses are picklable (dataclass configs) and stateless per unit."""

    name: ClassVar[str] = "stage"
    #: resources a unit needs, for executors that schedule them (Ray): {"num_cpus": 1, "num_gpus": 0}
    resources: ClassVar[dict[str, float]] = {"num_cpus": 1}

    def units(self, run: RunFolder) -> list[str]:
        """Deterministic, sorted list of unit names for this run."""
        raise NotImplementedError

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        """Do one unit: write its outputs atomically and return its stats and ledger rows."""
        raise NotImplementedError

    def config(self) -> Any:
        """The configuration recorded in the run's config.yaml under this stage's name."""
        return {}

    def finalize(self, run: RunFolder, summary: "StageSummary") -> None:
        """Called once after every unit succeeded (e.g. write sizes.json, merge stats)."""


#: a resources key for executors that schedule GPUs (Ray): this many GPUs per unit when the cluster
#: has them, else none (and no warning); how ``device: auto`` asks for a GPU
GPU_IF_AVAILABLE = "num_gpus_if_available"


def device_resources(device: str, num_cpus: float = 1.0) -> dict[str, float]:
    """A unit's resources for a stage running on ``device``: one GPU on ``cuda``/``cuda:N``; on
    ``auto`` one GPU if the cluster has any (decided by the executor, see :data:`GPU_IF_AVAILABLE`);
    none otherwise (``cpu``)."""
    res = {"num_cpus": float(num_cpus), "num_gpus": 1.0 if str(device).startswith("cuda") else 0.0}
    if device == "auto":
        res[GPU_IF_AVAILABLE] = 1.0
    return res


def execute_unit(stage: Stage, run: RunFolder, unit: str) -> dict[str, Any]:
    """Run one unit and commit it: ledger, then stats, then the completion marker (last)."""
    t0 = time.time()
    result = stage.process(run, unit)
    if result.ledger is not None:
        write_ledger(run.ledger_path(stage.name, unit), result.ledger)
    stats = dict(result.stats)
    stats.setdefault("unit", unit)
    stats.setdefault("stage", stage.name)
    stats["seconds"] = round(time.time() - t0, 3)
    run.write_json(run.stats_path(stage.name, unit), stats)
    marker = run.marker_path(stage.name, unit)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps({"unit": unit, "finished": time.time()}) + "\n")
    return stats


@dataclass
class StageSummary:
    stage: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def run_stage(
    stage: Stage,
    run: RunFolder,
    executor=None,
    units: list[str] | None = None,
    overwrite: bool = False,
    record_config: bool = True,
    raise_on_failure: bool = True,
) -> StageSummary:
    """Run ``stage`` over ``units`` (default: all), skipping finished ones."""
    from .executors import LocalExecutor

    executor = executor or LocalExecutor(workers=1)
    t0 = time.time()
    if record_config:
        run.check_config(stage.name, stage.config(), overwrite=overwrite)
    all_units = stage.units(run) if units is None else list(units)
    summary = StageSummary(stage=stage.name)
    todo = []
    for u in all_units:
        (summary.skipped if run.is_done(stage.name, u) else todo).append(u)
    if summary.skipped:
        log.info("%s: %d of %d units already done, skipping them", stage.name, len(summary.skipped), len(all_units))
    for unit, outcome in executor.map_units(stage, run, todo):
        if isinstance(outcome, BaseException):
            msg = f"{type(outcome).__name__}: {outcome}"
            summary.failed[unit] = msg
            log.error("%s unit %s failed: %s", stage.name, unit, msg)
            log.debug("".join(traceback.format_exception(outcome)))
        else:
            summary.done.append(unit)
            summary.stats[unit] = outcome
    if not summary.failed:
        stage.finalize(run, summary)
    summary.seconds = time.time() - t0
    if summary.failed and raise_on_failure:
        first = next(iter(summary.failed.items()))
        raise GeobuildError(
            f"{stage.name}: {len(summary.failed)} of {len(todo)} units failed (first: {first[0]}: {first[1]}); "
            "rerun the same command to retry them"
        )
    return summary
