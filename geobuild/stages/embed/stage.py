"""The embed stage: one unit per finished shard -> L2-normalised embeddings + aligned metadata.

Per unit ``U`` it writes ``embeddings/U.npy`` (float16|float32 [N, D]), ``embeddings/U.parquet``
(schema ``embeddings_meta``), ``embeddings/U.text.npy`` for models with a text tower, and the
run-wide ``embeddings/model.json``. JPEG decoding runs in ``num_workers`` DataLoader processes;
the model runs on CUDA under fp16 autocast when a GPU is used, in float32 on the CPU. Samples
that fail to decode go to ``ledger/embed/U.parquet`` and are left out of the aligned outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.errors import GeobuildError
from ...core.log import get_logger
from ...core.runfolder import RunFolder
from ...artifacts.embeddings import embeddings_dir, model_info_path, read_model_info
from ...core.runfolder import remove_stale_temps
from ...core.stage import Accounting, Stage, UnitResult, device_resources
from ...encoders import load_encoder
from .config import EmbedConfig

log = get_logger("embed")

@dataclass
class EmbedStage(Stage):
    """Embed every finished shard of a run with one model."""

    cfg: EmbedConfig
    name = "embed"
    accounting = Accounting("samples", ("embedded",), "rejected", upstream=("shard", "samples"))

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

    def depends_on(self, run: RunFolder, unit: str) -> list[tuple[str, str]]:
        return [("shard", unit)]

    def preflight(self, run: RunFolder, overwrite: bool = False) -> None:
        """The model loads (on the CPU: the driver need not have the units' GPU)."""
        load_encoder(self.cfg.model, "cpu")

    def check_inputs(self, run: RunFolder, overwrite: bool = False) -> None:
        """A shard run to embed; an existing model.json names the same model (:meth:`check_model`)."""
        if not run.root.is_dir():
            raise GeobuildError(f"run folder not found: {run.root}; create it with geobuild shard --out {run.root}")
        self.check_model(run, overwrite=overwrite)

    def on_reset(self, run: RunFolder) -> None:
        model_info_path(run).unlink(missing_ok=True)

    def prepare(self, run: RunFolder) -> None:
        remove_stale_temps(embeddings_dir(run))  # leftovers of a killed run

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        from .encode import embed_unit  # torch: imported where the units run

        return embed_unit(self.cfg, run, unit)

    # -- helpers ------------------------------------------------------------------------------
    def check_model(self, run: RunFolder, overwrite: bool = False) -> None:
        """Refuse to mix models: ``embeddings/model.json`` must name this model and dtype.

        A different model.json with finished units is an error, unless ``overwrite`` (then every
        unit is redone); without finished units it is a leftover and is removed.
        """
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
