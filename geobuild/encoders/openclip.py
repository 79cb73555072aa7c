"""open_clip image + text encoders, loaded offline from a cache, a checkpoint file or a local dir.

Specs (after the ``open_clip:`` prefix):

- ``<model>:<pretrained_tag>``  e.g. ``ViT-L-14:openai`` (weights must be in the HF cache when offline)
- ``<model>:/path/to/checkpoint.pt``  a local weights file for a built-in (or registered) config;
  ``<model>`` may also be the path of a model-config JSON file, which is registered first
- ``local-dir:/path``  a directory with ``open_clip_config.json`` and the weights
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import GeobuildError, require
from .base import Encoder

HOW_TO = "pass a local checkpoint (open_clip:<model>:/path/to/checkpoint.pt) or a folder (open_clip:local-dir:/path)"


@dataclass
class OpenClipEncoder(Encoder):
    """An open_clip CLIP model: image tower for images, text tower for location text."""

    tokenizer: Any = field(default=None, repr=False)

    def image_features(self, batch):
        return self.model.encode_image(batch)

    def encode_texts(self, texts: list[str]):
        import torch
        import torch.nn.functional as F

        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        with torch.inference_mode(), self._autocast():
            tokens = self.tokenizer(list(texts)).to(self.device)
            feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1).cpu()


@contextlib.contextmanager
def _quiet():
    """Silence open_clip's own logging/warnings while loading (errors are re-raised as one line)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - only used in a message
        return "~/.cache/huggingface/hub"


def parse_spec(rest: str) -> tuple[str, str | None]:
    """Split what follows ``open_clip:`` into (model name for open_clip, pretrained tag/path or None)."""
    if rest.startswith("local-dir:"):
        return rest, None
    model, sep, pretrained = rest.partition(":")
    if not model or not sep or not pretrained:
        raise GeobuildError(
            f"open_clip spec 'open_clip:{rest}' needs a model and weights: open_clip:<model>:<pretrained tag>, "
            "open_clip:<model>:/path/to/checkpoint.pt or open_clip:local-dir:/path"
        )
    return model, pretrained


def _check_local_dir(path: Path) -> None:
    if not path.is_dir():
        raise GeobuildError(f"open_clip local-dir not found: {path} (a folder with open_clip_config.json and weights)")
    if not (path / "open_clip_config.json").is_file():
        raise GeobuildError(f"open_clip local-dir {path} has no open_clip_config.json")
    if not any(path.glob(p) for p in ("*.safetensors", "*.bin", "*.pth", "*.pt")):
        raise GeobuildError(f"open_clip local-dir {path} has no weights (*.safetensors, *.bin, *.pth)")


def _resolve_model(open_clip, model: str) -> str:
    """A built-in/registered config name; a config JSON path is registered under its stem."""
    if model.endswith(".json"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise GeobuildError(f"open_clip model config not found: {path}")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise GeobuildError(
            f"open_clip has no model config '{model}' (see open_clip.list_models(), "
            "or pass the path of a model-config .json)"
        )
    return model


def load_open_clip(spec: str, device: str) -> OpenClipEncoder:
    """Load ``open_clip:...`` fully offline-capable; every failure is one GeobuildError line."""
    require("torch", "ml")
    open_clip = require("open_clip", "ml")
    rest = spec[len("open_clip:") :]
    model_name, pretrained = parse_spec(rest)
    kwargs: dict[str, Any] = {}
    if pretrained is None:
        local = Path(model_name[len("local-dir:") :]).expanduser().resolve()
        _check_local_dir(local)
        model_name = f"local-dir:{local}"
    else:
        model_name = _resolve_model(open_clip, model_name)
        path = Path(pretrained).expanduser()
        if path.suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pretrained:
            if not path.is_file():
                raise GeobuildError(f"open_clip checkpoint not found: {path}")
            pretrained = str(path.resolve())
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                known = ", ".join(tags) if tags else "none"
                raise GeobuildError(
                    f"'{pretrained}' is not a pretrained tag of open_clip model {model_name} (known: {known}) "
                    f"nor a checkpoint file; {HOW_TO}"
                )
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            if cfg.get("quick_gelu", False):
                kwargs["force_quick_gelu"] = True
        kwargs["pretrained"] = pretrained
    try:
        with _quiet():
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device, **kwargs)
            tokenizer = open_clip.get_tokenizer(model_name)
    except GeobuildError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear line
        if pretrained is not None and "pretrained" in kwargs and not os.path.isfile(pretrained):
            raise GeobuildError(
                f"weights for open_clip {model_name}:{pretrained} are missing: not in the Hugging Face cache "
                f"({_hf_cache()}) and not downloadable here; {HOW_TO}"
            ) from None
        raise GeobuildError(f"could not load open_clip model '{spec}': {_first_line(exc)}") from None
    model.eval()
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[-1])
    return OpenClipEncoder(
        spec=spec,
        dim=dim,
        device=device,
        image_size=size,
        image_transform=preprocess,
        model=model,
        has_text=True,
        tokenizer=tokenizer,
    )
