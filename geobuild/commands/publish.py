"""``geobuild publish``: stage a run as Hub dataset repositories, validate them, upload them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from ..artifacts.georanking import CANDIDATES
from ._common import (
    ExecutorOpt,
    OverwriteOpt,
    RayAddressOpt,
    RunOpt,
    WorkersOpt,
    existing_path,
    executor_from,
    print_summary,
)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def publish(
    run: Path = RunOpt,
    to: Optional[Path] = typer.Option(None, "--to", help="Staging folder (default: RUN/publish); gets dataset/ and images/."),
    hub: Optional[str] = typer.Option(None, "--hub", help="Upload to ORG/NAME (dataset) and ORG/NAME-images (photos). Needs HF_TOKEN."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repositories as private."),
    validation_fraction: float = typer.Option(0.05, "--validation-fraction", help="Share of authors (by a stable sha1 hash) in the validation split."),
    rows_per_file: int = typer.Option(100_000, "--rows-per-file", help="Most query rows per Parquet file."),
    max_file_mb: int = typer.Option(128, "--max-file-mb", help="A Parquet file closes once it reaches this many MiB (checked per row group of 10,000 rows)."),
    images_per_tar: int = typer.Option(2_000, "--images-per-tar", help="Most photos per WebDataset tar of the images repository."),
    images: bool = typer.Option(True, "--images/--no-images", help="Stage (and upload) the images repository."),
    gallery_run: Optional[Path] = typer.Option(None, "--gallery-run", help="Run folder whose shards hold the gallery photos, when not RUN."),
    georanker_candidates: int = typer.Option(CANDIDATES, "--georanker-candidates", min=1, help="Image candidates per row of the georanker config (queries with fewer are left out of it)."),
    pretty_name: str = typer.Option("GeoRanking-style geolocalization candidates", "--pretty-name", help="Title of the dataset cards."),
    license: str = typer.Option("other", "--license", help="License identifier written to the cards (e.g. cc-by-4.0)."),
    batch_files: int = typer.Option(64, "--batch-files", min=1, help="Most files per Hub commit."),
    retries: int = typer.Option(4, "--retries", min=0, help="Retries of a transient Hub error (exponential backoff)."),
    backoff: float = typer.Option(2.0, "--backoff", min=0.0, help="First retry wait in seconds (doubles each retry)."),
    restage: bool = typer.Option(False, "--restage", help="Rebuild the staged folders even if they are finished."),
    workers: int = WorkersOpt,
    executor: str = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Stage RUN as Hub dataset repositories (Parquet configs + WebDataset photos), validate, upload."""
    from ..core.errors import GeobuildError
    from ..core.log import get_logger
    from ..core.runfolder import RunFolder
    from ..core.runner import run_stage
    from ..stages.publish.stage import PublishConfig, PublishStage, UploadConfig, UploadStage

    log = get_logger("publish")
    existing_path(run, "run folder")
    folder = RunFolder(run)
    if hub is not None:
        if not REPO_ID.match(hub):
            raise GeobuildError(f"--hub must look like ORG/NAME, got '{hub}'")
        from ..stages.publish.hub import hub_token

        hub_token()  # offline or no token: fail now, before the publish stage's work
    cfg = PublishConfig(
        to=str(to or folder.path("publish")), validation_fraction=validation_fraction, rows_per_file=rows_per_file, max_file_mb=max_file_mb,
        images_per_tar=images_per_tar, images=images, gallery_run=str(gallery_run) if gallery_run else None,
        georanker_candidates=georanker_candidates, pretty_name=pretty_name, license=license,
    )
    if restage:
        folder.reset_stage(PublishStage.name)
    summary = run_stage(PublishStage(cfg), folder, executor_from(executor, workers, ray_address), overwrite=overwrite)
    print_summary(summary)
    typer.echo(f"staged and validated: {cfg.to}", err=True)
    if hub is None:
        return
    from huggingface_hub import constants

    up = UploadConfig(to=cfg.to, repo_id=hub, private=private, endpoint=constants.ENDPOINT, batch_files=batch_files,
                      retries=retries, backoff_s=backoff)
    upload_stage = UploadStage(up)
    usummary = run_stage(upload_stage, folder, overwrite=True)
    print_summary(usummary)
    for unit in upload_stage.units(folder):
        log.info("uploaded %s", upload_stage.repo_for(unit))
        typer.echo(f"{constants.ENDPOINT}/datasets/{upload_stage.repo_for(unit)}")


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
