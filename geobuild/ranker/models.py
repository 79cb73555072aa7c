"""The model interface the trainer and the evaluation use, and the registry of models.

A ranker model is a ``torch.nn.Module`` whose ``forward(batch: GroupBatch)`` returns one score per
candidate, ``[B, G]`` (higher = predicted closer; padded candidates may get any value). Models are
built by a *builder* ``build(cfg: dict, ctx: ModelContext) -> nn.Module``; ``cfg`` is the
training configuration as a dict (model-specific settings under ``cfg["model_options"]``) and
``ctx`` gives the groups the model will see and where their photos are, so a builder can
precompute frozen features (the compact model embeds the photos once). Everything that must
survive a checkpoint lives in the module's ``state_dict``; frozen per-dataset features must not
(the evaluation rebuilds the model for its own groups and loads the state dict).

Builders are registered by name: ``compact`` (:mod:`geobuild.ranker.compact`) and ``vlm``
(:mod:`geobuild.ranker.vlm`, a module exposing ``build(cfg, ctx)``); :func:`register_model` adds
more.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import GeobuildError
from .data import Groups
from .images import ImageSource


@dataclass
class ModelContext:
    """What a builder may use: every split the model will score, their photos, a cache folder."""

    groups: list[Groups]
    images: ImageSource
    workdir: Path
    device: str = "cpu"
    embed_cache: Path | None = None  # where frozen photo embeddings are cached (default workdir/embed-cache)

    @property
    def cache_dir(self) -> Path:
        return Path(self.embed_cache) if self.embed_cache else Path(self.workdir) / "embed-cache"


@dataclass
class GroupBatch:
    """A batch of B groups of G candidates. Query coordinates are deliberately absent."""

    index: Any  # torch.long [B]: rows in ``groups``
    groups: Groups
    query_key: list[str]
    cand_key: list[list[str | None]]
    cand_lat: Any  # torch.float32 [B, G]
    cand_lon: Any
    cand_source: Any  # torch.long [B, G] (0 image, 1 gps, 2 negative)
    cand_rank: Any  # torch.long [B, G]
    cand_texts: list[list[tuple[str, ...]]]
    dists: Any  # torch.float32 [B, G] (targets: only the loss may read them)
    mask: Any  # torch.bool [B, G]
    negative_texts: list[list[str]] | None = None  # GeoRanker's "negative examples" text per group
    cand_score: Any = None  # torch.float32 [B, G]: retrieval score within its source (nan: unknown)

    def to(self, device) -> "GroupBatch":
        for name in ("index", "cand_lat", "cand_lon", "cand_source", "cand_rank", "dists", "mask", "cand_score"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self


def make_batch(groups: Groups, idx: np.ndarray) -> GroupBatch:
    """Gather rows ``idx`` of ``groups`` into a :class:`GroupBatch`."""
    import torch

    idx = np.asarray(idx, dtype=np.int64)
    return GroupBatch(
        index=torch.from_numpy(idx.copy()),
        groups=groups,
        query_key=[str(k) for k in groups.query_key[idx]],
        cand_key=[list(r) for r in groups.cand_key[idx]],
        cand_lat=torch.from_numpy(groups.cand_lat[idx].astype(np.float32)),
        cand_lon=torch.from_numpy(groups.cand_lon[idx].astype(np.float32)),
        cand_source=torch.from_numpy(groups.cand_source[idx].astype(np.int64)),
        cand_rank=torch.from_numpy(groups.cand_rank[idx].astype(np.int64)),
        cand_texts=[list(r) for r in groups.cand_texts[idx]],
        dists=torch.from_numpy(groups.dists[idx].astype(np.float32)),
        mask=torch.from_numpy(groups.mask[idx].copy()),
        negative_texts=[list(groups.negative_texts[i]) for i in idx] if groups.negative_texts is not None else None,
        cand_score=torch.from_numpy(groups.cand_score[idx].astype(np.float32)) if groups.cand_score is not None else None,
    )


Builder = Callable[[dict, ModelContext], Any]
_BUILDERS: dict[str, str | Builder] = {
    "compact": "geobuild.ranker.compact:build",
    "vlm": "geobuild.ranker.vlm:build",
}


def register_model(name: str, builder: str | Builder) -> None:
    """Register a builder (a callable, or ``"module:function"`` imported on first use)."""
    _BUILDERS[name] = builder


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, cfg: dict, ctx: ModelContext):
    """Build the model ``name`` for the groups in ``ctx``."""
    if name not in _BUILDERS:
        raise GeobuildError(f"unknown ranker model '{name}'; choose one of: {', '.join(model_names())}")
    builder = _BUILDERS[name]
    if isinstance(builder, str):
        mod_name, _, fn = builder.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:
                raise GeobuildError(f"ranker model '{name}' is not available in this installation ({mod_name})") from None
            raise
        builder = getattr(module, fn)
    return builder(cfg, ctx)
