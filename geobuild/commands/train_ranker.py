"""``geobuild train-ranker``: train a distance-aware ranker on a published GeoRanking dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train-ranker")
    def train_ranker(
        data: Optional[str] = typer.Option(None, "--data", "-d", help="Published dataset folder (with dataset/ and images/), Hub repo ORG/NAME, a GeoRanking .parquet file, or a 'geobuild export georanker' folder (GeoRanking.parquet + images.tar + tar_index.pkl)."),
        preset: Optional[str] = typer.Option(None, "--preset", help="Start from a named recipe: georanker (GeoRanker's published training: VLM ranker, group 7, lr 1e-4, 1 epoch, linear decay, weight decay 0.01, 4 queries per step, geodesic km, its prompt and value head); --config and options override it."),
        data_config: Optional[str] = typer.Option(None, "--data-config", help="Dataset config to read: candidates (default) or georanker (GeoRanking columns, read as GeoRanker's trainer does)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder: config, embedding cache, checkpoints, metrics.jsonl."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of training settings (keys as the option names with '_'); options given here override it."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last epoch checkpoint in --out."),
        model: Optional[str] = typer.Option(None, "--model", help="Ranker model: compact (default) or vlm."),
        vlm_path: Optional[str] = typer.Option(None, "--vlm-path", help="--model vlm: local folder of a Qwen2-VL model (e.g. a downloaded Qwen/Qwen2-VL-2B-Instruct); nothing is downloaded."),
        encoder: Optional[str] = typer.Option(None, "--encoder", help="Frozen photo encoder spec (default efficientnet-lite0; thumbnail:N needs no weights)."),
        train_split: Optional[str] = typer.Option(None, "--train-split", help="Split to train on (default train)."),
        val_split: Optional[str] = typer.Option(None, "--val-split", help="Split for per-epoch validation metrics (default validation; 'none' to skip)."),
        images: Optional[Path] = typer.Option(None, "--images", help="Folder of photo tars when they are not in DATA/images."),
        group_size: Optional[int] = typer.Option(None, "--group-size", "-g", help="Candidates per group (default 8); smaller groups are skipped and counted."),
        sources: Optional[str] = typer.Option(None, "--sources", help="Comma-separated candidate sources to rank: image,gps,negative (default image,gps); with counts, e.g. image:12,gps:3, the first n of each (GeoRanker's evaluation groups)."),
        select: Optional[str] = typer.Option(None, "--select", help="How groups are filled: interleave (default, alternate sources) or order (list order)."),
        skip_first: Optional[bool] = typer.Option(None, "--skip-first/--no-skip-first", help="Drop candidate 0 as GeoRanker's trainer does (the query's own retrieval hit)."),
        loss: Optional[str] = typer.Option(None, "--loss", help="multi-order (default), first-order, second-order, pointwise or pairwise."),
        lam: Optional[float] = typer.Option(None, "--lam", help="Weight λ of the first-order term (default 0.7)."),
        k: Optional[int] = typer.Option(None, "--k", help="Positions K of the truncated Plackett-Luce (default 1)."),
        margin: Optional[float] = typer.Option(None, "--margin", help="Hinge margin of the pairwise loss (default 1)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default 10)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Groups per optimiser step (default 32)."),
        micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Groups per forward/backward, gradients accumulated over the batch (default 0: the whole batch)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, AdamW with warm-up and cosine decay (default 1e-3)."),
        schedule: Optional[str] = typer.Option(None, "--schedule", help="Learning-rate decay after the warm-up: cosine (default) or linear."),
        distance: Optional[str] = typer.Option(None, "--distance", help="Loss distances: dataset (default: the dataset's km), haversine or geodesic (recomputed from the coordinates)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; the same seed gives identical metrics (default 0)."),
        d_model: Optional[int] = typer.Option(None, "--d-model", help="Compact model width (default 128)."),
        layers: Optional[int] = typer.Option(None, "--layers", help="Compact model transformer layers (default 2)."),
        consensus: Optional[bool] = typer.Option(None, "--consensus/--no-consensus", help="Compact model: candidate-agreement features (share of the group's other candidates within 25/200/750/2500 km; default off)."),
        residual: Optional[bool] = typer.Option(None, "--residual/--no-residual", help="Compact model: score = learned (source, rank) prior + correction, starting exactly at retrieval's order (default off)."),
        retrieval_features: Optional[bool] = typer.Option(None, "--retrieval-features/--no-retrieval-features", help="Compact model: each candidate's retrieval score, margin and ratio to the best of its source (default off)."),
        gate: Optional[bool] = typer.Option(None, "--gate/--no-gate", help="After training, fit on the validation split by how much the ranker must beat retrieval's first photo to replace it; eval applies it."),
        keep_retrieval: Optional[str] = typer.Option(None, "--keep-retrieval", help="Keep retrieval's first photo when its retrieval score is at least this: auto (default: fitted after training on the validation split, never below top-1 retrieval at any threshold there), a score, or off; eval applies it."),
        snap_km: Optional[str] = typer.Option(None, "--snap-km", help="Snap-back: predict the earliest retrieval-order candidate within this many km of the ranker's choice: auto (fitted on the validation split), a radius, or 0 (default: off); eval applies it."),
        best_by: Optional[str] = typer.Option(None, "--best-by", help="Keep checkpoints/best.pt, the epoch (0: untrained) with the best validation figure (val_acc_mean, val_loss, ...); eval of OUT uses it. Default auto: val_acc_mean for the compact model, none for the VLM; 'none': the last epoch."),
        location: Optional[str] = typer.Option(None, "--location", help="Coordinate features: rff (default) or geoclip (pretrained location encoder)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu (default), cuda or auto."),
        threads: Optional[int] = typer.Option(None, "--threads", help="Torch CPU threads."),
        embed_cache: Optional[Path] = typer.Option(None, "--embed-cache", help="Folder for the photo-embedding cache (default OUT/embed-cache); runs may share one."),
        stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop after this many epochs in this invocation; continue later with --resume."),
    ) -> None:
        """Train a ranker with the multi-order distance loss (or a baseline loss); checkpoints every epoch."""
        import json

        from ..core.errors import GeobuildError
        from ..ranker.train import TrainConfig, train

        base = TrainConfig.from_preset(preset)
        cfg = TrainConfig.from_yaml(config, base=base) if config else base
        given = dict(
            data=data, data_config=data_config, out=str(out) if out else None, model=model, encoder=encoder, train_split=train_split,
            images=str(images) if images else None, group_size=group_size, select=select, skip_first=skip_first,
            loss=loss, lam=lam, k=k, margin=margin, epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr,
            schedule=schedule, distance=distance, seed=seed,
            d_model=d_model, layers=layers, location=location, device=device, threads=threads, stop_after=stop_after,
            embed_cache=str(embed_cache) if embed_cache else None, best_by=best_by, gate=gate, keep_retrieval=keep_retrieval, snap_km=snap_km, residual=residual,
            retrieval_features=retrieval_features,
        )
        if vlm_path is not None:
            given["model_options"] = {**cfg.model_options, "vlm_path": vlm_path}
        if consensus is not None:
            given["model_options"] = {**cfg.model_options, **given.get("model_options", {}), "consensus": consensus}
        if sources is not None:
            given["sources"] = [s.strip() for s in sources.split(",") if s.strip()]
        if val_split is not None:
            given["val_split"] = None if val_split.lower() == "none" else val_split
        cfg = cfg.merged(given)
        if val_split is not None and given["val_split"] is None:  # merged() reads None as "not given"
            cfg = cfg.merged({"val_split": None}, keep_none=True)
        try:
            final = train(cfg, resume=resume)
        except ValueError as exc:  # bad loss arguments and the like
            raise GeobuildError(str(exc)) from None
        typer.echo(json.dumps(final.get("metrics", {}), sort_keys=True))
