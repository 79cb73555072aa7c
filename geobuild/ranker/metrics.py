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


def mean_accuracy(s: dict[str, float]) -> float:
    """Mean of a summary's accuracies over its thresholds."""
    return float(np.mean([v for k, v in s.items() if k.startswith("acc@")]))


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


def retrieval_position(groups: Groups) -> np.ndarray:
    """Position in each group of retrieval's first photo (the image candidate of lowest rank); -1: none."""
    is_image = groups.mask & (groups.cand_source == 0)
    rank = np.where(is_image, groups.cand_rank, np.iinfo(np.int64).max)
    pos = np.argmin(rank, axis=1)
    return np.where(is_image.any(axis=1), pos, -1)


def apply_gate(scores: np.ndarray, groups: Groups, tau: float) -> np.ndarray:
    """Scores where retrieval's first photo wins unless the best candidate beats it by more than ``tau``."""
    out = np.array(scores, dtype=np.float32, copy=True)
    pos = retrieval_position(groups)
    rows = np.flatnonzero(pos >= 0)
    best = np.where(groups.mask, out, -np.inf).max(axis=1)
    keep = rows[best[rows] - out[rows, pos[rows]] <= tau]
    out[keep, pos[keep]] = best[keep] + 1.0
    return out


def choose_gate(scores: np.ndarray, groups: Groups, strict: bool = True) -> tuple[float, dict[str, float]]:
    """The margin ``tau`` (among 0, deciles of the positive margins, and inf = always retrieval) whose
    gated ranking has the highest mean accuracy over the thresholds on ``groups``; ties keep the
    larger ``tau`` (closer to retrieval). Returns (tau, its summary)."""
    pos = retrieval_position(groups)
    rows = np.flatnonzero(pos >= 0)
    best = np.where(groups.mask, scores, -np.inf).max(axis=1)
    margin = best[rows] - scores[rows, pos[rows]]
    positive = margin[margin > 0]
    taus = sorted({0.0, *np.quantile(positive, np.linspace(0.1, 0.9, 9)).tolist()} if positive.size else {0.0}) + [np.inf]
    chosen, chosen_sum, chosen_mean = np.inf, None, -np.inf
    for tau in taus:
        s = summary(ranker_errors(apply_gate(scores, groups, tau), groups), strict=strict)
        mean = mean_accuracy(s)
        if mean >= chosen_mean:
            chosen, chosen_sum, chosen_mean = float(tau), s, mean
    return chosen, chosen_sum
