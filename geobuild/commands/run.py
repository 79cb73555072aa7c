"""``geobuild run PIPELINE --out RUN``: every stage of a pipeline file, in order, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        pipeline: Path = typer.Argument(..., help="Pipeline file, e.g. pipelines/sample.yaml."),
        out: Path = typer.Option(..., "--out", "--run", "-o", help="Run folder (created if missing; a rerun resumes it)."),
        executor: str = typer.Option("local", "--executor", help="local (process pool) or ray."),
        workers: Optional[int] = typer.Option(
            None, "--workers", "-w", min=1,
            help="Parallel units: processes for local (default 1), concurrent Ray tasks for ray (default: as many as the cluster fits).",
        ),
        ray_address: Optional[str] = typer.Option(
            None, "--ray-address", help="Join an existing Ray cluster ('auto' or HOST:PORT; implies --executor ray); default: start a local one."
        ),
        retries: int = typer.Option(2, "--retries", min=0, help="Retries of a failed unit (crash or error) before it is reported."),
        start: Optional[str] = typer.Option(None, "--from", help="Start at this stage (the earlier ones must have run)."),
        until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo stages whose configuration changed, and every stage after them."),
        set_: Optional[list[str]] = typer.Option(
            None, "--set", help="Override a parameter of the pipeline file: STAGE.PARAM=VALUE (repeatable)."
        ),
        to: Optional[Path] = typer.Option(
            None, "--to", help="Where publish stages the dataset folders (same as --set publish.to=DIR)."
        ),
        gallery: Optional[Path] = typer.Option(
            None, "--gallery", help="A finished gallery run folder, available to the pipeline as ${GALLERY}."
        ),
        no_report: bool = typer.Option(False, "--no-report", help="Do not write the browsable report (RUN/report) at the end."),
    ) -> None:
        """Run a whole pipeline from one YAML file; prints a summary and saves RUN/summary.json."""
        from ..core.executors import make_executor
        from ..pipeline.report import render_summary
        from ..pipeline.run import run_pipeline
        from ..pipeline.spec import load_pipeline, rerun_options
        from ..core.runfolder import RunFolder

        run = RunFolder(out)
        variables = {"RUN": str(run.root)}
        if gallery is not None:
            from ._common import existing_path

            variables["GALLERY"] = str(existing_path(gallery, "gallery run folder").resolve())
        # parse once leniently to learn the stage names, then strictly for the selected ones
        overrides = list(set_ or [])
        if to is not None:
            overrides.append(f"publish.to={to.expanduser().resolve()}")
        loose = load_pipeline(pipeline, variables=variables, strict_stages=[], overrides=overrides)
        if to is not None and "publish_upload" in loose.names():
            overrides.append(f"publish_upload.to={to.expanduser().resolve()}")
        selected = [s.name for s in loose.select(start, until)]
        pipe = load_pipeline(pipeline, variables=variables, strict_stages=selected, overrides=overrides)
        pipe.rerun_options = rerun_options(overrides, variables.get("GALLERY"))
        if ray_address and executor == "local":
            executor = "ray"  # joining a cluster means running on it
        if executor == "local":
            ex = make_executor("local", workers=workers or 1, retries=retries)
        else:
            ex = make_executor(executor, workers=workers, ray_address=ray_address, retries=retries)
        import time

        t0 = time.time()
        result = None
        try:
            result = run_pipeline(pipe, run, ex, start=start, until=until, overwrite=overwrite, executor_name=executor)
        finally:
            close = getattr(ex, "close", None)
            if close:
                close()
            if result is None:
                _print_saved_summary(run, t0)
        render_summary(result)
        if not no_report:
            _write_report(run)


def _write_report(run) -> None:
    """RUN/report, as ``geobuild report RUN`` writes it; a failure says how to retry it alone."""
    from ..core.errors import GeobuildError
    from ..report import build_report

    try:
        res = build_report(run)
    except GeobuildError as exc:
        raise GeobuildError(f"the run finished but its report was not written: {exc}; retry with: geobuild report {run.root}") from None
    typer.echo(f"report: {res.out / 'index.html'}", err=True)


def _print_saved_summary(run, since: float) -> None:
    """After a failed run, show the summary that run_pipeline saved (if it got that far)."""
    import json

    from ..pipeline.report import PipelineResult, StageReport, render_summary

    p = run.path("summary.json")
    if not p.exists() or p.stat().st_mtime < since:
        return
    try:
        d = json.loads(p.read_text())
        reports = [StageReport(**s) for s in d["stages"]]
        render_summary(PipelineResult(d["pipeline"], d["run"], d["executor"], reports, d["seconds"], d["ok"]))
    except Exception:  # noqa: BLE001 - the summary is a courtesy; the error that follows is what matters
        pass
