"""The embed stage: one unit per finished shard -> L2-normalised embeddings + aligned metadata.

Per unit ``U`` it writes ``embeddings/U.npy`` (float16|float32 [N, D]), ``embeddings/U.parquet``
(schema ``embeddings_meta``), ``embeddings/U.text.npy`` for models with a text tower, and the
run-wide ``embeddings/model.json``. JPEG decoding runs in ``num_workers`` DataLoader processes;
the model runs on CUDA under fp16 autocast when a GPU is used, in float32 on the CPU. Samples
that fail to decode go to ``ledger/embed/U.parquet`` and are left out of the aligned outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import GeobuildError
from ..log import get_logger
from ..runfolder import RunFolder
from ..stage import Stage, UnitResult, device_resources

log = get_logger("embed")

DTYPES = ("float16", "float32")
DEFAULT_TEMPLATE = "A photo taken in {location}."


def default_num_workers(device: str) -> int:
    """Decode processes: leave one core to the model on a CPU, feed a GPU with up to 8."""
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores - 1))


@dataclass
class EmbedConfig:
    """Options of the embed stage (``model`` and ``dtype`` determine the outputs)."""

    model: str = "efficientnet-lite0"
    device: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    dtype: str = "float16"
    text_template: str = DEFAULT_TEMPLATE
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise GeobuildError(f"unknown embedding dtype '{self.dtype}' (choose float16 or float32)")
        if int(self.batch_size) < 1:
            raise GeobuildError("--batch-size must be at least 1")
        if "{location}" not in self.text_template:
            raise GeobuildError("text_template must contain '{location}'")


class EmbedStage(Stage):
    """Embed every finished shard of a run with one model."""

    name = "embed"

    def __init__(self, config: EmbedConfig):
        self.cfg = config

    def __repr__(self) -> str:
        return f"EmbedStage({self.cfg!r})"

    # -- Stage API ----------------------------------------------------------------------------
    @property
    def resources(self) -> dict[str, float]:  # type: ignore[override]
        """One GPU per unit on ``device: cuda`` (or ``auto`` where the cluster has GPUs: decided by the
        executor, not by the driver's own devices); decode workers + 1 CPUs."""
        return device_resources(self.cfg.device, num_cpus=float((self.cfg.num_workers or 1) + 1))

    def config(self) -> dict[str, Any]:
        """What determines the outputs; execution settings (device, batch size, workers) may change on resume."""
        return {"model": self.cfg.model, "dtype": self.cfg.dtype, "text_template": self.cfg.text_template}

    def units(self, run: RunFolder) -> list[str]:
        units = run.shard_units()
        if not units:
            raise GeobuildError(f"no finished shards in {run.shards_dir}; run geobuild shard --out {run.root} first")
        self.check_model(run)
        return units

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        from .embed_run import embed_unit

        return embed_unit(self.cfg, run, unit)

    # -- helpers ------------------------------------------------------------------------------
    def check_model(self, run: RunFolder, overwrite: bool = False) -> None:
        """Refuse to mix models: ``embeddings/model.json`` must name this model and dtype.

        A different model.json with finished units is an error, unless ``overwrite`` (then every
        unit is redone); without finished units it is a leftover and is removed.
        """
        from ..embeddings import model_info_path, read_model_info

        path = model_info_path(run)
        if not path.exists():
            return
        info = read_model_info(run)
        if info.get("model") == self.cfg.model and info.get("dtype") == self.cfg.dtype:
            return
        if run.done_units(self.name) and not overwrite:
            raise GeobuildError(
                f"run {run.root} already has embeddings of model '{info.get('model')}' ({info.get('dtype')}); "
                f"refusing to mix in '{self.cfg.model}' ({self.cfg.dtype}): use --overwrite to redo them, or another run folder"
            )
        run.reset_stage(self.name)
        path.unlink()
