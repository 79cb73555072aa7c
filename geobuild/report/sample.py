"""The browsable sample of queries: which queries, and what the report keeps of each.

The sample is drawn from the row counts in the Parquet footers (nothing is read), so the candidates
are streamed once, unit by unit, and only the sampled rows are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geo.geocode import reverse_geocode

#: columns of a candidate as the query pages receive them (the order of each candidate's list)
CANDIDATE_FIELDS: tuple[str, ...] = ("source", "rank", "id", "lat", "lon", "score", "km", "place", "thumb")
#: columns of the search index, one list per query
INDEX_FIELDS: tuple[str, ...] = ("key", "id", "city", "state", "country", "continent", "lat", "lon", "top1_km", "best_km", "n", "photo")


def sample_positions(total: int, n: int, seed: int) -> np.ndarray:
    """``min(n, total)`` distinct row positions out of ``total``, sorted; the same for the same seed."""
    if total <= 0 or n <= 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(n, total), replace=False)).astype(np.int64)


def _r(x: Any, nd: int) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, nd) if np.isfinite(x) else None


def _place(texts: Any) -> str:
    return ", ".join(t for t in (texts or []) if t)


def query_records(rows: list[dict[str, Any]], photos: set[str], thumbs: set[str]) -> list[dict[str, Any]]:
    """What the query pages show of each sampled candidates row (query place reverse-geocoded)."""
    if not rows:
        return []
    geo = reverse_geocode([r["lat"] for r in rows], [r["lon"] for r in rows])
    out = []
    for r, g in zip(rows, geo.to_dict("records")):
        cands = []
        for i, src in enumerate(r["cand_source"]):
            key = r["cand_key"][i]
            cands.append([
                src, int(r["cand_rank"][i]), r["cand_id"][i], _r(r["cand_lat"][i], 5), _r(r["cand_lon"][i], 5),
                _r(r["cand_score"][i], 4), _r(r["cand_dist_km"][i], 2), _place(r["cand_texts"][i]),
                f"thumbs/{key}.jpg" if src == "image" and key in thumbs else None,
            ])
        image_km = [c[6] for c in cands if c[0] == "image" and c[6] is not None]
        top1 = next((c[6] for c in cands if c[0] == "image" and c[1] == 0), None)
        out.append({
            "key": r["key"], "id": r["id"], "lat": _r(r["lat"], 5), "lon": _r(r["lon"], 5), "author": r.get("author") or "",
            "place": _place(r.get("texts")), "city": g["city"], "state": g["state"], "country": g["country"], "continent": g["continent"],
            "photo": f"photos/{r['key']}.jpg" if r["key"] in photos else None,
            "top1_km": top1, "best_km": min(image_km) if image_km else None, "candidates": cands,
        })
    return out


def index_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """The search index: one short list per query, in :data:`INDEX_FIELDS` order."""
    return [[r["key"], r["id"], r["city"], r["state"], r["country"], r["continent"], r["lat"], r["lon"], r["top1_km"],
             r["best_km"], len(r["candidates"]), r["photo"]] for r in records]
