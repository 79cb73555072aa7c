"""Distance-aware ranking losses over groups of candidates (GeoRanker's multi-order loss and baselines).

Every loss takes ``scores [B, G]`` (higher = closer, as predicted), ``dists [B, G]`` (km from the true
location of each group's query) and an optional boolean ``mask [B, G]`` (False = padding), and is
vectorised over the batch. Non-finite distances are treated as padding too.

Multi-order loss (GeoRanker). Per group, sort the candidates by distance ascending: ``s(1..G)``,
``d(1..G)``.

* First order, Plackett–Luce truncated to the first ``K`` positions::

      L1 = -(1/K) Σ_{k=1..K} [ s(k) - log Σ_{j=k..G} exp s(j) ]

* Second order: the pairs ``(i<j)`` with ``i`` among the first ``K`` positions, ``Δs = s(i) - s(j)``,
  ``Δd = d(i) - d(j)``; the pairs ordered by ``Δd`` ascending; Plackett–Luce over the ordered Δs::

      L2 = -(1/P) Σ_m [ Δs(m) - log Σ_{n>=m} exp Δs(n) ],   P = Σ_{i<K} (G - i - 1)

* ``L = λ·L1 + (1-λ)·L2``; defaults λ = 0.7, K = 1, no temperature, mean over the batch.

Tie rule (deterministic): candidates are sorted with a *stable* sort by distance, so candidates
at equal distance keep their order in the group (the earlier one counts as the closer). Pairs are
enumerated in sorted positions ``i`` ascending, then ``j`` ascending, and that enumeration is
sorted stably by ``Δd``, so pairs with equal ``Δd`` keep that order.

Padding: with a mask a group has ``n`` valid candidates; padded ones sort last and are left out of
every sum. ``K`` becomes ``min(K, n)`` and ``P`` the number of valid pairs. Groups with fewer than
two valid candidates carry no ranking signal: they get loss 0 and are left out of the batch mean.
"""

from __future__ import annotations

from typing import Callable

import torch

#: finite stand-in for -inf in log-sum-exp (keeps gradients of all-padding rows finite)
_NEG = -1.0e9

__all__ = [
    "multi_order_loss",
    "first_order_loss",
    "second_order_loss",
    "pointwise_loss",
    "pairwise_margin_loss",
    "LOSSES",
    "get_loss",
    "sort_by_distance",
]


def _prepare(scores: torch.Tensor, dists: torch.Tensor, mask: torch.Tensor | None):
    if scores.ndim != 2 or scores.shape != dists.shape:
        raise ValueError(f"scores and dists must both be [B, G], got {tuple(scores.shape)} and {tuple(dists.shape)}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    scores = scores.to(dtype)
    dists = dists.to(device=scores.device, dtype=dtype)
    valid = torch.isfinite(dists)
    if mask is not None:
        if mask.shape != scores.shape:
            raise ValueError(f"mask must be [B, G] like scores, got {tuple(mask.shape)}")
        valid = valid & mask.to(device=scores.device, dtype=torch.bool)
    return scores, dists, valid


def sort_by_distance(scores: torch.Tensor, dists: torch.Tensor, valid: torch.Tensor):
    """Stable sort of each group by distance ascending, padding last: (s, d, valid) in sorted order."""
    key = torch.where(valid, dists, torch.full_like(dists, float("inf")))
    order = torch.sort(key, dim=1, stable=True).indices
    return scores.gather(1, order), key.gather(1, order), valid.gather(1, order)


def _tail_logsumexp(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """out[..., m] = log Σ_{n >= m, valid} exp x[..., n] (finite fill for invalid entries)."""
    filled = torch.where(valid, x, torch.full_like(x, _NEG))
    return torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)


def _reduce(per_group: torch.Tensor, has_signal: torch.Tensor, reduction: str) -> torch.Tensor:
    per_group = torch.where(has_signal, per_group, torch.zeros_like(per_group))
    if reduction == "none":
        return per_group
    if reduction == "sum":
        return per_group.sum()
    if reduction != "mean":
        raise ValueError(f"unknown reduction '{reduction}' (mean, sum or none)")
    n = has_signal.sum()
    return per_group.sum() / n.clamp(min=1).to(per_group.dtype)


def _first_order(s: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """Per-group L1 on sorted scores ``s`` with validity ``v`` (valid entries first)."""
    G = s.shape[1]
    n = v.sum(1)
    tail = _tail_logsumexp(s, v)
    pos = torch.arange(G, device=s.device)
    use = (pos[None, :] < k) & v  # first K valid positions
    terms = torch.where(use, s - tail, torch.zeros_like(s))
    k_eff = torch.clamp(torch.minimum(n, torch.full_like(n, k)), min=1).to(s.dtype)
    return -terms.sum(1) / k_eff


def _pairs(G: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair positions (i<j, i<K) in enumeration order: i ascending, then j ascending."""
    ii, jj = [], []
    for i in range(min(k, G)):
        for j in range(i + 1, G):
            ii.append(i)
            jj.append(j)
    return torch.tensor(ii, dtype=torch.long, device=device), torch.tensor(jj, dtype=torch.long, device=device)


def _second_order(s: torch.Tensor, d: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """Per-group L2 on sorted scores/distances (valid entries first)."""
    B, G = s.shape
    pi, pj = _pairs(G, k, s.device)
    if pi.numel() == 0:
        return torch.zeros(B, dtype=s.dtype, device=s.device)
    pv = v[:, pi] & v[:, pj]
    ds = s[:, pi] - s[:, pj]
    dd = torch.where(pv, d[:, pi] - d[:, pj], torch.full_like(ds, float("inf")))
    order = torch.sort(dd, dim=1, stable=True).indices
    ds = ds.gather(1, order)
    pv = pv.gather(1, order)
    tail = _tail_logsumexp(ds, pv)
    terms = torch.where(pv, ds - tail, torch.zeros_like(ds))
    p = pv.sum(1).clamp(min=1).to(s.dtype)
    return -terms.sum(1) / p


def first_order_loss(
    scores: torch.Tensor, dists: torch.Tensor, k: int = 1, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """First-order (listwise) Plackett–Luce loss over the first ``k`` distance-sorted positions."""
    _check_k(k)
    scores, dists, valid = _prepare(scores, dists, mask)
    s, _, v = sort_by_distance(scores, dists, valid)
    return _reduce(_first_order(s, v, k), v.sum(1) >= 2, reduction)


def second_order_loss(
    scores: torch.Tensor, dists: torch.Tensor, k: int = 1, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Second-order Plackett–Luce loss over score differences ordered by distance differences."""
    _check_k(k)
    scores, dists, valid = _prepare(scores, dists, mask)
    s, d, v = sort_by_distance(scores, dists, valid)
    return _reduce(_second_order(s, d, v, k), v.sum(1) >= 2, reduction)


def multi_order_loss(
    scores: torch.Tensor,
    dists: torch.Tensor,
    lam: float = 0.7,
    k: int = 1,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """GeoRanker's multi-order distance loss ``λ·L1 + (1-λ)·L2`` (see the module docstring)."""
    _check_k(k)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    scores, dists, valid = _prepare(scores, dists, mask)
    s, d, v = sort_by_distance(scores, dists, valid)
    per_group = lam * _first_order(s, v, k) + (1.0 - lam) * _second_order(s, d, v, k)
    return _reduce(per_group, v.sum(1) >= 2, reduction)


def pointwise_loss(
    scores: torch.Tensor, dists: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Pointwise regression baseline: each score regresses ``-log(1 + d)`` (squared error, group mean)."""
    scores, dists, valid = _prepare(scores, dists, mask)
    target = -torch.log1p(torch.where(valid, dists.clamp(min=0), torch.zeros_like(dists)))
    err = torch.where(valid, (scores - target) ** 2, torch.zeros_like(scores))
    n = valid.sum(1)
    per_group = err.sum(1) / n.clamp(min=1).to(scores.dtype)
    return _reduce(per_group, n >= 1, reduction)


def pairwise_margin_loss(
    scores: torch.Tensor,
    dists: torch.Tensor,
    margin: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pairwise hinge baseline: for every pair with ``d_a < d_b``, ``max(0, margin - (s_a - s_b))``.

    Pairs at equal distance carry no preference and are left out; the loss is the mean over a
    group's ordered pairs.
    """
    scores, dists, valid = _prepare(scores, dists, mask)
    closer = (dists[:, :, None] < dists[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    hinge = torch.relu(margin - (scores[:, :, None] - scores[:, None, :]))
    hinge = torch.where(closer, hinge, torch.zeros_like(hinge))
    n = closer.sum((1, 2))
    per_group = hinge.sum((1, 2)) / n.clamp(min=1).to(scores.dtype)
    return _reduce(per_group, n >= 1, reduction)


def _check_k(k: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")


#: loss name -> builder(lam, k, margin) -> fn(scores, dists, mask) -> scalar
LOSSES: dict[str, Callable[..., Callable[..., torch.Tensor]]] = {
    "multi-order": lambda lam=0.7, k=1, margin=1.0: (
        lambda s, d, mask=None: multi_order_loss(s, d, lam=lam, k=k, mask=mask)
    ),
    "first-order": lambda lam=0.7, k=1, margin=1.0: (lambda s, d, mask=None: first_order_loss(s, d, k=k, mask=mask)),
    "second-order": lambda lam=0.7, k=1, margin=1.0: (
        lambda s, d, mask=None: second_order_loss(s, d, k=k, mask=mask)
    ),
    "pointwise": lambda lam=0.7, k=1, margin=1.0: (lambda s, d, mask=None: pointwise_loss(s, d, mask=mask)),
    "pairwise": lambda lam=0.7, k=1, margin=1.0: (
        lambda s, d, mask=None: pairwise_margin_loss(s, d, margin=margin, mask=mask)
    ),
}


def get_loss(name: str, lam: float = 0.7, k: int = 1, margin: float = 1.0) -> Callable[..., torch.Tensor]:
    """The loss ``name`` (multi-order, first-order, second-order, pointwise, pairwise) as ``fn(scores, dists, mask=None)``."""
    from ..core.errors import GeobuildError

    if name not in LOSSES:
        raise GeobuildError(f"unknown loss '{name}'; choose one of: {', '.join(LOSSES)}")
    _check_k(k)
    return LOSSES[name](lam=lam, k=k, margin=margin)
