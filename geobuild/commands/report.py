"""``geobuild report RUN``: a static site to look at a run in a browser (no server, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        run: Path = typer.Argument(..., help="Run folder (as given to geobuild run --out)."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Where to write the site (default: RUN/report); an older report there is replaced."
        ),
        queries: int = typer.Option(200, "--queries", min=0, help="How many queries to sample for the query browser."),
        seed: int = typer.Option(0, "--seed", help="Seed of the query sample."),
    ) -> None:
        """Write a self-contained static report of a run: stages, rejects, data statistics, sampled queries with their candidates."""
        from ..report import ReportConfig, build_report

        res = build_report(run, ReportConfig(out=out, queries=queries, seed=seed))
        typer.echo(f"report: {res.out / 'index.html'} ({res.sampled} of {res.queries} queries, {res.seconds:.1f}s)", err=True)
