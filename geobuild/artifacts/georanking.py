"""Candidates -> GeoRanking rows, the layout GeoRanker's trainer reads (docs/formats.md).

GeoRanking columns (schema ``georanking``): ``img_id``, ``gps`` ([lat, lon]), ``ref_gps`` (list of
[lat, lon]), ``ref_img_id``, ``ref_texts`` (list of [city, state, country]). The trainer skips entry
0, opens the photo of every entry ``1..group_size`` through ``tar_index`` and shows the last 5
entries as "negative examples" text ``"latitude: {lat}, longitude: {lon}, {' '.join(texts)}"``.

Rows written here, one per query::

    0          the query itself (its id, GPS and [city, state, country])
    1 .. N     its first N IMAGE candidates in retrieval order (most similar first), N = ``candidates``

Only real gallery photos are entries: GPS-gallery points have no photo (the trainer would fail on
them) and distance-band points are drawn around the true location (they would show the answer).
So the group and the negative-example tail are both retrieval candidates, as at evaluation time.
Ids take GeoRanker's form (``id.replace('/', '_')``, as its ``tar_index.pkl`` keys MP16-Pro). A
query with fewer than N image candidates is left out (status ``too_few_candidates``), and so is one
referencing a photo of :data:`MIN_TAR_BYTES` or less (``photo_too_small``): GeoRanker's
``tar_index.pkl`` does not index such photos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from ..core.runfolder import RunFolder
from ..core.schemas import table
from ..geo.geocode import reverse_geocode
from .embeddings import meta_path, read_meta

GROUP_SIZE = 7
TAIL = 5
#: image candidates per row by default: GeoRanker reads entries 1..7 and the last 5; its evaluation reads 20
CANDIDATES = 20
SCHEMA = "georanking"
#: G3 / GeoRanker index only tar members larger than this many bytes
MIN_TAR_BYTES = 5120
#: the candidates columns a conversion reads
READ_COLUMNS = ("key", "id", "shard", "lat", "lon", "cand_source", "cand_rank", "cand_key", "cand_id", "cand_lat", "cand_lon",
                "cand_city", "cand_state", "cand_country")


@dataclass
class GeorankerOptions:
    candidates: int = CANDIDATES  # image candidates per row (entries 1..N)


@dataclass
class Conversion:
    table: pa.Table
    dropped: list[dict] = field(default_factory=list)  # ledger-style rows: key, id, status, error_message


def gr_id(photo_id: str) -> str:
    """GeoRanker's id form: MP16-Pro ``45/77/3228511372.jpg`` -> ``45_77_3228511372.jpg``."""
    return str(photo_id).replace("/", "_")


def text(v: Any) -> str:
    """A text field as GeoRanker joins it: '' for a missing value."""
    return "" if v is None or (isinstance(v, float) and v != v) else str(v)


def image_entries(row: dict) -> list[int]:
    """Indices of a candidates row's image candidates, most similar first (mine's rank order)."""
    idx = [i for i, s in enumerate(row["cand_source"]) if s == "image"]
    return sorted(idx, key=lambda i: row["cand_rank"][i])


def dropped_row(row: dict, status: str, msg: str) -> dict:
    return {"key": row["key"], "id": row["id"], "status": status, "error_message": msg}


def query_texts(run: RunFolder, rows: Sequence[dict]) -> list[list[str]]:
    """[city, state, country] of every query row ('' where unknown): the query's own metadata from
    its shard's embeddings (``shard`` and ``key`` columns) where it has any, else offline reverse
    geocoding of its position (entry 0's text, which GeoRanker's trainer never reads)."""
    by_unit: dict[str, dict[str, list[str]]] = {}
    out: list[list[str] | None] = []
    for r in rows:
        unit = r["shard"]
        if unit not in by_unit and not meta_path(run, unit).exists():
            by_unit[unit] = {}
        if unit not in by_unit:
            meta = read_meta(run, unit)
            cols = [meta[c].tolist() if c in meta else [None] * len(meta) for c in ("city", "state", "country")]
            by_unit[unit] = {k: [text(v) for v in vals] for k, *vals in zip(meta["key"].tolist(), *cols)}
        t = by_unit[unit].get(r["key"])
        out.append(t if t and any(t) else None)
    need = [i for i, t in enumerate(out) if t is None]
    if need:
        geo = reverse_geocode([rows[i]["lat"] for i in need], [rows[i]["lon"] for i in need])
        for j, i in enumerate(need):
            out[i] = [text(geo[f].iloc[j]) for f in ("city", "state", "country")]
    return out  # type: ignore[return-value]


def georanking_rows(
    rows: Sequence[dict],
    query_texts: Sequence[Sequence[str]],
    opts: GeorankerOptions | None = None,
    accept: Callable[[list[str]], tuple[str, str] | None] | None = None,
) -> Conversion:
    """GeoRanking rows for candidates rows (dicts with :data:`READ_COLUMNS`); ``query_texts[i]`` is
    row i's [city, state, country]; ``accept(ids)`` may refuse a row with ``(status, message)``
    (e.g. a photo missing from the tar)."""
    n = (opts or GeorankerOptions()).candidates
    out: dict[str, list] = {"img_id": [], "gps": [], "ref_gps": [], "ref_img_id": [], "ref_texts": []}
    dropped: list[dict] = []
    for r, qt in zip(rows, query_texts):
        img = image_entries(r)
        if len(img) < n:
            dropped.append(dropped_row(r, "too_few_candidates", f"{len(img)} image candidates, GeoRanking rows need {n} (--candidates)"))
            continue
        img = img[:n]
        ids = [gr_id(r["id"])] + [gr_id(r["cand_id"][i]) for i in img]
        refused = accept(ids) if accept else None
        if refused:
            dropped.append(dropped_row(r, *refused))
            continue
        q = [float(r["lat"]), float(r["lon"])]
        out["img_id"].append(ids[0])
        out["gps"].append(q)
        out["ref_gps"].append([q] + [[float(r["cand_lat"][i]), float(r["cand_lon"][i])] for i in img])
        out["ref_img_id"].append(ids)
        out["ref_texts"].append([[text(t) for t in qt]]
                                + [[text(r["cand_city"][i]), text(r["cand_state"][i]), text(r["cand_country"][i])] for i in img])
    return Conversion(table(SCHEMA, out), dropped)


def refuse_small_photos(rows: Sequence[dict], small_keys: set[str]) -> Callable[[list[str]], tuple[str, str] | None]:
    """An ``accept`` for :func:`georanking_rows` refusing rows that reference a photo whose key is in
    ``small_keys`` (photos of :data:`MIN_TAR_BYTES` or less, see ``artifacts.shards.small_photo_keys``)."""
    small: set[str] = set()
    for r in rows:
        if r["key"] in small_keys:
            small.add(gr_id(r["id"]))
        small.update(gr_id(i) for k, i in zip(r["cand_key"], r["cand_id"]) if k in small_keys)

    def accept(ids: list[str]) -> tuple[str, str] | None:
        bad = [i for i in ids if i in small]
        if not bad:
            return None
        return "photo_too_small", (f"photo {bad[0]} is {MIN_TAR_BYTES} bytes or less, which GeoRanker's tar_index "
                                   f"leaves out; {len(bad)} of {len(ids)} entries")

    return accept


def candidates_to_georanking(candidates: pa.Table, run: RunFolder, opts: GeorankerOptions | None = None,
                             small_keys: set[str] | None = None) -> Conversion:
    """Convert a ``candidates`` table of ``run`` to a ``georanking`` table (see the module docstring);
    rows referencing a photo whose key is in ``small_keys`` are left out, as the export leaves them."""
    rows = candidates.select(list(READ_COLUMNS)).to_pylist()
    accept = refuse_small_photos(rows, small_keys) if small_keys else None
    return georanking_rows(rows, query_texts(run, rows), opts, accept)


def negative_example_texts(row: dict, n: int = TAIL) -> list[str]:
    """The trainer's "negative examples" text of one GeoRanking row (its last ``n`` entries)."""
    return [
        f"latitude: {gps[0]}, longitude: {gps[1]}, {' '.join(texts)}"
        for gps, texts in zip(row["ref_gps"][-n:], row["ref_texts"][-n:])
    ]
