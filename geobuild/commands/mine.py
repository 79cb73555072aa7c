"""``geobuild mine``: image + GPS candidates, distance-band negatives and location text per query."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import GeobuildError
from ..core.runfolder import RunFolder
from ..core.runner import run_stage
from ..core.shardspec import select_units
from ..artifacts.embeddings import embedded_units
from ..stages.mine import MineConfig, MineStage
from ._common import (
    ExecutorOpt,
    OverwriteOpt,
    RayAddressOpt,
    RunOpt,
    WorkersOpt,
    executor_from,
    print_summary,
)


D = MineConfig()  # the defaults live in the stage's config, not here


def _edges(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise GeobuildError(f"--band-edges must be two km values 'NEAR_MAX,REGIONAL_MAX', e.g. 25,750; got '{text}'") from None
    return a, b


def register(app: typer.Typer) -> None:
    @app.command("mine")
    def mine(
        run: str = RunOpt,
        shards: Optional[str] = typer.Option(None, "--shards", help="Query shards: '{00000..00009}', '0-9', '3,5,8' or 'all' (default)."),
        gallery: Optional[str] = typer.Option(None, "--gallery", help="Mine against this run's index instead of RUN's own (same model)."),
        k_image: int = typer.Option(D.k_image, "--k-image", min=0, help="Image candidates per query (top-K gallery neighbours)."),
        k_gps: int = typer.Option(D.k_gps, "--k-gps", min=0, help="GPS-gallery candidates per query (0: none)."),
        negatives: str = typer.Option(D.negatives, "--negatives", help="Distance-band points drawn around the true location (training-only, leak the answer), e.g. near=2,regional=2,far=2; default none."),
        band_edges: str = typer.Option(",".join(f"{e:g}" for e in D.band_edges_km), "--band-edges", help="km limits near|regional and regional|far."),
        negatives_from: str = typer.Option(D.negatives_from, "--negatives-from", help="Pool of negatives: gallery, gps or both."),
        negative_pool: int = typer.Option(D.negative_pool, "--negative-pool", min=1, help="At most this many gallery photos in the negative pool (seeded sample)."),
        exclude_same_author: bool = typer.Option(D.exclude_same_author, "--exclude-same-author", help="Skip gallery photos by the query's author."),
        dedup_threshold: float = typer.Option(D.dedup_threshold, "--dedup-threshold", help="Skip neighbours with cosine similarity at or above this (near-duplicates)."),
        keep_duplicates: bool = typer.Option(False, "--keep-duplicates", help="Do not skip near-duplicates."),
        gps_scorer: str = typer.Option(D.gps_scorer, "--gps-scorer", help="kde (kernel density of the image neighbours' locations, any model) or geoclip (open_clip ViT-L-14 openai only)."),
        kde_bandwidth_km: float = typer.Option(D.kde_bandwidth_km, "--kde-bandwidth-km", help="Gaussian kernel bandwidth of the kde scorer, km."),
        kde_temperature: float = typer.Option(D.kde_temperature, "--kde-temperature", help="Neighbour weights softmax(similarity / T) of the kde scorer."),
        kde_neighbours: int = typer.Option(D.kde_neighbours, "--kde-neighbours", min=1, help="Image neighbours the kde scorer weighs."),
        gps_min_sep_km: float = typer.Option(D.gps_min_sep_km, "--gps-min-sep-km", min=0.0, help="kde: keep GPS candidates at least this many km apart (0: plain top-K by density)."),
        place_max_km: float = typer.Option(D.place_max_km, "--place-max-km", help="Leave city/county/state empty when the nearest GeoNames place is farther."),
        country_max_km: float = typer.Option(D.country_max_km, "--country-max-km", help="Leave country/continent empty when the nearest GeoNames place is farther."),
        seed: int = typer.Option(D.seed, "--seed", help="Seed of the negatives (with each query's id)."),
        device: str = typer.Option(D.device, "--device", help="Where the gallery is searched: auto (a GPU when usable), cpu or cuda."),
        workers: int = WorkersOpt,
        executor: str = ExecutorOpt,
        ray_address: Optional[str] = RayAddressOpt,
        overwrite: bool = OverwriteOpt,
    ) -> None:
        """Mine candidates/<shard>.parquet: image neighbours, GPS points, band negatives, location text."""
        rf = RunFolder(run)
        if gallery is not None:
            if not Path(gallery).exists():
                raise GeobuildError(f"--gallery run folder not found: {gallery}")
            gallery = str(RunFolder(gallery).root)
            if gallery == str(rf.root):
                gallery = None
        cfg = MineConfig(
            gallery=gallery, k_image=k_image, k_gps=k_gps, negatives=negatives, band_edges_km=_edges(band_edges),
            negatives_from=negatives_from, negative_pool=negative_pool, exclude_same_author=exclude_same_author,
            dedup_threshold=None if keep_duplicates else dedup_threshold, gps_scorer=gps_scorer,
            kde_bandwidth_km=kde_bandwidth_km, kde_temperature=kde_temperature, kde_neighbours=kde_neighbours, gps_min_sep_km=gps_min_sep_km,
            place_max_km=place_max_km, country_max_km=country_max_km, seed=seed, device=device,
        )
        units = select_units(embedded_units(rf), shards, "embedded shards", hint=f"run: geobuild embed --run {rf.root}") if rf.root.is_dir() else None
        summary = run_stage(MineStage(cfg, units), rf, executor_from(executor, workers, ray_address), overwrite=overwrite)
        print_summary(summary)
        mined = sum(s.get("mined", 0) for s in summary.stats.values())
        rejected = sum(s.get("rejected", 0) for s in summary.stats.values())
        if summary.stats:
            typer.echo(f"mine: {mined} queries mined, {rejected} to the ledger, in {len(summary.done)} shards", err=True)
