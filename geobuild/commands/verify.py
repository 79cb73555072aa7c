"""``geobuild verify RUN [--deep]``: check a run folder against its markers, ledgers, schemas and tars."""

from __future__ import annotations

from pathlib import Path

import typer


def verify(
    run: Path = typer.Argument(..., help="Run folder to check."),
    deep: bool = typer.Option(False, "--deep", help="Also hash every recorded output (slower: reads every byte)."),
) -> None:
    """Check every marker against its files, the ledger accounting, schema versions and tars; exit 1 on a problem."""
    from rich.console import Console
    from rich.table import Table

    from ..core.errors import GeobuildError
    from ..core.runfolder import RunFolder
    from ..pipeline.verify import verify_run

    folder = RunFolder(run)
    if not folder.path("done").is_dir():
        raise GeobuildError(f"{folder.root} is not a run folder (no done/); nothing to verify")
    findings = verify_run(folder, deep=deep)
    problems = [f for f in findings if not f.ok]
    table = Table(title=f"geobuild verify {folder.root}" + (" --deep" if deep else ""), show_lines=False)
    for col in ("stage", "check", "file", "result", "repair"):
        table.add_column(col, overflow="fold")
    for f in findings:
        table.add_row(f.stage, f.check, f.target, ("ok: " if f.ok else "PROBLEM: ") + f.detail, f.repair)
    Console(width=200).print(table)
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {folder.root}", err=True)
        raise typer.Exit(1)
    typer.echo(f"no problem found in {folder.root}", err=True)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
