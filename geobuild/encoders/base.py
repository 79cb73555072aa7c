"""The :class:`Encoder` interface every image (and optional text) encoder implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.errors import GeobuildError


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GeobuildError(f"device '{device}' requested but no CUDA GPU is available; use --device cpu or --device auto")
        return device
    if device == "cpu":
        return device
    raise GeobuildError(f"unknown device '{device}' (choose auto, cpu or cuda)")


@dataclass
class Encoder:
    """A loaded encoder.

    ``image_transform`` maps a ``PIL.Image`` (RGB) to a CHW float tensor; ``encode_images`` takes a
    stacked batch of such tensors and returns L2-normalised float32 embeddings ``[B, dim]`` on the
    CPU. Text towers (``has_text``) also embed strings with ``encode_texts``.
    """

    spec: str
    dim: int
    device: str
    image_size: int
    image_transform: Callable[[Any], Any]
    model: Any = field(repr=False)
    has_text: bool = False

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def image_features(self, batch):
        """Unnormalised image features of a batch already on ``self.device``."""
        raise NotImplementedError

    def encode_images(self, batch):
        """L2-normalised float32 image embeddings [B, dim] (CPU tensor) of a stacked batch."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self._autocast():
            x = batch.to(self.device, non_blocking=True)
            feats = self.image_features(x)
        return F.normalize(feats.float(), dim=-1).cpu()

    def encode_texts(self, texts: list[str]):
        """L2-normalised float32 text embeddings [len(texts), dim] (text towers only)."""
        raise GeobuildError(f"model '{self.spec}' has no text tower")
