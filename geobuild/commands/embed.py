"""``geobuild embed``: embed every finished shard of a run with one image (+ text) encoder."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import ExecutorOpt, OverwriteOpt, RayAddressOpt, RunOpt, WorkersOpt, executor_from, print_summary


def embed(
    run: str = RunOpt,
    model: str = typer.Option(
        "efficientnet-lite0",
        "--model",
        "-m",
        help="Encoder: efficientnet-lite0, efficientnet-lite2, open_clip:<model>:<pretrained tag>, "
        "open_clip:<model>:/path/to/checkpoint.pt or open_clip:local-dir:/path.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when a GPU is visible), cpu or cuda."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per forward pass."),
    num_workers: Optional[int] = typer.Option(
        None, "--num-workers", min=0, help="JPEG decode processes per unit (default: cores-1, at most 4 on CPU / 8 on GPU; 0 = decode in-process)."
    ),
    dtype: str = typer.Option("float16", "--dtype", help="Stored embedding dtype: float16 or float32."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch intra-op threads for the model on CPU (default: torch's)."),
    workers: int = WorkersOpt,
    executor: str = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Embed RUN/shards/*.tar into RUN/embeddings/ (npy + aligned parquet, text npy for text towers)."""
    from ..encoders import load_encoder
    from ..errors import GeobuildError
    from ..runfolder import RunFolder
    from ..stage import run_stage
    from ..stages.embed import EmbedConfig, EmbedStage

    folder = RunFolder(run)
    if not folder.root.is_dir():
        raise GeobuildError(f"run folder not found: {folder.root}; create it with geobuild shard --out {run}")
    cfg = EmbedConfig(
        model=model,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        dtype=dtype,
        torch_threads=threads,
    )
    load_encoder(cfg.model, cfg.device)  # fail fast (one line) on an unknown model or missing weights
    from ..embeddings import embeddings_dir
    from ..runfolder import remove_stale_temps

    remove_stale_temps(embeddings_dir(folder))  # leftovers of a killed run
    stage = EmbedStage(cfg)
    stage.check_model(folder, overwrite=overwrite)  # before config.yaml records anything
    summary = run_stage(stage, folder, executor_from(executor, workers, ray_address), overwrite=overwrite)
    print_summary(summary)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
