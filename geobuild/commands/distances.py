"""``geobuild distances``: query->candidate and candidate x candidate km per mined shard."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import (
    ExecutorOpt,
    OverwriteOpt,
    RayAddressOpt,
    RunOpt,
    WorkersOpt,
    executor_from,
    print_summary,
)


def register(app: typer.Typer) -> None:
    @app.command("distances")
    def distances(
        run: str = RunOpt,
        method: str = typer.Option("haversine", "--method", help="haversine (mean Earth radius) or geodesic (WGS-84, as geopy)."),
        shards: Optional[str] = typer.Option(
            None, "--shards", help="Units to do: '{00000..00009}', '0-9', '3,5,8' or 'all' (default: every finished mine unit)."
        ),
        batch_rows: int = typer.Option(4096, "--batch-rows", min=1, help="Candidate rows processed at a time (bounds memory)."),
        workers: int = WorkersOpt,
        executor: str = ExecutorOpt,
        ray_address: Optional[str] = RayAddressOpt,
        overwrite: bool = OverwriteOpt,
    ) -> None:
        """Write distances/<unit>.parquet (schema distances) for each finished mine unit."""
        from ..core.errors import GeobuildError
        from ..core.runfolder import RunFolder
        from ..core.shardspec import select_units
        from ..core.runner import run_stage
        from ..stages.distances.stage import DistancesConfig, DistancesStage

        rf = RunFolder(run)
        stage = DistancesStage(DistancesConfig(method=method, batch_rows=batch_rows))
        available = stage.units(rf)
        if not available:
            raise GeobuildError(f"no finished mine units in {rf.root} (done/mine/ is empty); run: geobuild mine --run {rf.root}")
        units = select_units(available, shards, what="mined units")
        summary = run_stage(stage, rf, executor=executor_from(executor, workers, ray_address), units=units, overwrite=overwrite)
        print_summary(summary)
        rows = sum(int(s.get("rows", 0)) for s in summary.stats.values())
        rejected = sum(int(s.get("rejected", 0)) for s in summary.stats.values())
        typer.echo(f"distances ({method}): {rows} rows written, {rejected} rejected to the ledger, in {len(summary.done)} units")
