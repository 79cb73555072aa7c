"""Geolocation metrics of a ranking: which candidate each group picks, and accuracy at thresholds."""

from __future__ import annotations

import numpy as np

from ..geo.sphere import THRESHOLDS_KM, accuracy_at
from .data import Groups


def pick(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Index of the best-scored valid candidate per group (the first one on ties)."""
    s = np.where(mask, scores, -np.inf)
    return np.argmax(s, axis=1)


def summary(errors_km: np.ndarray, strict: bool = True, thresholds=THRESHOLDS_KM) -> dict[str, float]:
    """Accuracy at each threshold (percent), median error and count."""
    err = np.asarray(errors_km, dtype=np.float64)
    out = {k: 100.0 * v for k, v in accuracy_at(err, thresholds, strict=strict).items()}
    out["median_km"] = float(np.median(err)) if err.size else float("nan")
    out["n"] = int(err.size)
    return out


def ranker_errors(scores: np.ndarray, groups: Groups) -> np.ndarray:
    """Error (km) of the candidate the ranker puts first in each group."""
    chosen = pick(scores, groups.mask)
    return groups.dists[np.arange(len(groups)), chosen].astype(np.float64)


def oracle_errors(groups: Groups) -> np.ndarray:
    """Error of the best candidate in each group (the ceiling of any ranker of that group)."""
    return np.where(groups.mask, groups.dists, np.inf).min(axis=1).astype(np.float64)


def retrieval_errors(groups: Groups) -> np.ndarray:
    """Error of the top-1 image retrieval hit (the first group candidate when there is none)."""
    err = groups.retrieval_km.astype(np.float64).copy()
    missing = ~np.isfinite(err)
    err[missing] = groups.dists[missing, 0]
    return err


def top1_hit_rate(scores: np.ndarray, groups: Groups) -> float:
    """Share of groups whose first-ranked candidate is a closest one (ties count as hits)."""
    chosen = ranker_errors(scores, groups)
    return float(np.mean(chosen <= oracle_errors(groups))) if len(groups) else float("nan")


def gap_closed(ranker: dict, retrieval: dict, oracle: dict) -> dict[str, float]:
    """Share of the retrieval-to-oracle gap the ranker closes, per accuracy threshold."""
    out = {}
    for k, v in ranker.items():
        if not k.startswith("acc@"):
            continue
        gap = oracle[k] - retrieval[k]
        out[k] = float((v - retrieval[k]) / gap) if gap > 0 else float("nan")
    return out
