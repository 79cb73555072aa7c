"""``geobuild shard``: photos + metadata -> WebDataset shards, ledger and sizes.json."""

from __future__ import annotations

from pathlib import Path
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

FORMAT_HELP = (
    "Input layout: mp16pro (MP16_Pro_places365.csv + mp-16-images tar or parts), im2gps3k (zip/folder "
    "+ CSV), yfcc (numbered-header CSV, LON/LAT at columns 12/13), exif (photos only, GPS from EXIF), "
    "csv (any CSV; name the columns)."
)


def shard(
    out: Path = RunOpt,
    format: str = typer.Option("csv", "--format", "-f", help=FORMAT_HELP),
    images: Path = typer.Option(..., "--images", "-i", help="A zip, a folder of photos, a .tar, or its byte-split parts (the first, mp-16-images00, or a quoted glob 'DIR/mp-16-images??'); parts are streamed as one tar."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", "-m", help="Metadata CSV (not needed for --format exif)."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Column with the image id / file name (default IMG_ID)."),
    lat_col: Optional[str] = typer.Option(None, "--lat-col", help="Latitude column (default LAT)."),
    lon_col: Optional[str] = typer.Option(None, "--lon-col", help="Longitude column (default LON)."),
    author_col: Optional[str] = typer.Option(None, "--author-col", help="Author/owner column (default AUTHOR if present; '' for none)."),
    text_cols: Optional[str] = typer.Option(None, "--text-cols", help="Comma-separated text/scene columns copied into each sample's JSON (default: the MP16-Pro location and Places365 columns present)."),
    samples_per_shard: int = typer.Option(1000, "--samples-per-shard", "-n", min=1, help="Samples per shard tar."),
    max_side: Optional[int] = typer.Option(None, "--max-side", min=1, help="Downscale so the longer side is at most this many pixels."),
    min_side: Optional[int] = typer.Option(None, "--min-side", min=1, help="Downscale so the shorter side is at most this many pixels."),
    jpeg_quality: int = typer.Option(95, "--jpeg-quality", min=1, max=100, help="JPEG quality for re-encoded photos (others keep their original bytes)."),
    min_size: int = typer.Option(0, "--min-size", min=0, help="Reject photos whose shorter side is below this many pixels."),
    min_bytes: int = typer.Option(0, "--min-bytes", min=0, help="Reject files smaller than this many bytes (MP16-Pro consumers skip members under 5120)."),
    workers: int = WorkersOpt,
    executor: str = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Shard geotagged photos into WebDataset tars (RUN/shards), with a ledger of every input."""
    from ..core.runfolder import RunFolder
    from ..core.runner import run_stage
    from ..stages.shard import ShardConfig, ShardStage

    cfg = ShardConfig(
        images=str(images),
        metadata=str(metadata) if metadata is not None else None,
        format=format,
        id_col=id_col,
        lat_col=lat_col,
        lon_col=lon_col,
        author_col=author_col,
        text_cols=[c.strip() for c in text_cols.split(",") if c.strip()] if text_cols else None,
        samples_per_shard=samples_per_shard,
        max_side=max_side,
        min_side=min_side,
        jpeg_quality=jpeg_quality,
        min_size=min_size,
        min_bytes=min_bytes,
    )
    summary = run_stage(ShardStage(cfg), RunFolder(out), executor_from(executor, workers, ray_address), overwrite=overwrite)
    print_summary(summary)
    totals: dict[str, int] = {}
    for st in summary.stats.values():
        for k, v in st.get("by_status", {}).items():
            totals[k] = totals.get(k, 0) + v
    if totals:
        typer.echo("shard: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())), err=True)


def register(app: typer.Typer) -> None:
    app.command("shard")(shard)
