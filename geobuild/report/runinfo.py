"""The run section of the report: every stage's units, samples in and out, seconds, rejects by
reason with example ids and messages, and the resolved configuration without local paths.

The per-stage numbers are the ones ``geobuild run`` prints (:func:`geobuild.pipeline.report.fill_report`);
wall seconds and the stage's status come from ``summary.json`` when the run was made by ``geobuild run``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..core.ledger import OK
from ..core.runfolder import TMP_MARK, RunFolder
from ..pipeline.report import StageReport, fill_report
from ..stages import STAGES

EXAMPLES_PER_REASON = 3


@dataclass
class StageRow:
    """One stage of the run as the report shows it."""

    report: StageReport
    wall_seconds: float | None
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def stage_names(run: RunFolder, saved: list[dict[str, Any]]) -> list[str]:
    """Stages in pipeline order: those of ``summary.json``, then known stages with finished units,
    then any other stage with finished units (a ``uses:`` stage run alone)."""
    names = [s["stage"] for s in saved if "stage" in s]
    done_dir = run.path("done")
    found = sorted(p.name for p in done_dir.iterdir() if p.is_dir()) if done_dir.is_dir() else []
    for name in [*STAGES, *found]:
        if name not in names and run.done_units(name):
            names.append(name)
    return names


def saved_summary(run: RunFolder) -> dict[str, Any]:
    """``summary.json`` of the last ``geobuild run`` ({} when absent or unreadable)."""
    p = run.path("summary.json")
    try:
        doc = json.loads(p.read_text()) if p.exists() else {}
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def reject_examples(run: RunFolder, stage: str, k: int = EXAMPLES_PER_REASON) -> dict[str, list[dict[str, str]]]:
    """Up to ``k`` rejected samples per reason (id, key, message), reading one ledger file at a time."""
    d = run.path("ledger", stage)
    out: dict[str, list[dict[str, str]]] = {}
    for p in sorted(d.glob("*.parquet")) if d.is_dir() else []:
        if TMP_MARK in p.name:
            continue
        try:
            t = pq.read_table(p, columns=["key", "id", "status", "error_message"])
        except Exception:  # noqa: BLE001 - a foreign or broken file must not sink the report
            continue
        for key, id_, status, msg in zip(*(t.column(c).to_pylist() for c in ("key", "id", "status", "error_message"))):
            if status == OK:
                continue
            examples = out.setdefault(status or "unknown", [])
            if len(examples) < k:
                examples.append({"id": id_ or "", "key": key or "", "message": msg or "", "unit": p.stem})
    return out


def stage_rows(run: RunFolder) -> tuple[list[StageRow], dict[str, Any]]:
    """The stages of the run with their numbers, and the saved summary (pipeline, seconds, ok)."""
    saved = saved_summary(run)
    by_name = {s.get("stage"): s for s in saved.get("stages", []) if isinstance(s, dict)}
    rows = []
    for name in stage_names(run, list(by_name.values())):
        rep = fill_report(StageReport(stage=name), run)
        rep.units = len(run.done_units(name))
        prior = by_name.get(name, {})
        rep.status = prior.get("status") or ("ok" if rep.units else "not run")
        rep.failed = int(prior.get("failed") or 0)
        wall = prior.get("seconds")
        rows.append(StageRow(report=rep, wall_seconds=float(wall) if wall is not None else None, examples=reject_examples(run, name)))
    return rows, saved


def _is_local_path(s: str) -> bool:
    return s.startswith(("/", "~", "./", "../")) or (os.sep != "/" and len(s) > 2 and s[1] == ":" and s[2] in "\\/")


def without_local_paths(obj: Any) -> Any:
    """A copy of a configuration with every local path reduced to its last component (``…/name``)."""
    if isinstance(obj, dict):
        return {k: without_local_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [without_local_paths(v) for v in obj]
    if isinstance(obj, str) and _is_local_path(obj):
        name = Path(obj.rstrip("/\\")).name
        return f"…/{name}" if name else "…"
    return obj
