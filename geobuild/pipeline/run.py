"""Run a pipeline: refuse changed configurations, preflight every stage, run them in order with the
same :func:`geobuild.core.runner.run_stage` as the single-stage commands, write ``summary.json``."""

from __future__ import annotations

import time
from typing import Any

import yaml

from ..core.errors import GeobuildError
from ..core.log import get_logger
from ..core.runfolder import RunFolder, atomic_path, plain, remove_stale_temps
from ..core.runner import run_stage
from .report import PipelineResult, StageReport, fill_report
from .spec import Pipeline, StageSpec, redact

log = get_logger("pipeline")


def check_configs(run: RunFolder, pipeline: Pipeline, stages: list[tuple[StageSpec, Any]], overwrite: bool) -> None:
    """Refuse changed stage configurations before any work; with ``overwrite`` redo from the first.

    Every stage after a changed one depends on its outputs, so its markers are removed too.
    """
    changed: list[str] = []
    for spec, stage in stages:
        keys = run.config_changes(spec.name, run.recordable(redact(plain(stage.config()))), stage.input_paths())
        if keys is not None:
            changed.append(f"{spec.name}" + (f" ({', '.join(keys)})" if keys else ""))
    if not changed:
        return
    if not overwrite:
        raise GeobuildError(
            f"run {run.root} was made with a different configuration for: {'; '.join(changed)}; "
            "use --overwrite to redo those stages and the ones after them, or another --out folder"
        )
    first = changed[0].split(" ")[0]
    names = pipeline.names()
    staged = {spec.name: stage for spec, stage in stages}
    for name in names[names.index(first) :]:
        if run.done_units(name):
            log.warning("--overwrite: redoing stage %s", name)
        run.reset_stage(name)
        stage = staged.get(name)
        if stage is not None:
            stage.on_reset(run)


def write_pipeline_copy(run: RunFolder, pipeline: Pipeline) -> None:
    """RUN/pipeline.yaml: the resolved pipeline (variables substituted, defaults, no secrets)."""
    run.root.mkdir(parents=True, exist_ok=True)
    doc = {"source": str(pipeline.path.resolve()), **pipeline.resolved()}
    if pipeline.rerun_options:
        doc["rerun_options"] = list(pipeline.rerun_options)
    with atomic_path(run.path("pipeline.yaml")) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_pipeline(
    pipeline: Pipeline,
    run: RunFolder,
    executor=None,
    start: str | None = None,
    until: str | None = None,
    overwrite: bool = False,
    executor_name: str = "local",
) -> PipelineResult:
    """Run the selected stages in order; stop at the first stage with failed units.

    The summary is written to ``RUN/summary.json`` whether the run succeeded or not.
    """
    t0 = time.time()
    selected = pipeline.select(start, until)
    names = pipeline.names()
    first = names.index(selected[0].name)
    for earlier in names[:first]:
        if not run.done_units(earlier):
            raise GeobuildError(f"--from {selected[0].name}: stage '{earlier}' has not run in {run.root}; run it first or drop --from")
    built = [(spec, spec.build()) for spec in selected]
    check_configs(run, pipeline, built, overwrite)
    write_pipeline_copy(run, pipeline)
    stale = remove_stale_temps(run.root)
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted run", stale)
    reports = [StageReport(stage=spec.name) for spec, _ in built]
    result = PipelineResult(pipeline=str(pipeline.path), run=str(run.root), executor=executor_name, stages=reports, seconds=0.0, ok=False)
    try:
        for spec, stage in built:
            stage.preflight(run, overwrite=overwrite)
        for (spec, stage), rep in zip(built, reports):
            stage.check_inputs(run, overwrite=overwrite)  # a missing input is its own error, not a failed unit
            run.check_config(spec.name, redact(plain(stage.config())), overwrite=True, inputs=stage.input_paths())
            log.info("stage %s", spec.name)
            rep.status = "running"
            t1 = time.time()
            before = set(run.done_units(spec.name))
            try:
                s = run_stage(stage, run, executor, record_config=False, raise_on_failure=False, checked=True)
                rep.done, rep.skipped, rep.failed = len(s.done), len(s.skipped), len(s.failed)
                rep.failures = dict(s.failed)
            except GeobuildError as exc:
                now = set(run.done_units(spec.name))
                rep.done, rep.skipped = len(now - before), len(before)
                rep.failed = max(1, _count_units(stage, run) - len(now))
                rep.failures = {"*": str(exc)}
            rep.units = rep.done + rep.skipped + rep.failed
            rep.seconds = time.time() - t1
            rep.status = "failed" if rep.failed else "ok"
            fill_report(rep, run)
            if rep.failed:
                unit, msg = next(iter(rep.failures.items()))
                raise GeobuildError(
                    f"stage {spec.name}: {rep.failed} of {rep.units - rep.skipped} units failed (first: {unit}: {msg}); "
                    "rerun the same command to retry them"
                )
        result.ok = True
        return result
    finally:
        for rep in reports:
            if rep.status == "pending":
                rep.status = "not run"
            elif rep.status == "running":
                rep.status = "interrupted"
                fill_report(rep, run)
        result.seconds = time.time() - t0
        run.write_json(run.path("summary.json"), result.to_json())


def _count_units(stage, run: RunFolder) -> int:
    try:
        return len(stage.units(run))
    except Exception:  # noqa: BLE001 - only for the report
        return 0
