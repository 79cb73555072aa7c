"""Train/validation assignment by a stable hash of the author, so one author never spans splits."""

from __future__ import annotations

import hashlib

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)


def split_bucket(author: str | None, id_: str | None) -> float:
    """A number in [0, 1) from sha1 of the author (or of the id when there is no author)."""
    if author is not None and str(author).strip():
        text = "author:" + str(author).strip()
    else:
        text = "id:" + str(id_)
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(author: str | None, id_: str | None, validation_fraction: float) -> str:
    """``validation`` when the author's bucket falls below ``validation_fraction``, else ``train``."""
    return VALIDATION if split_bucket(author, id_) < validation_fraction else TRAIN
