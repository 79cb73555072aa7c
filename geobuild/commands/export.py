"""``geobuild export``: write a run's candidates in other tools' layouts (``export georanker``)."""

from __future__ import annotations

from typing import Optional

import typer

export_app = typer.Typer(help="Export a run's candidates in other tools' layouts.", no_args_is_help=True)


@export_app.command("georanker")
def georanker(
    run: Optional[str] = typer.Option(None, "--run", help="Run folder with candidates/ (geobuild mine)."),
    out: str = typer.Option(..., "--out", "-o", help="Bundle folder (written beside, renamed into place when complete)."),
    candidates: int = typer.Option(20, "--candidates", min=1, help="Image candidates per query (entries 1..N; eval: the 20 GeoRanker reads)."),
    images_tar: Optional[str] = typer.Option(None, "--images-tar", help="Index this existing tar of photos (e.g. mp-16-images.tar) instead of writing DIR/images.tar."),
    mode: str = typer.Option("auto", "--mode", help="train (GeoRanking.parquet), eval (NAME.csv, I.npy, gallery.csv) or auto: train for a run mined against its own gallery, eval for one mined with --gallery."),
    name: str = typer.Option("eval", "--name", help="Eval bundle: the benchmark CSV's name (DIR/NAME.csv)."),
    shards: Optional[str] = typer.Option(None, "--shards", help="Mined shards to export: '{00000..00009}', '0-9', '3,5,8' or 'all' (default)."),
    from_published: Optional[str] = typer.Option(None, "--from", help="Instead of --run: a published dataset (publish folder, or Hub ORG/NAME with ORG/NAME-images); writes the train bundle of its georanker config."),
    images: Optional[str] = typer.Option(None, "--images", help="With --from: the published images repository folder, when not DIR/images or ORG/NAME-images."),
) -> None:
    """A folder GeoRanker's scripts read unmodified: train (GeoRanking.parquet + images.tar + tar_index.pkl)
    or eval (NAME.csv, queries/, images.tar, tar_index.pkl, I.npy, gallery.csv). Only image candidates
    (real photos, retrieval order) are ranked entries; distance-band points never appear."""
    from pathlib import Path

    from ..artifacts.georanker_bundle import BundleOptions, export_bundle
    from ..core.errors import GeobuildError

    if (run is None) == (from_published is None):
        raise GeobuildError("pass exactly one of --run RUN (a mined run) or --from DATASET (a published dataset)")
    if from_published is not None:
        from ..artifacts.georanker_published import export_from_published

        res = export_from_published(from_published, Path(out), images)
    else:
        res = export_bundle(run, BundleOptions(
            out=Path(out), candidates=candidates, images_tar=Path(images_tar) if images_tar else None,
            mode=mode, name=name, shards=shards,
        ))
    reasons: dict[str, int] = {}
    for r in res.left_out:
        reasons[r["status"]] = reasons.get(r["status"], 0) + 1
    typer.echo(
        f"export georanker ({res.mode}): {res.rows} queries to {res.out}"
        + (f"; {len(res.left_out)} left out ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}), "
           f"listed in {res.out / 'ledger.parquet'}" if res.left_out else ""),
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
