"""Candidates table -> GeoRanking table, the layout GeoRanker's trainer reads.

GeoRanking columns (schema ``georanking``): ``img_id``, ``gps`` ([lat, lon]), ``ref_gps`` (list of
[lat, lon]), ``ref_img_id``, ``ref_texts`` (list of lists of strings). The trainer skips entry 0
(the query's own retrieval hit), ranks entries ``1..group_size`` and shows the last 5 entries as
"negative examples" text ``"latitude: {lat}, longitude: {lon}, {' '.join(texts)}"``.

Entry layout written here, per query::

    0                      the query itself (its id, GPS and location text)
    1 .. group_size        the group: image and GPS candidates interleaved by rank
                           (image 0, gps 0, image 1, gps 1, ...), whose last ``group_negatives``
                           (default 2) slots hold distance-band negatives taken near, far,
                           regional, near, ... in turn (``BAND_ORDER``)
    ...                    the remaining image / GPS candidates, by rank
    last entries           the remaining band negatives (regional first, with the default mining)

So with ``group_negatives >= 2`` the group holds a ``near`` (< 25 km by default) and a ``far``
(>= 750 km) negative whenever the query has negatives in both bands, even when every image
neighbour is far away; a band the miner found no point for is skipped and the next band takes its
slot. Negatives without a band come after all banded ones. When there are fewer than
``group_size - group_negatives`` image/GPS candidates, more negatives fill the group.

Every query written has at least ``group_size + tail`` candidates, i.e. at least
``1 + group_size + tail`` entries (13 by default), so the last ``tail`` entries never overlap
entries ``1..group_size``. A query with fewer candidates cannot satisfy those reads and is dropped
(returned in ``dropped``, status ``too_few_candidates``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

GROUP_SIZE = 7
TAIL = 5
SCHEMA = "georanking"
#: the group takes its negatives in this order: a close and a distant location first
BAND_ORDER = ("near", "far", "regional")


@dataclass
class GeorankerOptions:
    group_size: int = GROUP_SIZE
    group_negatives: int = 2
    tail: int = TAIL


@dataclass
class Conversion:
    table: pa.Table
    dropped: list[dict] = field(default_factory=list)  # ledger-style rows: key, id, status, error_message


def _interleave(a: list[int], b: list[int]) -> list[int]:
    out = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            out.append(a[i])
        if i < len(b):
            out.append(b[i])
    return out


def _band_round_robin(neg: list[int], bands: list[str | None]) -> list[int]:
    """Negatives ordered near, far, regional, near, far, ... (then those of any other band, or none)."""
    queues = {b: [i for i in neg if bands[i] == b] for b in BAND_ORDER}
    others = [i for i in neg if bands[i] not in BAND_ORDER]
    out = []
    while any(queues.values()):
        for b in BAND_ORDER:
            if queues[b]:
                out.append(queues[b].pop(0))
    return out + others


def entry_order(sources: list[str], ranks: list[int], bands: list[str | None], opts: GeorankerOptions) -> list[int] | None:
    """Candidate indices in GeoRanking order (entry 0 excluded), or None if too few candidates."""
    if len(sources) < opts.group_size + opts.tail:
        return None
    by_rank = lambda idx: sorted(idx, key=lambda i: ranks[i])  # noqa: E731
    image = by_rank([i for i, s in enumerate(sources) if s == "image"])
    gps = by_rank([i for i, s in enumerate(sources) if s == "gps"])
    neg = _band_round_robin(by_rank([i for i, s in enumerate(sources) if s == "negative"]), bands)
    mixed = _interleave(image, gps)
    n_neg_group = min(opts.group_negatives, len(neg), opts.group_size)
    n_pos = min(opts.group_size - n_neg_group, len(mixed))
    n_neg_group = min(len(neg), opts.group_size - n_pos)  # too few image/GPS candidates: more negatives
    group = mixed[:n_pos] + neg[:n_neg_group]
    if len(group) < opts.group_size:
        return None
    return group + mixed[n_pos:] + neg[n_neg_group:]


def candidates_to_georanking(candidates: pa.Table, opts: GeorankerOptions | None = None) -> Conversion:
    """Convert a ``candidates`` table to a ``georanking`` table (see the module docstring)."""
    from ..core.schemas import table

    opts = opts or GeorankerOptions()
    cols = {c: candidates.column(c).to_pylist() for c in (
        "key", "id", "lat", "lon", "texts", "cand_source", "cand_rank", "cand_band", "cand_id", "cand_lat", "cand_lon", "cand_texts",
    )}
    out = {"img_id": [], "gps": [], "ref_gps": [], "ref_img_id": [], "ref_texts": []}
    dropped = []
    for r in range(candidates.num_rows):
        order = entry_order(cols["cand_source"][r], cols["cand_rank"][r], cols["cand_band"][r], opts)
        if order is None:
            dropped.append({
                "key": cols["key"][r], "id": cols["id"][r], "status": "too_few_candidates",
                "error_message": f"{len(cols['cand_source'][r])} candidates, GeoRanking needs {opts.group_size + opts.tail}",
            })
            continue
        lat, lon = cols["lat"][r], cols["lon"][r]
        out["img_id"].append(cols["id"][r])
        out["gps"].append([lat, lon])
        out["ref_gps"].append([[lat, lon]] + [[cols["cand_lat"][r][i], cols["cand_lon"][r][i]] for i in order])
        out["ref_img_id"].append([cols["id"][r]] + [cols["cand_id"][r][i] for i in order])
        out["ref_texts"].append([list(cols["texts"][r] or [])] + [list(cols["cand_texts"][r][i] or []) for i in order])
    return Conversion(table(SCHEMA, out), dropped)


def negative_example_texts(row: dict, n: int = TAIL) -> list[str]:
    """The trainer's "negative examples" text of one GeoRanking row (its last ``n`` entries)."""
    return [
        f"latitude: {gps[0]}, longitude: {gps[1]}, {' '.join(texts)}"
        for gps, texts in zip(row["ref_gps"][-n:], row["ref_texts"][-n:])
    ]
