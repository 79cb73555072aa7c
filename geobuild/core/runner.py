"""Run one stage: its rules (hooks), skip what is done, run the rest, record failures with a log."""

from __future__ import annotations

import time
import traceback
from typing import Any

from .errors import GeobuildError
from .executors import LocalExecutor
from .log import get_logger
from .markers import marker_problem, read_marker, stale_input, unit_problem
from .runfolder import RunFolder, atomic_path, remove_stale_temps
from .stage import Stage, StageSummary

log = get_logger("stage")


def unit_log_path(run: RunFolder, stage: str, unit: str):
    """Where a failed unit's traceback is kept: ``RUN/logs/<stage>/<unit>.log``."""
    return run.path("logs", stage, f"{unit}.log")


def _record_failure(run: RunFolder, stage: str, unit: str, exc: BaseException) -> str:
    """Write the unit's traceback to its log file; the one-line message names that file."""
    path = unit_log_path(run, stage, unit)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(traceback.format_exception(exc)))
        where = f" (traceback: {path})"
    except OSError:
        where = ""
    return f"{type(exc).__name__}: {exc}{where}"


def remove_temporaries(stage: Stage, run: RunFolder) -> None:
    """Delete what killed writers left (``*.tmp-<pid>-<rand>`` files and folders) in the run
    folder and the stage's other output folders (:meth:`Stage.output_folders`)."""
    n = sum(remove_stale_temps(d) for d in [run.root, *stage.output_folders(run)])
    if n:
        log.info("%s: removed %d temporary file(s) or folder(s) left by an interrupted run", stage.name, n)


def recheck_done(stage: Stage, run: RunFolder, units: list[str]) -> list[str]:
    """Units whose marker no longer holds: it is unreadable, a recorded output is missing or has
    another size, or an earlier unit it was made from was redone with other bytes. Their markers are removed (one
    log line each), so they are redone. Old-style markers (no outputs recorded) are trusted."""
    redo = []
    for u in units:
        marker = read_marker(run, stage.name, u)
        if marker is None:
            continue
        why = marker_problem(run, stage.name, u) or unit_problem(run, marker)
        if why is None:
            changed = stale_input(run, marker)
            why = f"its input {changed} was redone with other bytes" if changed else None
        if why:
            log.warning("%s: redoing unit %s: %s", stage.name, u, why)
            run.unmark(stage.name, u)
            redo.append(u)
    return redo


def run_stage(
    stage: Stage,
    run: RunFolder,
    executor: Any = None,
    units: list[str] | None = None,
    overwrite: bool = False,
    record_config: bool = True,
    raise_on_failure: bool = True,
    checked: bool = False,
) -> StageSummary:
    """Run ``stage`` over ``units`` (default: all), skipping finished ones.

    The order is the same for every caller: ``preflight`` -> ``check_inputs`` (both skipped when
    the caller ran them: ``checked``) -> record the configuration (a changed
    one is refused unless ``overwrite``; a reset calls ``on_reset``) -> remove temporaries ->
    ``prepare`` -> recheck the markers (:func:`recheck_done`) -> the units not done ->
    ``finalize`` -> ``after``.
    """
    executor = executor or LocalExecutor(workers=1)
    t0 = time.time()
    if not checked:
        stage.preflight(run, overwrite=overwrite)
        stage.check_inputs(run, overwrite=overwrite)
    if record_config and run.check_config(stage.name, stage.config(), overwrite=overwrite, inputs=stage.input_paths()):
        stage.on_reset(run)
    remove_temporaries(stage, run)
    stage.prepare(run)
    all_units = stage.units(run) if units is None else list(units)
    recheck_done(stage, run, all_units)
    summary = StageSummary(stage=stage.name)
    todo = []
    for u in all_units:
        (summary.skipped if run.is_done(stage.name, u) else todo).append(u)
    if summary.skipped:
        log.info("%s: %d of %d units already done, skipping them", stage.name, len(summary.skipped), len(all_units))
    for unit, outcome in stage.run_units(run, executor, todo):
        if isinstance(outcome, BaseException):
            msg = _record_failure(run, stage.name, unit, outcome)
            summary.failed[unit] = msg
            log.error("%s unit %s failed: %s", stage.name, unit, msg)
        else:
            summary.done.append(unit)
            summary.stats[unit] = outcome
    if not summary.failed:
        stage.finalize(run, summary)
        stage.after(run, summary)
    summary.seconds = time.time() - t0
    if summary.failed and raise_on_failure:
        first = next(iter(summary.failed.items()))
        raise GeobuildError(
            f"{stage.name}: {len(summary.failed)} of {len(todo)} units failed (first: {first[0]}: {first[1]}); "
            "rerun the same command to retry them"
        )
    return summary
