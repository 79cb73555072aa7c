"""``geobuild embed``: embed every finished shard of a run with one image (+ text) encoder."""

from __future__ import annotations

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
    from ..core.runfolder import RunFolder
    from ..core.runner import run_stage
    from ..stages.embed import EmbedConfig, EmbedStage

    cfg = EmbedConfig(model=model, device=device, batch_size=batch_size, num_workers=num_workers, dtype=dtype, torch_threads=threads)
    summary = run_stage(EmbedStage(cfg), RunFolder(run), executor_from(executor, workers, ray_address), overwrite=overwrite)
    print_summary(summary)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
