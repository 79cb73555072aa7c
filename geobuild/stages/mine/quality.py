"""Quality of mined candidates: oracle recall per source and the nearest neighbour's accuracy.

*Oracle recall* at t km is the share of queries with at least one candidate (of a source) strictly
closer than t km to the query's true location: the accuracy a perfect ranker could reach with those
candidates. The nearest neighbour's accuracy is that of the top-1 image candidate alone.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ...geo.sphere import THRESHOLDS_KM

GROUPS = {"image": ("image",), "gps": ("gps",), "image+gps": ("image", "gps"), "all": ("image", "gps", "negative")}


def oracle_recall(candidates: pa.Table, thresholds=THRESHOLDS_KM) -> dict[str, dict[str, float]]:
    """``{group: {"acc@1km": ..., ...}}`` for oracle recall of each group and ``top1_image``."""
    src = candidates.column("cand_source").to_pylist()
    dist = candidates.column("cand_dist_km").to_pylist()
    rank = candidates.column("cand_rank").to_pylist()
    n = len(src)
    thr = np.asarray(thresholds, dtype=np.float64)
    best = {g: np.full(n, np.inf) for g in GROUPS}
    top1 = np.full(n, np.inf)
    for i in range(n):
        s = np.asarray(src[i], dtype=object)
        d = np.asarray(dist[i], dtype=np.float64)
        r = np.asarray(rank[i])
        for g, members in GROUPS.items():
            m = np.isin(s, members)
            if m.any():
                best[g][i] = d[m].min()
        first = (s == "image") & (r == 0)
        if first.any():
            top1[i] = d[first][0]
    out = {}
    for g, b in {**best, "top1_image": top1}.items():
        out[g] = {f"acc@{t:g}km": float((b < t).mean()) if n else float("nan") for t in thr}
    out["queries"] = {"n": float(n)}
    return out


def format_table(recall: dict[str, dict[str, float]], thresholds=THRESHOLDS_KM) -> str:
    """A markdown table of :func:`oracle_recall` (percentages)."""
    head = "| candidates | " + " | ".join(f"{t:g} km" for t in thresholds) + " |"
    sep = "|---|" + "---|" * len(thresholds)
    rows = [head, sep]
    for g in (*GROUPS, "top1_image"):
        vals = recall.get(g)
        if vals:
            rows.append(f"| {g} | " + " | ".join(f"{100 * vals[f'acc@{t:g}km']:.2f}" for t in thresholds) + " |")
    return "\n".join(rows)
