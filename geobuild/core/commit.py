"""Commit one unit: its outputs are in place (written atomically by ``process``), then the ledger,
the stats JSON and, last, the completion marker. A unit killed half-way leaves no marker, so a
relaunch redoes it."""

from __future__ import annotations

import json
import time
from typing import Any

from .ledger import write_ledger
from .runfolder import RunFolder, atomic_path
from .stage import Stage, UnitResult


def commit_unit(stage: Stage, run: RunFolder, unit: str, result: UnitResult, seconds: float) -> dict[str, Any]:
    """Write the ledger rows, stats and marker of a processed unit; return its stats."""
    if result.ledger is not None:
        write_ledger(run.ledger_path(stage.name, unit), result.ledger)
    stats = dict(result.stats)
    stats.setdefault("unit", unit)
    stats.setdefault("stage", stage.name)
    stats["seconds"] = round(seconds, 3)
    run.write_json(run.stats_path(stage.name, unit), stats)
    with atomic_path(run.marker_path(stage.name, unit)) as tmp:
        tmp.write_text(json.dumps({"unit": unit, "finished": time.time()}) + "\n")
    return stats


def execute_unit(stage: Stage, run: RunFolder, unit: str) -> dict[str, Any]:
    """Process one unit and commit it."""
    t0 = time.time()
    result = stage.process(run, unit)
    return commit_unit(stage, run, unit, result, time.time() - t0)
