"""Options shared by stage commands."""

from __future__ import annotations

from pathlib import Path

import typer

RunOpt = typer.Option(..., "--run", "--out", "-o", help="Run folder (created if missing).")
WorkersOpt = typer.Option(1, "--workers", "-w", min=1, help="Parallel units (processes, or Ray tasks).")
ExecutorOpt = typer.Option("local", "--executor", help="local (process pool) or ray.")
RayAddressOpt = typer.Option(None, "--ray-address", help="Join an existing Ray cluster (default: start a local one).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Redo the stage if its configuration changed.")


def executor_from(executor: str, workers: int, ray_address: str | None):
    from ..core.executors import make_executor

    return make_executor(executor, workers=workers, ray_address=ray_address)


def print_summary(summary) -> None:
    """One line per stage run: units done / skipped / failed, and seconds."""
    typer.echo(
        f"{summary.stage}: {len(summary.done)} units done, {len(summary.skipped)} skipped, "
        f"{len(summary.failed)} failed in {summary.seconds:.1f}s",
        err=True,
    )


def existing_path(p: Path, what: str) -> Path:
    from ..core.errors import GeobuildError

    if not Path(p).exists():
        raise GeobuildError(f"{what} not found: {p}")
    return Path(p)
