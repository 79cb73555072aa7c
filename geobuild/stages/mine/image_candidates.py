"""Image candidates: the top-K gallery neighbours of each query after exclusions.

Excluded: the query itself (a gallery photo with the query's key when the gallery is the query's
own run, or with the query's source id in any gallery), optionally photos by the query's author,
and optionally near-duplicates (cosine similarity at or above a threshold). The index is
over-fetched so that K neighbours remain; queries still short are searched again with a doubled
depth until K remain, the whole gallery has been seen, or the index returned fewer rows than asked
(an IVF index whose probed lists are exhausted: a deeper search cannot add a row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .columns import ABSENT, Codes


@dataclass
class ImagePick:
    rows: np.ndarray  # int64 [n, k] gallery rows, -1 = none
    scores: np.ndarray  # float32 [n, k]
    excluded: dict[str, int] = field(default_factory=dict)  # neighbours skipped before the K-th kept, by reason
    searches: int = 0


def _as_obj(values) -> np.ndarray:
    return np.asarray(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values], dtype=object)


def _codes(column) -> Codes:
    """``column`` as :class:`Codes` (a sequence of strings or None is encoded here)."""
    if isinstance(column, Codes):
        return column
    import pyarrow as pa

    return Codes.of(pa.array([None if v is None else str(v) for v in column], pa.string()))


def exclusion_mask(
    rows: np.ndarray,
    scores: np.ndarray,
    g_key: np.ndarray,
    g_id: np.ndarray,
    g_author: np.ndarray | None,
    q_key: np.ndarray,
    q_id: np.ndarray,
    q_author: np.ndarray | None,
    same_run: bool,
    dedup_threshold: float | None,
) -> dict[str, np.ndarray]:
    """Boolean [n, k] masks of fetched neighbours to drop, by reason (first reason wins).

    ``g_*`` are the gallery's int32 codes per row and ``q_*`` the queries' codes of the same
    columns (:class:`~geobuild.stages.mine.columns.Codes`); a query without an author has code
    ``ABSENT`` (never equal to a row's code).
    """
    invalid = rows < 0
    safe = np.where(invalid, 0, rows)
    self_hit = g_id[safe] == q_id[:, None]
    if same_run:
        self_hit |= g_key[safe] == q_key[:, None]
    masks = {"invalid": invalid, "self": self_hit & ~invalid}
    seen = invalid | self_hit
    if g_author is not None and q_author is not None:
        same = (g_author[safe] == q_author[:, None]) & ~seen
        masks["same_author"] = same
        seen = seen | same
    if dedup_threshold is not None:
        dup = (scores >= dedup_threshold) & ~seen
        masks["near_duplicate"] = dup
    return masks


#: the most (query, neighbour) results one search call returns; deeper re-searches go in smaller batches
SEARCH_BUDGET = 1 << 22


def search_image_candidates(
    gallery,
    x: np.ndarray,
    q_key,
    q_id,
    q_author,
    k: int,
    same_run: bool,
    g_key: Codes,
    g_id: Codes,
    g_author: Codes | None = None,
    dedup_threshold: float | None = None,
    overfetch: int = 8,
) -> ImagePick:
    """Top-``k`` neighbours per query after exclusions (rows -1 where the gallery ran out).

    ``g_key``/``g_id``/``g_author`` are the gallery's columns (row-aligned with the index), as
    :class:`~geobuild.stages.mine.columns.Codes` or sequences of strings; pass ``g_author`` only to exclude photos by
    the query's author. Query values are compared exactly, as strings ('' for a missing one).
    """
    g_key, g_id = _codes(g_key), _codes(g_id)
    g_author = None if g_author is None else _codes(g_author)
    q_key_s, q_id_s = _as_obj(q_key), _as_obj(q_id)
    q_key, q_id = g_key.lookup(q_key_s), g_id.lookup(q_id_s)
    if g_author is not None:
        q_author_s = _as_obj(q_author)
        q_author = np.where(q_author_s != "", g_author.lookup(q_author_s), ABSENT).astype(np.int32)
    else:
        q_author = None
    n = x.shape[0]
    ntotal = int(gallery.ntotal)
    out_r = np.full((n, k), -1, dtype=np.int64)
    out_s = np.zeros((n, k), dtype=np.float32)
    excluded: dict[str, int] = {}
    todo = np.arange(n)
    depth = min(ntotal, k + max(overfetch, k))
    searches = 0
    while todo.size and depth > 0 and k > 0:
        # queries x depth results per search call stay under SEARCH_BUDGET: a gallery of near-duplicates
        # doubles the depth up to the whole gallery, which must not cost memory in proportion to it
        step = max(1, SEARCH_BUDGET // depth)
        undone = []
        for start in range(0, todo.size, step):
            part = todo[start:start + step]
            scores, rows = gallery.search(x[part], depth)
            searches += 1
            masks = exclusion_mask(
                rows, scores, g_key.codes, g_id.codes, None if g_author is None else g_author.codes, q_key[part], q_id[part],
                None if q_author is None else q_author[part], same_run, dedup_threshold,
            )
            drop = np.zeros(rows.shape, dtype=bool)
            for m in masks.values():
                drop |= m
            rank = np.cumsum(~drop, axis=1)  # kept neighbours up to and including each column
            exhausted = (rows < 0).any(axis=1)  # the index has nothing more for this query
            done = (rank[:, -1] >= k) | (depth >= ntotal) | exhausted
            d = np.flatnonzero(done)
            # a query's exclusions are counted up to its k-th kept neighbour (all it saw if fewer)
            upto = np.where(rank[d, -1] >= k, np.argmax(rank[d] >= k, axis=1) + 1, rows.shape[1])
            seen = np.arange(rows.shape[1])[None, :] < upto[:, None]
            for reason, m in masks.items():
                if reason != "invalid":
                    excluded[reason] = excluded.get(reason, 0) + int((m[d] & seen).sum())
            a, c = np.nonzero(~drop[d] & (rank[d] <= k))  # the first k kept, in rank order
            out_r[part[d[a]], rank[d[a], c] - 1] = rows[d[a], c]
            out_s[part[d[a]], rank[d[a], c] - 1] = scores[d[a], c]
            undone.append(part[~done])
        todo = np.concatenate(undone)
        depth = min(ntotal, depth * 2)
    return ImagePick(out_r, out_s, excluded, searches)
