"""What a pipeline run did, per stage: units, samples in and out, rejects by reason, seconds."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..core.ledger import OK
from ..core.runfolder import TMP_MARK, RunFolder

#: stats keys that count what came into and out of a stage, and the units they are summed over
SAMPLE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    "shard": (("inputs",), ("samples",), None),
    "embed": (("samples",), ("embedded",), None),
    "index": (("input",), ("indexed",), "gallery"),
    "mine": (("queries",), ("mined",), None),
    "distances": (("queries", "rows_in", "input"), ("rows", "rows_out", "written"), None),
    "publish": ((), ("queries.train", "queries.validation"), "dataset"),
}


@dataclass
class StageReport:
    """What one stage did in this invocation, plus totals over all its units (done earlier too)."""

    stage: str
    units: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    samples_in: int | None = None
    samples_out: int | None = None
    rejects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    unit_seconds: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    status: str = "pending"


# stats keys that stages use for what came in and what went out, first match wins
_IN_KEYS = ("samples_in", "rows_in", "inputs", "input", "in", "queries", "rows", "total")
_OUT_KEYS = ("samples_out", "rows_out", "outputs", "output", "out", "written", "ok", "kept")


def stage_totals(run: RunFolder, stage: str, only_unit: str | None = None) -> tuple[dict[str, float], float]:
    """Sum every numeric counter over ``stats/<stage>/*.json`` (finished units only; nested
    counters as ``a.b``), and their seconds."""
    totals: dict[str, float] = {}
    seconds = 0.0
    d = run.path("stats", stage)
    done = set(run.done_units(stage))
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        if p.stem not in done or (only_unit is not None and p.stem != only_unit):
            continue
        try:
            stats = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        for k, v in _flatten(stats).items():
            if k == "seconds":
                seconds += float(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                totals[k] = totals.get(k, 0) + v
    return totals, seconds


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def ledger_rejects(run: RunFolder, stage: str) -> dict[str, int]:
    """Rejected samples by reason (ledger status other than ok) over ``ledger/<stage>/*.parquet``."""
    d = run.path("ledger", stage)
    if not d.is_dir():
        return {}
    counts: dict[str, int] = {}
    for p in sorted(d.glob("*.parquet")):
        if TMP_MARK in p.name:
            continue
        try:
            col = pq.read_table(p, columns=["status"]).column("status").to_pylist()
        except Exception:  # noqa: BLE001 - a foreign or broken file must not sink the summary
            continue
        for s in col:
            if s != OK:
                counts[s or "unknown"] = counts.get(s or "unknown", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _pick(totals: dict[str, float], keys: tuple[str, ...], add: bool = False) -> int | None:
    found = [totals[k] for k in keys if k in totals]
    if not found:
        return None
    return int(sum(found)) if add else int(found[0])


def fill_report(rep: StageReport, run: RunFolder) -> StageReport:
    """Totals over the stage's finished units, samples in/out, ledger rejects by reason."""
    rep.totals, rep.unit_seconds = stage_totals(run, rep.stage)
    if rep.stage in SAMPLE_KEYS:
        keys_in, keys_out, unit = SAMPLE_KEYS[rep.stage]
        counted = stage_totals(run, rep.stage, unit)[0] if unit else rep.totals
        rep.samples_in = _pick(counted, keys_in)
        rep.samples_out = _pick(counted, keys_out, add=rep.stage == "publish")
    else:
        rep.samples_in = _pick(rep.totals, _IN_KEYS)
        rep.samples_out = _pick(rep.totals, _OUT_KEYS)
    rep.rejects = ledger_rejects(run, rep.stage)
    return rep


@dataclass
class PipelineResult:
    pipeline: str
    run: str
    executor: str
    stages: list[StageReport]
    seconds: float
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "run": self.run,
            "executor": self.executor,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "stages": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()} for r in self.stages
            ],
        }


def render_summary(result: PipelineResult, file=None) -> None:
    """Print the per-stage summary as a rich table (on stderr by default)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=file is None, file=file)
    if not console.is_terminal:
        console.width = max(console.width, 150)
    table = Table(title=f"geobuild run {Path(result.pipeline).name} -> {result.run} ({result.executor})")
    for col in ("stage", "status", "units", "done", "skipped", "failed", "samples in", "samples out", "rejects by reason", "wall s", "unit s"):
        table.add_column(col, justify="left" if col in ("stage", "status", "rejects by reason") else "right")
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    for r in result.stages:
        rejects = ", ".join(f"{k}: {v}" for k, v in r.rejects.items()) or "-"
        table.add_row(
            r.stage, r.status, str(r.units), str(r.done), str(r.skipped), str(r.failed), fmt(r.samples_in), fmt(r.samples_out),
            rejects, f"{r.seconds:.1f}", f"{r.unit_seconds:.1f}",
        )
    console.print(table)
    console.print(f"total {result.seconds:.1f}s; summary saved to {Path(result.run) / 'summary.json'}")
