"""Photos and thumbnails for the report, read from a run's own shard tars.

A JPEG that already fits (longest side and bytes within the limits) is copied byte for byte;
anything larger is decoded at a reduced DCT scale (``Image.draft``), turned upright, shrunk and
saved as a JPEG of quality 80.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.shards import read_samples
from ..core.errors import GeobuildError
from ..core.log import get_logger

log = get_logger("report")

IN_FLIGHT = 64


@dataclass(frozen=True)
class PhotoSize:
    """Longest side (pixels) and size (bytes) up to which a JPEG is copied as it is."""

    side: int
    max_bytes: int


def fit_jpeg(data: bytes, size: PhotoSize) -> bytes | None:
    """``data`` itself when it is a JPEG within ``size``, else a shrunk JPEG; None if undecodable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1) if im.format == "JPEG" else 1
            if im.format == "JPEG" and max(im.size) <= size.side and len(data) <= size.max_bytes:
                return data
            im.draft("RGB", (size.side, size.side))
            im.load()
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            im.thumbnail((size.side, size.side), Image.Resampling.BILINEAR, reducing_gap=None)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
            return buf.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def write_photos(wanted: dict[Path, dict[str, set[str]]], folder: Path, sizes: dict[str, PhotoSize]) -> dict[str, set[str]]:
    """Write ``folder/<kind>/<key>.jpg`` for every key wanted from each shard tar, in each kind it is
    wanted as (a kind names a sub-folder and its :class:`PhotoSize`); returns kind -> keys written.

    Each tar is read once, for random access; photos are shrunk by a few threads (Pillow releases
    the GIL), with at most :data:`IN_FLIGHT` photos in memory.
    """
    written: dict[str, set[str]] = {kind: set() for kind in sizes}
    for kind in sizes:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    pending: deque[tuple[str, str, Future]] = deque()

    def finish_one() -> None:
        key, kind, fut = pending.popleft()
        small = fut.result()
        if small is None:
            log.warning("report: photo %s cannot be decoded; left out", key)
            return
        (folder / kind / f"{key}.jpg").write_bytes(small)
        written[kind].add(key)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for tar, keys in sorted(wanted.items()):
            if not tar.exists():
                log.warning("report: shard %s is missing; its %d photo(s) are left out", tar, len(keys))
                continue
            try:
                for key, data in read_samples(tar, set(keys)):
                    for kind in sorted(keys[key]):
                        pending.append((key, kind, pool.submit(fit_jpeg, data, sizes[kind])))
                    while len(pending) > IN_FLIGHT:
                        finish_one()
            except (tarfile.TarError, EOFError) as exc:
                raise GeobuildError(f"unreadable shard {tar} ({exc}); redo it with geobuild shard --overwrite") from None
        while pending:
            finish_one()
    return written
