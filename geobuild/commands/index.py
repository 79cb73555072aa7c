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
        from ..errors import GeobuildError
        from ..faiss_index import KINDS
        from ..gallery import DEVICES, INDEX_DIR, INFO_FILE
        from ..runfolder import RunFolder, read_json
        from ..stage import run_stage
        from ..stages.index import GALLERY_UNIT, IndexConfig, IndexStage, check_embeddings

        if kind not in KINDS:
            raise GeobuildError(f"unknown --kind '{kind}' (choose {', '.join(KINDS)})")
        if device not in DEVICES:
            raise GeobuildError(f"unknown --device '{device}' (choose auto, cpu or cuda)")
        if gps_gallery not in ("geoclip", "none") and not gps_gallery.lower().endswith(".csv"):
            raise GeobuildError(f"--gps-gallery must be 'geoclip', 'none' or a .csv file, got '{gps_gallery}'")
        rf = RunFolder(run)
        units, _, _ = check_embeddings(rf)
        cfg = IndexConfig(
            kind=kind, gps_gallery=gps_gallery, flat_max=flat_max, nlist=nlist, pq_m=pq_m, nprobe=nprobe, refine=refine, k_factor=k_factor,
            hnsw_m=hnsw_m, ef_search=ef_search, recall_sample=recall_sample, seed=seed, device=device,
        )
        if cfg.gps_gallery not in ("geoclip", "none"):
            from pathlib import Path

            if not Path(cfg.gps_gallery).expanduser().exists():
                raise GeobuildError(f"GPS gallery CSV not found: {cfg.gps_gallery}")
        info_p = rf.path(INDEX_DIR, INFO_FILE)
        if rf.is_done("index", GALLERY_UNIT) and info_p.exists():
            try:
                built_from = read_json(info_p, "").get("embedding_units")
            except GeobuildError:
                built_from = None  # a damaged info.json: the index is rebuilt below
            if built_from != units:
                typer.echo("index: the embeddings changed since the index was built (or its info.json is damaged); "
                           "rebuilding it", err=True)
                rf.marker_path("index", GALLERY_UNIT).unlink()
        summary = run_stage(IndexStage(cfg), rf, overwrite=overwrite)
        print_summary(summary)
        if info_p.exists():
            info = read_json(info_p, f"rebuild it: geobuild index --run {rf.root} --overwrite")
            recall = info.get("recall@10")
            typer.echo(
                f"index: {info['kind']} over {info['ntotal']} vectors ({info['dim']}-d, {info.get('model')}); "
                + ("exact search" if info["kind"] == "flat" else f"recall@10 = {recall:.4f} on {info['recall_sample']} queries")
            )
