"""Falling back to retrieval: rules, fitted on the validation split, that keep top-1 retrieval's
answer where the ranker is unlikely to improve on it.

Two rules, applied to a ranker's scores after it has scored a group (and after the retrieval gate
of :func:`geobuild.ranker.metrics.apply_gate`, when the checkpoint has one):

- **keep retrieval** (``keep_score``): retrieval's first photo stays first when its retrieval score
  (the query's similarity to it, known at test time) is at least ``keep_score``. A close visual
  match is where retrieval is right at street and city scale and where a ranker trained on little
  data loses most;
- **snap-back** (``snap_km``): the ranker picks a region, retrieval picks inside it: the prediction
  is the earliest candidate in the mined list order (retrieval's photos by rank, then the GPS
  candidates) lying within ``snap_km`` km (haversine) of the ranker's choice. 0 leaves the ranker's
  choice; inf always gives retrieval's first photo.

Both use candidate scores and coordinates only, never the query's location. :func:`choose_fallback`
fits them on validation groups, conservatively by default (``no-loss``: never below retrieval's
first photo, top-1 retrieval, at any threshold on validation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..geo.sphere import haversine_km
from .data import Groups
from .metrics import mean_accuracy, pick, ranker_errors, retrieval_position, summary

#: snap-back radii (km) tried by :func:`choose_fallback`, besides inf (always retrieval's first photo)
SNAP_RADII_KM = (0.0, 25.0, 200.0, 750.0, 2500.0)
#: quantiles of the validation groups' retrieval scores tried as the keep-retrieval floor
KEEP_QUANTILES = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())
OBJECTIVES = ("no-loss", "mean")


@dataclass
class Fallback:
    """A fitted (or given) fallback: ``keep_score`` None = never keep by score, -inf = always;
    ``snap_km`` None = no snap-back."""

    keep_score: float | None = None
    snap_km: float | None = None
    objective: str | None = None  # how it was fitted (None: given, not fitted)
    record: dict[str, float] = field(default_factory=dict)  # its ranking's summary on the validation groups

    def apply(self, scores: np.ndarray, groups: Groups) -> np.ndarray:
        """A copy of ``scores`` [N, G] with the rules applied: keep retrieval, then snap-back."""
        out = scores
        if self.keep_score is not None:
            out = apply_keep(out, groups, self.keep_score)
        if self.snap_km is not None:
            out = apply_snap(out, groups, self.snap_km)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Fallback | None":
        return cls(**d) if d else None


def first_rank(scores: np.ndarray, groups: Groups, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A copy of ``scores`` where candidate ``cols[i]`` of group ``rows[i]`` ranks first."""
    out = np.array(scores, dtype=np.float32, copy=True)
    if rows.size:
        best = np.where(groups.mask[rows], out[rows], -np.inf).max(axis=1)
        out[rows, cols] = best + 1.0
    return out


def apply_keep(scores: np.ndarray, groups: Groups, keep_score: float) -> np.ndarray:
    """Scores where retrieval's first photo ranks first when its retrieval score is at least
    ``keep_score`` (-inf: in every group that has one; an unknown score never reaches a finite floor)."""
    pos = retrieval_position(groups)
    has = pos >= 0
    if keep_score != -np.inf:
        if groups.cand_score is None:
            has[:] = False
        else:
            with np.errstate(invalid="ignore"):
                has &= groups.cand_score[np.arange(len(groups)), np.maximum(pos, 0)] >= keep_score
    rows = np.flatnonzero(has)
    return first_rank(scores, groups, rows, pos[rows])


def list_order(groups: Groups) -> np.ndarray:
    """Int [N, G]: each candidate's place in the mined list order (retrieval's image candidates by
    rank, then the GPS candidates by rank, then negatives); padding comes last."""
    key = groups.cand_source.astype(np.int64) * (1 << 32) + groups.cand_rank.astype(np.int64)
    key = np.where(groups.mask, key, np.iinfo(np.int64).max)
    return np.argsort(np.argsort(key, axis=1, kind="stable"), axis=1, kind="stable")


def apply_snap(scores: np.ndarray, groups: Groups, radius_km: float) -> np.ndarray:
    """Scores whose first-ranked candidate is the earliest one in the mined list order lying within
    ``radius_km`` (haversine) of the ranker's choice; the choice itself always qualifies."""
    rows = np.flatnonzero(groups.mask.any(axis=1))
    if rows.size == 0:
        return np.array(scores, dtype=np.float32, copy=True)
    at = np.arange(rows.size)
    chosen = pick(scores, groups.mask)[rows]
    lat, lon = groups.cand_lat[rows], groups.cand_lon[rows]
    with np.errstate(invalid="ignore"):
        near = haversine_km(lat, lon, lat[at, chosen][:, None], lon[at, chosen][:, None]) <= radius_km
    near &= groups.mask[rows]
    near[at, chosen] = True
    order = np.where(near, list_order(groups)[rows], np.iinfo(np.int64).max)
    return first_rank(scores, groups, rows, np.argmin(order, axis=1))


def keep_floors(groups: Groups) -> list[float]:
    """Keep-retrieval floors worth trying, from never (inf) to always (-inf): the quantiles
    :data:`KEEP_QUANTILES` of the retrieval scores of the groups' first photos, descending."""
    floors: set[float] = set()
    if groups.cand_score is not None:
        pos = retrieval_position(groups)
        s = groups.cand_score[np.arange(len(groups)), np.maximum(pos, 0)][pos >= 0].astype(np.float64)
        s = s[np.isfinite(s)]
        if s.size:
            floors = {float(x) for x in np.quantile(s, KEEP_QUANTILES)}
    return [np.inf, *sorted(floors, reverse=True), -np.inf]


def choose_fallback(
    scores: np.ndarray, groups: Groups, *, floors: list[float] | None = None, radii: list[float | None] | None = None,
    objective: str = "no-loss", strict: bool = True,
) -> Fallback:
    """Fit the keep-retrieval floor and the snap-back radius on ``groups`` (the validation split),
    jointly, over ``floors`` (default :func:`keep_floors`; inf = never keep) and ``radii`` (default
    :data:`SNAP_RADII_KM` and inf; None = no snap-back). Pass one value to fix a rule, ``[inf]`` /
    ``[None]`` to leave it out.

    ``no-loss`` (the default; conservative by construction): among the settings no worse at any
    threshold on ``groups`` than retrieval's first photo (the grid's most conservative setting,
    floor -inf or radius inf, which is top-1 retrieval wherever the group holds that photo, as
    GeoRanker's evaluation groups do), the highest mean accuracy over the thresholds; that setting
    is the last resort. ``mean``: the highest mean accuracy. Ties keep the setting closer to
    retrieval (the lower floor, then the larger radius)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown fallback objective '{objective}' (choose {', '.join(OBJECTIVES)})")
    floors = keep_floors(groups) if floors is None else sorted(floors, reverse=True)
    radii = sorted({*SNAP_RADII_KM, np.inf}) if radii is None else radii
    if objective == "no-loss" and -np.inf not in floors and np.inf not in radii:
        floors = [*floors, -np.inf]  # the no-loss setting of last resort: retrieval's first photo
    sized = [r for r in radii if r is not None]
    anchor = Fallback(None if min(floors) == np.inf else float(min(floors)), float(max(sized)) if sized else None)
    top1 = summary(ranker_errors(anchor.apply(scores, groups), groups), strict=strict)
    best, best_key = None, -np.inf
    for floor in floors:
        for radius in radii:
            fb = Fallback(None if floor == np.inf else float(floor), None if radius is None else float(radius), objective)
            s = summary(ranker_errors(fb.apply(scores, groups), groups), strict=strict)
            if objective == "no-loss" and any(s[k] < v for k, v in top1.items() if k.startswith("acc@")):
                continue
            if mean_accuracy(s) >= best_key:
                best, best_key = fb, mean_accuracy(s)
                fb.record = s
    assert best is not None
    return best
