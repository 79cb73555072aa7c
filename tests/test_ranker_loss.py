"""The multi-order distance loss and its baselines, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from geobuild.ranker.loss import (
    first_order_loss,
    get_loss,
    multi_order_loss,
    pairwise_margin_loss,
    pointwise_loss,
    second_order_loss,
)

E = math.exp
LOG = math.log


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# One group of G=3: candidate 0 is 300 km away, candidate 1 is 10 km, candidate 2 is 50 km.
# Sorted by distance ascending: (cand1, cand2, cand0) -> s = (2.0, -1.0, 0.5), d = (10, 50, 300).
S = t([[0.5, 2.0, -1.0]])
D = t([[300.0, 10.0, 50.0]])


def test_first_order_k1_by_hand():
    # L1 = -[s(1) - log(e^s(1) + e^s(2) + e^s(3))] = -[2 - log(e^2 + e^-1 + e^0.5)]
    expected = -(2.0 - LOG(E(2.0) + E(-1.0) + E(0.5)))
    assert first_order_loss(S, D, k=1).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2413112966571571, rel=1e-12)


def test_second_order_k1_by_hand():
    # pairs (i=1, j>1): (1,2): Δs = 2-(-1) = 3,   Δd = 10-50  = -40
    #                   (1,3): Δs = 2-0.5   = 1.5, Δd = 10-300 = -290
    # ordered by Δd ascending: (1,3), (1,2) -> Δs = (1.5, 3); P = G-0-1 = 2
    # L2 = -(1/2)[(1.5 - log(e^1.5 + e^3)) + (3 - log(e^3))] = -(1/2)(1.5 - log(e^1.5 + e^3))
    expected = -0.5 * (1.5 - LOG(E(1.5) + E(3.0)))
    assert second_order_loss(S, D, k=1).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.8507066389913762, rel=1e-12)


def test_multi_order_default_is_0_7_l1_plus_0_3_l2():
    l1 = -(2.0 - LOG(E(2.0) + E(-1.0) + E(0.5)))
    l2 = -0.5 * (1.5 - LOG(E(1.5) + E(3.0)))
    assert multi_order_loss(S, D).item() == pytest.approx(0.7 * l1 + 0.3 * l2, rel=1e-12)
    assert multi_order_loss(S, D, lam=1.0).item() == pytest.approx(l1, rel=1e-12)
    assert multi_order_loss(S, D, lam=0.0).item() == pytest.approx(l2, rel=1e-12)


def test_k2_by_hand():
    # L1 = -(1/2)[(2 - log(e^2 + e^-1 + e^0.5)) + (-1 - log(e^-1 + e^0.5))]
    l1 = -0.5 * ((2.0 - LOG(E(2.0) + E(-1.0) + E(0.5))) + (-1.0 - LOG(E(-1.0) + E(0.5))))
    # pairs with i among the first 2 sorted positions:
    #   (1,2): Δs =  3,   Δd = -40
    #   (1,3): Δs =  1.5, Δd = -290
    #   (2,3): Δs = -1.5, Δd = 50-300 = -250
    # ordered by Δd: (1,3) -290, (2,3) -250, (1,2) -40 -> Δs = (1.5, -1.5, 3); P = 2 + 1 = 3
    # L2 = -(1/3)[(1.5 - log(e^1.5 + e^-1.5 + e^3)) + (-1.5 - log(e^-1.5 + e^3)) + (3 - 3)]
    l2 = -(1.0 / 3.0) * ((1.5 - LOG(E(1.5) + E(-1.5) + E(3.0))) + (-1.5 - LOG(E(-1.5) + E(3.0))))
    assert first_order_loss(S, D, k=2).item() == pytest.approx(l1, rel=1e-12)
    assert second_order_loss(S, D, k=2).item() == pytest.approx(l2, rel=1e-12)
    assert multi_order_loss(S, D, lam=0.5, k=2).item() == pytest.approx(0.5 * l1 + 0.5 * l2, rel=1e-12)
    # K >= G: the last position adds a zero term, normalised by K = 3; no extra pairs
    l1_k3 = -(1.0 / 3.0) * ((2.0 - LOG(E(2.0) + E(-1.0) + E(0.5))) + (-1.0 - LOG(E(-1.0) + E(0.5))) + 0.0)
    assert first_order_loss(S, D, k=3).item() == pytest.approx(l1_k3, rel=1e-12)
    assert second_order_loss(S, D, k=3).item() == pytest.approx(l2, rel=1e-12)


def test_distance_ties_keep_candidate_order():
    # candidates 0 and 1 both at 20 km: the stable sort keeps 0 before 1 -> s = (1, 3, 0)
    s, d = t([[1.0, 3.0, 0.0]]), t([[20.0, 20.0, 100.0]])
    l1 = -(1.0 - LOG(E(1.0) + E(3.0) + E(0.0)))
    assert first_order_loss(s, d, k=1).item() == pytest.approx(l1, rel=1e-12)
    # swapping the two tied candidates swaps which one counts as closest
    l1_swapped = -(3.0 - LOG(E(1.0) + E(3.0) + E(0.0)))
    assert first_order_loss(t([[3.0, 1.0, 0.0]]), d, k=1).item() == pytest.approx(l1_swapped, rel=1e-12)
    # second order: (1,2): Δs = 1-3 = -2, Δd = 0; (1,3): Δs = 1, Δd = -80 -> order (1,3), (1,2)
    l2 = -0.5 * (1.0 - LOG(E(1.0) + E(-2.0)))
    assert second_order_loss(s, d, k=1).item() == pytest.approx(l2, rel=1e-12)


def test_pair_ties_keep_enumeration_order():
    # d = (10, 30, 30): both pairs have Δd = -20 -> they keep order (1,2), (1,3); s sorted = (0, 1, 2)
    # Δs = (0-1, 0-2) = (-1, -2); L2 = -(1/2)[(-1 - log(e^-1 + e^-2)) + 0]
    s, d = t([[0.0, 1.0, 2.0]]), t([[10.0, 30.0, 30.0]])
    expected = -0.5 * (-1.0 - LOG(E(-1.0) + E(-2.0)))
    assert second_order_loss(s, d, k=1).item() == pytest.approx(expected, rel=1e-12)
    other_order = -0.5 * (-2.0 - LOG(E(-2.0) + E(-1.0)))
    assert expected != pytest.approx(other_order)


def test_mask_equals_unpadded_and_batch_mean():
    s3, d3 = S, D
    s5 = t([[0.5, 9.0, 2.0, -4.0, -1.0]])
    d5 = t([[300.0, 1.0, 10.0, 2.0, 50.0]])
    m5 = torch.tensor([[True, False, True, False, True]])
    for fn in (multi_order_loss, first_order_loss, second_order_loss, pointwise_loss, pairwise_margin_loss):
        assert fn(s5, d5, mask=m5).item() == pytest.approx(fn(s3, d3).item(), rel=1e-12), fn.__name__
    # batch mean over groups; a group with a single valid candidate carries no signal and is left out
    other_s, other_d = t([[1.0, 0.0, -2.0]]), t([[5.0, 6.0, 7.0]])
    batch_s = torch.cat([S, other_s, t([[4.0, 0.0, 0.0]])])
    batch_d = torch.cat([D, other_d, t([[1.0, 2.0, 3.0]])])
    mask = torch.tensor([[True] * 3, [True] * 3, [True, False, False]])
    got = multi_order_loss(batch_s, batch_d, mask=mask).item()
    want = 0.5 * (multi_order_loss(S, D).item() + multi_order_loss(other_s, other_d).item())
    assert got == pytest.approx(want, rel=1e-12)
    # non-finite distances count as padding
    assert multi_order_loss(s5, t([[300.0, float("nan"), 10.0, float("inf"), 50.0]])).item() == pytest.approx(
        multi_order_loss(S, D).item(), rel=1e-12
    )


def test_permutation_invariant_without_ties():
    torch.manual_seed(0)
    s, d = torch.randn(4, 7, dtype=torch.float64), torch.rand(4, 7, dtype=torch.float64) * 1000
    perm = torch.randperm(7)
    for k in (1, 3):
        assert multi_order_loss(s, d, k=k).item() == pytest.approx(multi_order_loss(s[:, perm], d[:, perm], k=k).item())


def test_gradient_sanity():
    s = S.clone().requires_grad_(True)
    for fn in (multi_order_loss, first_order_loss, second_order_loss, pairwise_margin_loss):
        s.grad = None
        loss = fn(s, D) if fn is not pairwise_margin_loss else fn(s, D, margin=5.0)
        loss.backward()
        # candidate 1 is the closest: raising its score lowers the loss, so its gradient is negative
        assert s.grad[0, 1] < 0, fn.__name__
        # and the farthest candidate's gradient is positive
        assert s.grad[0, 0] > 0, fn.__name__
    base = multi_order_loss(S, D).item()
    bumped = S.clone()
    bumped[0, 1] += 0.5
    assert multi_order_loss(bumped, D).item() < base
    # a perfect ranking with large margins drives the loss toward 0
    good = t([[-20.0, 20.0, 0.0]])
    assert multi_order_loss(good, D).item() < 1e-6


def test_gradients_finite_with_padding_float32():
    torch.manual_seed(1)
    s = torch.randn(6, 9, requires_grad=True)
    d = torch.rand(6, 9) * 500
    m = torch.rand(6, 9) > 0.4
    m[0] = False  # an all-padding group
    loss = multi_order_loss(s, d, k=3, mask=m)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert (s.grad[~m] == 0).all()


def test_baselines_by_hand():
    # pointwise: targets -log(1 + d) = (-log 301, -log 11, -log 51); mean squared error
    expected = ((0.5 + LOG(301)) ** 2 + (2.0 + LOG(11)) ** 2 + (-1.0 + LOG(51)) ** 2) / 3
    assert pointwise_loss(S, D).item() == pytest.approx(expected, rel=1e-12)
    # pairwise hinge (margin 1) over ordered pairs (closer, farther):
    #   (c1, c0): max(0, 1 - (2 - 0.5)) = 0;  (c1, c2): max(0, 1 - 3) = 0;  (c2, c0): max(0, 1 - (-1.5)) = 2.5
    assert pairwise_margin_loss(S, D).item() == pytest.approx(2.5 / 3, rel=1e-12)


def test_get_loss_and_bad_arguments():
    from geobuild.core.errors import GeobuildError

    assert get_loss("multi-order", lam=0.7, k=1)(S, D).item() == pytest.approx(multi_order_loss(S, D).item())
    assert get_loss("first-order")(S, D).item() == pytest.approx(first_order_loss(S, D).item())
    with pytest.raises(GeobuildError, match="unknown loss"):
        get_loss("listnet")
    with pytest.raises(ValueError):
        multi_order_loss(S, D, k=0)
    with pytest.raises(ValueError):
        multi_order_loss(S, D[:, :2])
