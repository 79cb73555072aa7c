"""Feed the VLM ranker: photos read by key from WebDataset tars, groups turned into prompts.

:class:`PhotoStore` indexes the image members of some tars once (tar headers only: key -> tar,
byte offset, size) and then reads a single photo by seeking to it, so a batch decodes only the
photos it shows. The index holds three integers per photo; the photos stay on disk.

:func:`rank_groups` turns rows of :class:`geobuild.ranker.data.Groups` into
:class:`geobuild.ranker.vlm.RankGroup` objects (query photo, candidate coordinates + location
text + photo when the candidate has one). A group whose query photo is missing or undecodable is
left out and counted by reason.
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..core.errors import GeobuildError
from ..core.log import get_logger
from .vlm_prompts import RankCandidate, RankGroup, location_text

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .data import Groups

log = get_logger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class PhotoStore:
    """Random access to the photos of WebDataset tars by sample key."""

    def __init__(self, tars: Iterable[str | Path], max_side: int | None = None):
        self.tars = [Path(t) for t in tars]
        self.max_side = max_side
        self._where: dict[str, tuple[int, int, int]] = {}  # key -> (tar, data offset, size)
        for ti, tar in enumerate(self.tars):
            try:
                with tarfile.open(tar, "r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        key, _, ext = m.name.rsplit("/", 1)[-1].partition(".")
                        if ext.lower() in IMAGE_EXTS:
                            self._where.setdefault(key, (ti, m.offset_data, m.size))
            except (OSError, tarfile.TarError) as exc:
                raise GeobuildError(f"cannot read photo tar {tar}: {exc}") from exc
        log.info("indexed %d photos in %d tars", len(self._where), len(self.tars))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def row(self, key: str | None) -> int:
        """A stable non-negative number for a key that has a photo, -1 otherwise."""
        if key is None or key not in self._where:
            return -1
        ti, offset, _ = self._where[key]
        return ti * (1 << 40) + offset

    def read_bytes(self, key: str) -> bytes | None:
        where = self._where.get(key)
        if where is None:
            return None
        ti, offset, size = where
        with open(self.tars[ti], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def get(self, key: str | None) -> "Image.Image | None":
        """The decoded RGB photo of ``key`` (None when absent or undecodable)."""
        from PIL import Image

        if key is None:
            return None
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            im = Image.open(io.BytesIO(data))
            im = im.convert("RGB")
        except Exception:  # a broken photo counts as no photo
            return None
        if self.max_side and max(im.size) > self.max_side:
            im.thumbnail((self.max_side, self.max_side))
        return im


class TarIndexPhotos(PhotoStore):
    """The photos of one tar read through a GeoRanker ``tar_index.pkl`` (id -> ``tarfile.TarInfo``),
    as GeoRanker's trainer opens them (``extractfile(tar_index[id])``), keyed like the groups of a
    GeoRanking table (:func:`geobuild.sources.metadata.sanitize_key` of each id)."""

    def __init__(self, tar: str | Path, index_path: str | Path, max_side: int | None = None):
        import pickle

        from ..sources.metadata import sanitize_key

        self.tars = [Path(tar)]
        self.max_side = max_side
        self._where = {}
        if not self.tars[0].is_file():
            raise GeobuildError(f"photo tar {tar} not found (the tar that {index_path} indexes)")
        try:
            with open(index_path, "rb") as f:
                index = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise GeobuildError(f"cannot read {index_path} as a tar_index.pkl ({exc})") from None
        if not isinstance(index, dict) or not all(isinstance(m, tarfile.TarInfo) for m in index.values()):
            raise GeobuildError(f"{index_path} is not a tar_index.pkl (a pickled dict id -> tarfile.TarInfo)")
        for gid, m in index.items():
            self._where.setdefault(sanitize_key(str(gid)), (0, m.offset_data, m.size))
        log.info("%d photos in %s through %s", len(self._where), tar, index_path)


def rank_groups(
    groups: "Groups", rows: Sequence[int], photos: PhotoStore, candidate_photos: bool = True
) -> tuple[list["RankGroup"], np.ndarray, Counter]:
    """RankGroups for ``rows`` of ``groups``; returns (rank groups, the rows they came from, skipped)."""
    out: list[RankGroup] = []
    kept: list[int] = []
    skipped: Counter = Counter()
    for r in rows:
        query = photos.get(groups.query_key[r])
        if query is None:
            skipped["no_query_photo"] += 1
            continue
        cands = []
        for j in range(groups.group_size):  # every position, so scores stay aligned with dists and mask
            key = groups.cand_key[r, j] if candidate_photos else None
            cands.append(
                RankCandidate(
                    lat=float(groups.cand_lat[r, j]),
                    lon=float(groups.cand_lon[r, j]),
                    text=location_text(groups.cand_texts[r, j]),
                    image=photos.get(key) if key is not None else None,
                )
            )
        out.append(RankGroup(query_image=query, candidates=cands))
        kept.append(int(r))
    return out, np.asarray(kept, dtype=np.int64), skipped


__all__ = ["PhotoStore", "TarIndexPhotos", "rank_groups", "location_text"]
