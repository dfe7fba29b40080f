"""Decisions on computed numbers: the optimum and its derivatives do not depend on the last bits.

The closed-form optimum decides, from singular values that LAPACK computes, which values are
tied, which are zero and which piece of the prox each lies on; `rho` and the rank are decided
from its output. Each decision takes the tolerance `structdrop.ksupport.TIE_RTOL` (docs/theory.md,
"Decisions on computed numbers"). Here the inputs sit exactly at ties, zeros and kinks, where
the last bits of another BLAS kernel (`make test-numerics` runs this file under each) or a nudge
of a few ulps would otherwise change the answer.

Oracles: the unnudged computation (nudges of 4 ulps move values by about 1e-15 relative;
1e-12 leaves room for the SVD's own rounding), central finite differences
(`torch.autograd.gradcheck`) at points where the map is differentiable, and, at a kink, the
derivatives of the two pieces that meet there, taken 1e-6 away on either side.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import structdrop as sd
from oracles import gradcheck_optimum
from structdrop.ksupport import TIE_RTOL


def _problem(singular_values, rows=4, inputs=5, seed=1):
    """Y (rows x 5) with the given singular values (the rest exactly zero) and X (inputs x 5)."""
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    q2, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    n = len(singular_values)
    Y = q1[:, :n] @ np.diag(singular_values) @ q2[:n]
    return rng.standard_normal((inputs, 5)), Y


# (singular values of Y, law, width): each sits on a tie, a zero or a kink of the prox.
DEGENERATE = {
    "tie in the head, g flat at k": ((4.0, 4.0, 1.0), sd.GridBlock(0.5, 2), 4),
    "tie in the middle": ((10.0, 1.0, 1.0), sd.GridBlock(0.5, 2), 2),
    "tie in the soft threshold": ((3.0, 3.0, 1.0), sd.Bernoulli(0.5), 2),
    "triple tie on the ridge": ((4.0, 4.0, 4.0), sd.GridBlock(0.3, 4), 4),
    "two zeros on the ridge": ((2.0, 1.0), sd.GridBlock(0.3, 4), 4),
    "two zeros, soft threshold": ((2.0, 1.0), sd.Bernoulli(0.5), 2),
    "zeros with no block left": ((4.0, 2.0, 1.0), sd.GridBlock(0.25, 3), 3),
    "kink: m_2 = tau": ((3.0, 1.0, 0.2), sd.Bernoulli(0.5), 2),
}


def _gradient(X, Y, scheme, width, weights):
    """The gradient with respect to (X, Y) of <weights, A*> + F* + ||x||^2 (three outputs)."""
    Xt = torch.tensor(X, requires_grad=True)
    Yt = torch.tensor(Y, requires_grad=True)
    opt = sd.global_minimum(Xt, Yt, scheme, width)
    total = (opt.prediction * torch.from_numpy(weights)).sum() + opt.value
    total = total + (opt.singular_values**2).sum()
    total.backward()
    return opt, Xt.grad.numpy(), Yt.grad.numpy()


def _nudged(array, rng, ulps=4):
    """Each entry moved by up to ``ulps`` units in the last place."""
    steps = rng.integers(-ulps, ulps + 1, size=array.shape)
    return array + steps * np.spacing(array)


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_a_nudge_of_a_few_ulps_changes_no_decision_and_no_derivative(case):
    sv, scheme, width = DEGENERATE[case]
    X, Y = _problem(sv)
    weights = np.random.default_rng(2).standard_normal(Y.shape)
    ref, ref_gx, ref_gy = _gradient(X, Y, scheme, width, weights)
    rng = np.random.default_rng(3)
    for _ in range(6):
        opt, gx, gy = _gradient(_nudged(X, rng), _nudged(Y, rng), scheme, width, weights)
        assert (opt.rho, opt.rank) == (ref.rho, ref.rank)
        scale = float(ref.target_singular_values.detach().max())
        np.testing.assert_allclose(
            opt.singular_values.detach().numpy(), ref.singular_values.detach().numpy(),
            rtol=0, atol=1e-12 * scale,
        )  # fmt: skip
        # Derivatives from divided differences over gaps >= TIE_RTOL: 1e-6 is ample (the
        # gradient with respect to an X of full rank is 0 up to rounding: one common scale).
        largest = max(np.abs(ref_gx).max(), np.abs(ref_gy).max())
        np.testing.assert_allclose(gx, ref_gx, rtol=0, atol=1e-6 * largest)
        np.testing.assert_allclose(gy, ref_gy, rtol=0, atol=1e-6 * largest)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in DEGENERATE if not c.startswith("kink")])
@pytest.mark.parametrize("shape", [(4, 5), (4, 3)], ids=["X 5x5", "X 3x5"])
def test_gradients_at_ties_and_zeros_match_finite_differences(case, shape):
    """Away from kinks the map is differentiable at ties and zeros: central differences agree.

    With X of rank 5 the zero singular values of Y P lie in Y's own null space; with X of
    rank 3 < 4 rows, W has fewer columns than Y has rows and the complement terms are reached.
    """
    sv, scheme, width = DEGENERATE[case]
    X, Y = _problem(sv, *shape)
    for field in ("prediction", "weights", "value"):
        gradcheck_optimum(X, Y, scheme, width, field)


def test_at_a_kink_the_derivative_is_that_of_the_larger_tau_side():
    """(3, 1, 0.2) with beta = 1/2, k = 1: tau = beta 3 / (1 + beta) = 1 = m_2, a kink.

    The documented choice: the unit at the kink counts as zero (the piece of larger tau), so the
    derivative is the one taken just below the kink, and differs from the one just above it.
    """
    scheme, width = sd.Bernoulli(0.5), 2
    X, Y = _problem((3.0, 1.0, 0.2))
    weights = np.random.default_rng(2).standard_normal(Y.shape)
    _, gx, gy = _gradient(X, Y, scheme, width, weights)
    _, below_x, below_y = _gradient(*_problem((3.0, 1.0 - 1e-6, 0.2)), scheme, width, weights)
    _, _, above_y = _gradient(*_problem((3.0, 1.0 + 1e-6, 0.2)), scheme, width, weights)
    # Within a piece the derivative moves by O(1e-6) over a step of 1e-6.
    np.testing.assert_allclose(gy, below_y, atol=1e-4)
    np.testing.assert_allclose(gx, below_x, atol=1e-4)
    assert np.abs(gy - above_y).max() > 1e-2  # the other side is another derivative


def test_a_zero_has_the_ridge_slope_only_when_a_block_is_left_for_it():
    """k > #positive: a new singular value is shrunk by 1/(1+beta); k = #positive: it stays 0.

    Checked on the prox itself, with exact zeros and with LAPACK-sized zeros alike.
    """
    beta = 0.5
    for zero in (0.0, 1e-17):
        m = np.array([4.0, 2.0, 1.0, zero])
        ridge = sd.ksupport.prox_parts(m, beta, 4)
        assert ridge.slope[3] == pytest.approx(1.0 / (1.0 + beta))
        full = sd.ksupport.prox_parts(m, beta, 3)
        assert full.slope[3] == 0.0
        np.testing.assert_allclose(full.x[:3], m[:3] / (1.0 + beta), rtol=1e-15)
        # the same decisions as for m with the last value just above zero: a jump of 1e-6
        # leaves the first three on the head, and the last at zero
        nudged = sd.ksupport.prox_parts(m + np.array([0, 0, 0, 1e-6]), beta, 3)
        assert nudged.x[3] == 0.0


def _piece(parts):
    return parts.head.tolist(), parts.middle.tolist(), parts.coupling, parts.slope.tolist()


def test_values_at_most_the_tolerance_are_zeros_in_the_piece():
    """m = (2, 2, 1, 0.3, tiny, 0), k = 5: with tiny at most TIE_RTOL * m_1 there are four
    positive values and a block is left for the zeros (both on the ridge, slope 1/(1+beta)),
    whatever the tiny value's bits; a value above the tolerance is positive (k = #positive: the
    zero stays at zero)."""
    beta, k = 0.1, 5
    m = np.array([2.0, 2.0, 1.0, 0.3, 0.0, 0.0])
    zeros = sd.ksupport.prox_parts(m, beta, k)
    np.testing.assert_allclose(zeros.slope, np.full(6, 1.0 / (1.0 + beta)))
    for tiny in (1e-17, 5e-324, 1e-12, 0.5 * TIE_RTOL * m[0], TIE_RTOL * m[0]):
        m[4] = tiny
        parts = sd.ksupport.prox_parts(m, beta, k)
        assert _piece(parts) == _piece(zeros), tiny
        np.testing.assert_allclose(parts.x, m / (1.0 + beta), rtol=1e-15)
    m[4] = 1e-9 * m[0]
    above = sd.ksupport.prox_parts(m, beta, k)
    assert above.head.tolist() == [True] * 5 + [False]
    assert above.slope[4] == pytest.approx(1.0 / (1.0 + beta)) and above.slope[5] == 0.0


@settings(max_examples=40)
@given(
    values=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    zeros=st.integers(1, 3),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    beta=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
    k=st.integers(1, 7),
)
def test_values_below_the_tolerance_decide_the_piece_as_zeros(values, zeros, fractions, beta, k):
    """Zeros replaced by values in [0, TIE_RTOL * max]: the same piece (slopes, coupling) as
    for exact zeros, and a prox that moves by no more than those values."""
    top = np.sort(np.array(values, dtype=float))[::-1]
    exact = np.concatenate([top, np.zeros(zeros)])
    tiny = np.sort(np.array(fractions[:zeros]) * TIE_RTOL * top[0])[::-1]
    moved = np.concatenate([top, tiny])
    a, b = (sd.ksupport.prox_parts(v, beta, k) for v in (exact, moved))
    assert _piece(b) == _piece(a)
    np.testing.assert_allclose(b.x, a.x, rtol=0, atol=2 * TIE_RTOL * top[0])


@settings(max_examples=40)
@given(
    values=st.lists(st.integers(0, 4), min_size=2, max_size=7),
    beta=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
    k=st.integers(1, 5),
    ulps=st.lists(st.integers(-3, 3), min_size=7, max_size=7),
)
def test_prox_pieces_of_nudged_ties_are_the_pieces_of_the_ties(values, beta, k, ulps):
    """Values from a few levels (many exact ties and zeros), each nudged by a few ulps: the
    piece decided for every entry, and the prox, are those of the unnudged values."""
    m = np.sort(np.array(values, dtype=float))[::-1]
    assume(m[0] > 0)  # a nudge of an all-zero vector is not small relative to its scale
    nudged = m + np.array(ulps[: m.size]) * np.spacing(m)
    nudged = np.sort(np.maximum(nudged, 0.0))[::-1]
    exact, moved = (sd.ksupport.prox_parts(a, beta, k) for a in (m, nudged))
    np.testing.assert_array_equal(moved.head, exact.head)
    np.testing.assert_array_equal(moved.middle, exact.middle)
    assert moved.coupling == exact.coupling
    np.testing.assert_allclose(moved.x, exact.x, rtol=0, atol=1e-14 * max(m.max(), 1.0))
    # tied entries share their piece
    for i in range(m.size - 1):
        if m[i] == m[i + 1]:
            assert (exact.head[i], exact.middle[i]) == (exact.head[i + 1], exact.middle[i + 1])


def test_rho_of_a_tie_does_not_depend_on_its_last_bits():
    # ||(t, t)||_(2): rho = 1 for the tie, and for the tie broken by one ulp either way.
    t = 8.0 / 3.0
    for a in ([t, t], [np.nextafter(t, 9.0), t], [t, np.nextafter(t, 0.0)]):
        assert sd.ksupport.ksupport_split(np.array(a), 2) == 1
    # a real gap, far above the tolerance, is still a gap
    assert sd.ksupport.ksupport_split(np.array([t * (1 + 1e3 * TIE_RTOL), t]), 2) == 2
