"""``geobuild index``: faiss index over the gallery embeddings + the GPS gallery."""

from __future__ import annotations

import typer

from ._common import OverwriteOpt, RunOpt, print_summary


def register(app: typer.Typer) -> None:
    @app.command("index")
    def index(
        run: str = RunOpt,
        kind: str = typer.Option("auto", "--kind", help="auto (flat up to --flat-max vectors, IVF-PQ above), flat, ivfpq or hnsw."),
        gps_gallery: str = typer.Option(
            "geoclip", "--gps-gallery",
            help="GPS gallery: 'geoclip' (GeoCLIP's 100K points), a CSV with lat/lon columns, or 'none'.",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the GPS gallery is encoded."),
        recall_sample: int = typer.Option(1000, "--recall-sample", min=0, help="Queries for the recall@10 check of approximate indexes (0: skip)."),
        flat_max: int = typer.Option(250_000, "--flat-max", min=1, help="With --kind auto: largest gallery indexed exactly."),
        nlist: int = typer.Option(0, "--nlist", min=0, help="IVF lists (0: power of two near 4*sqrt(n), 8192 for 4.7M)."),
        pq_m: int = typer.Option(0, "--pq-m", min=0, help="PQ sub-quantizers, must divide the dimension (0: dim/4)."),
        nprobe: int = typer.Option(0, "--nprobe", min=0, help="IVF lists searched per query (0: nlist/64, at least 16)."),
        refine: str = typer.Option("sq8", "--refine", help="IVF-PQ: re-rank the PQ shortlist with sq8 (8-bit) or flat (float32) vectors, or none."),
        k_factor: int = typer.Option(16, "--k-factor", min=1, help="IVF-PQ with --refine: shortlist size as a multiple of k."),
        hnsw_m: int = typer.Option(32, "--hnsw-m", min=4, help="HNSW links per node."),
        ef_search: int = typer.Option(128, "--ef-search", min=1, help="HNSW search depth."),
        seed: int = typer.Option(0, "--seed", help="Seed of the training and recall samples."),
        overwrite: bool = OverwriteOpt,
    ) -> None:
        """Build index/gallery.faiss (+ ids.parquet, info.json) and the GPS gallery (index/gps_gallery.*)."""
        from ..core.runfolder import RunFolder
        from ..core.runner import run_stage
        from ..stages.index import IndexConfig, IndexStage

        cfg = IndexConfig(
            kind=kind, gps_gallery=gps_gallery, flat_max=flat_max, nlist=nlist, pq_m=pq_m, nprobe=nprobe, refine=refine, k_factor=k_factor,
            hnsw_m=hnsw_m, ef_search=ef_search, recall_sample=recall_sample, seed=seed, device=device,
        )
        print_summary(run_stage(IndexStage(cfg), RunFolder(run), overwrite=overwrite))
