"""Commit one unit: its outputs are in place (written atomically by ``process``), then the ledger,
the stats JSON and, last, the completion marker, which records every output (path, size, content
hash) and the earlier units it was made from (see :mod:`geobuild.core.markers`). A unit killed
half-way leaves no marker, so a relaunch redoes it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .ledger import write_ledger
from .markers import input_digests, output_records, write_marker
from .runfolder import RunFolder, recording_writes
from .stage import Stage, UnitResult


def commit_unit(stage: Stage, run: RunFolder, unit: str, result: UnitResult, seconds: float,
                outputs: list[Path] | None = None) -> dict[str, Any]:
    """Write the ledger rows, stats and marker of a processed unit; return its stats."""
    if result.ledger is not None:
        write_ledger(run.ledger_path(stage.name, unit), result.ledger)
    stats = dict(result.stats)
    stats.setdefault("unit", unit)
    stats.setdefault("stage", stage.name)
    stats["seconds"] = round(seconds, 3)
    run.write_json(run.stats_path(stage.name, unit), stats)
    write_marker(run, stage.name, unit, output_records(run, outputs or []), input_digests(run, stage.depends_on(run, unit)))
    return stats


def execute_unit(stage: Stage, run: RunFolder, unit: str) -> dict[str, Any]:
    """Process one unit (recording the files it writes) and commit it."""
    t0 = time.time()
    with recording_writes() as written:
        result = stage.process(run, unit)
    return commit_unit(stage, run, unit, result, time.time() - t0, written)
