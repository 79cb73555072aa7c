"""Decode, validate, convert and resize one photo for a shard.

:func:`prepare_jpeg` turns the raw bytes of an input file into the bytes stored as ``<key>.jpg``:

- an upright, RGB, baseline JPEG that needs no resizing is kept byte for byte;
- anything else (PNG, CMYK, greyscale, palette, 16-bit, progressive, EXIF-rotated, or an image
  that must be resized) is decoded, made upright with ``ImageOps.exif_transpose``, converted to
  RGB (transparency composited on white) and re-encoded as a baseline JPEG at ``quality``.

Problems with one file raise :class:`ImageReject` carrying a ledger status: ``empty_file``,
``too_few_bytes``, ``bad_image`` (not an image, truncated, undecodable) or ``too_small``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

ORIENTATION_TAG = 0x0112

# Statuses a photo can be rejected with (ledger ``status`` values).
EMPTY_FILE = "empty_file"
TOO_FEW_BYTES = "too_few_bytes"
BAD_IMAGE = "bad_image"
TOO_SMALL = "too_small"


class ImageReject(Exception):
    """A photo that cannot go into a shard; ``status`` is the ledger reason class."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageOptions:
    """How photos are stored: optional downscaling, JPEG quality and minimum sizes."""

    max_side: int | None = None  # downscale so the longest side is at most this many pixels
    min_side: int | None = None  # downscale so the shortest side is at most this many pixels
    jpeg_quality: int = 95
    min_size: int = 0  # reject images whose shorter side is below this many pixels
    min_bytes: int = 0  # reject files smaller than this many bytes


@dataclass
class PreparedImage:
    data: bytes
    width: int  # upright size before any resizing
    height: int
    reencoded: bool


def _target_size(w: int, h: int, opts: ImageOptions) -> tuple[int, int]:
    scale = 1.0
    if opts.max_side and max(w, h) > opts.max_side:
        scale = min(scale, opts.max_side / max(w, h))
    if opts.min_side and min(w, h) > opts.min_side:
        scale = min(scale, opts.min_side / min(w, h))
    if scale >= 1.0:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16/32-bit scaled down, alpha composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            arr = arr.astype(np.int64)
            # 16-bit samples (I;16*, and 'I' images that come from 16-bit PNGs) span 0..65535
            arr8 = np.clip(arr // 257 if arr.max(initial=0) > 255 else arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def prepare_jpeg(data: bytes, opts: ImageOptions) -> PreparedImage:
    """The JPEG bytes to store for one input file (see the module docstring)."""
    if not data:
        raise ImageReject(EMPTY_FILE, "file is empty (0 bytes)")
    if opts.min_bytes and len(data) < opts.min_bytes:
        raise ImageReject(TOO_FEW_BYTES, f"file has {len(data)} bytes, fewer than --min-bytes {opts.min_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            progressive = bool(img.info.get("progressive") or img.info.get("progression"))
            orientation = img.getexif().get(ORIENTATION_TAG, 1) if fmt in ("JPEG", "MPO", "TIFF", "PNG", "WEBP") else 1
            img.load()  # full decode: catches truncated and corrupt files
    except ImageReject:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
        raise ImageReject(BAD_IMAGE, f"cannot decode image: {type(exc).__name__}: {exc}") from None
    try:
        upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
    except Exception as exc:  # noqa: BLE001
        raise ImageReject(BAD_IMAGE, f"cannot apply EXIF orientation: {exc}") from None
    w, h = upright.size
    if opts.min_size and min(w, h) < opts.min_size:
        raise ImageReject(TOO_SMALL, f"image is {w}x{h}, shorter side below --min-size {opts.min_size}")
    target = _target_size(w, h, opts)
    keep = fmt == "JPEG" and img.mode == "RGB" and not progressive and upright is img and target == (w, h)
    if keep:
        return PreparedImage(data, w, h, reencoded=False)
    try:
        rgb = to_rgb(upright)
        if target != (w, h):
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=int(opts.jpeg_quality), optimize=False, progressive=False)
    except Exception as exc:  # noqa: BLE001
        raise ImageReject(BAD_IMAGE, f"cannot convert image to RGB JPEG: {type(exc).__name__}: {exc}") from None
    return PreparedImage(out.getvalue(), w, h, reencoded=True)
