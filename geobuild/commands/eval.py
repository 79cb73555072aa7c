"""``geobuild eval``: accuracy of a trained ranker against top-1 retrieval and the oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        checkpoint: Path = typer.Option(..., "--checkpoint", "--ckpt", help="Checkpoint file, or a train-ranker output folder (uses checkpoints/last.pt)."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help="Published dataset folder or Hub repo to evaluate a split of."),
        split: str = typer.Option("validation", "--split", help="Split of --data to evaluate."),
        run: Optional[Path] = typer.Option(None, "--run", help="Run folder of benchmark queries with candidates/ and distances/ (instead of --data)."),
        gallery: Optional[Path] = typer.Option(None, "--gallery", help="Run folder the queries were mined against (its shards hold the candidate photos; default --run)."),
        images: Optional[Path] = typer.Option(None, "--images", help="Folder of candidate photo tars, overriding the default location."),
        protocol: str = typer.Option("groups", "--protocol", help="groups (the checkpoint's groups, full groups counted) or georanker (first 12 retrieval + first 3 GPS candidates, geodesic km, strict <, every query counted, not evaluated = wrong)."),
        le: bool = typer.Option(False, "--le", help="Count errors <= threshold as correct (GeoCLIP's count) instead of strictly below (--protocol groups only)."),
        group_size: Optional[int] = typer.Option(None, "--group-size", "-g", help="Candidates per group (default: the checkpoint's)."),
        batch_size: int = typer.Option(64, "--batch-size", "-b", help="Groups per scoring batch."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Folder for the photo-embedding cache (default: the checkpoint's training folder)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report: FILE.json, FILE.csv, or a folder (eval.json + eval.csv)."),
    ) -> None:
        """Rank each group with a checkpoint; report accuracy at 1/25/200/750/2500 km and median error, and the protocol used."""
        from ..ranker.evaluate import evaluate, print_table, write_report

        result = evaluate(
            checkpoint, data=data, split=split, run=run, gallery=gallery, images=images, strict=not le,
            protocol=protocol, group_size=group_size, batch_size=batch_size, device=device, cache_dir=cache,
        )
        print_table(result)
        if out is not None:
            for p in write_report(result, out):
                typer.echo(f"wrote {p}", err=True)
