"""Tests for the closed-form global optimum and width scaling (structdrop.optimum).

Oracles, all independent of the library:
- CVXPY SDP of min_W ||Y - W X||^2 + beta ||W X||_(r)^2 in a Gram-reduced form (singular values of
  W X equal those of W L with L L^T = X X^T) with the spectral k-support norm written as
  min {tr(B^T T^-1 B) : 0 <= T <= I, tr T <= r} (cp.matrix_frac);
- an exhaustive search over the (rho, lambda) candidates of the paper's Thm 2.7, with rho over
  {1..r}, each scored with the k-support norm computed by the rho rule of Argyriou et al.;
- closed forms for r = 1 (squared-nuclear-norm soft threshold) and r >= rank (ridge).
The factorized network U V^T X trained by L-BFGS is in test_optimum_factorized.py.
"""

import math
import re

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import structdrop as sd
from oracles import (
    CVX_RTOL,
    SOLVER_TOL,
    as_numpy,
    ksupport_sq,
    spectral_ksupport_constraints,
    with_spectrum,
)
from structdrop.schemes import IndependentBlocks

# Closed forms against the library: both are O(n) formulas after an SVD of a matrix with
# entries O(10); rounding is ~1e-14 relative, so 1e-10 leaves a wide margin.
EXACT_RTOL = 1e-10


# ----------------------------------------------------------------------------------------------
# Independent oracles
# ----------------------------------------------------------------------------------------------
def _spectral_objective(m, x, beta, r):
    """F on singular values: ||m - x||^2 + beta ||x||_(r)^2 (same singular vectors)."""
    n = max(len(m), len(x))
    m = np.pad(np.asarray(m, float), (0, n - len(m)))
    x = np.pad(np.asarray(x, float), (0, n - len(x)))
    return float(np.sum((m - x) ** 2) + beta * ksupport_sq(x, r))


def _thm27_candidate(m, beta, r, rho, lam, clip=False):
    """a_{rho, lambda} of Thm 2.7: m_i/(beta+1) for i < rho, m_i - beta S / c on [rho, lambda]."""
    x = np.zeros(len(m))
    if lam <= rho - 1:
        x[:lam] = m[:lam] / (beta + 1.0)
        return x
    x[: rho - 1] = m[: rho - 1] / (beta + 1.0)
    s = m[rho - 1 : lam].sum()
    c = r + beta * lam + (beta + 1.0) * (1 - rho)
    x[rho - 1 : lam] = m[rho - 1 : lam] - beta / c * s
    if clip:
        x = np.maximum(x, 0.0)
    return x


def _thm27_best(m, beta, r, rhos, clip=False):
    """min over rho in rhos, lambda in {1..n} of F(a_{rho, lambda}); None if there is none.

    Every candidate is a feasible point (A = U_Y diag(x) V_Y^T, whose singular values are |x|),
    scored by the true objective, so the minimum is an upper bound on F* and equals F* when the
    optimum is among the candidates.
    """
    m = np.asarray(m, dtype=float)
    best = (_spectral_objective(m, np.zeros_like(m), beta, r), np.zeros_like(m))
    found = False
    for rho in rhos:
        for lam in range(1, len(m) + 1):
            x = _thm27_candidate(m, beta, r, rho, lam, clip=clip)
            found = True
            f = _spectral_objective(m, x, beta, r)
            if f < best[0]:
                best = (f, x)
    return best if found else None


def _soft_threshold_sq_nuclear(m, beta):
    """argmin ||m - x||^2 + beta (sum x)^2 over x >= 0: x = (m - tau)_+, tau = beta * sum x.

    For support size s, tau = beta S_s / (1 + beta s); the valid s has m_s > tau >= m_{s+1}.
    """
    m = np.sort(np.asarray(m, dtype=float))[::-1]
    if beta == 0 or not np.any(m > 0):
        return m.copy()
    for s in range(1, len(m) + 1):
        tau = beta * m[:s].sum() / (1.0 + beta * s)
        nxt = m[s] if s < len(m) else 0.0
        if m[s - 1] > tau >= nxt:
            return np.maximum(m - tau, 0.0)
    raise AssertionError("no consistent support size")


def _projector(X):
    """Orthogonal projector on the row space of X (N x N), via the SVD."""
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    keep = s > 1e-10 * max(s.max(initial=0.0), 1e-300)
    return vt[keep].T @ vt[keep]


def _oracle(X, Y, beta, r):
    """(F*, x*, m, residual) from the projection and the Thm 2.7 search with rho in {1..r}."""
    P = _projector(X)
    residual = float(np.sum((Y - Y @ P) ** 2))
    m = np.linalg.svd(Y @ P, compute_uv=False)
    f, x = _thm27_best(m, beta, r, range(1, r + 1))
    return residual + f, x, m, residual


def _beta(scheme_p, r, width):
    theta = 1.0 - scheme_p
    return (r / width) * (1.0 - theta) / theta


def _cvx_global(X, Y, beta, r):
    """min over W of ||Y - W X||^2 + beta ||W X||_(r)^2, Gram-reduced; returns (value, W X)."""
    a, b = Y.shape[0], X.shape[0]
    lam, Q = np.linalg.eigh(X @ X.T)
    keep = lam > 1e-10 * lam.max()
    L = Q[:, keep] * np.sqrt(lam[keep])  # L L^T = X X^T
    W = cp.Variable((a, b))
    T = cp.Variable((a, a), symmetric=True)
    B = W @ L
    objective = (
        float(np.sum(Y**2))
        - 2 * cp.sum(cp.multiply(W, Y @ X.T))
        + cp.sum_squares(B)
        + beta * cp.matrix_frac(B, T)
    )
    constraints = spectral_ksupport_constraints(T, a, r)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver="CLARABEL", **SOLVER_TOL)
    assert problem.status == "optimal"
    return problem.value, W.value @ X


def _matrix_objective(Y, A, beta, r):
    return float(np.sum((Y - A) ** 2) + beta * ksupport_sq(np.linalg.svd(A, compute_uv=False), r))


def _pad(v, n):
    v = np.asarray(v, dtype=float).ravel()
    return np.pad(v, (0, max(0, n - v.size)))


# ----------------------------------------------------------------------------------------------
# Width scaling (eq. 7) and beta
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tb", [0.1, 0.5, 0.8, 0.95])
@pytest.mark.parametrize(("r", "width"), [(1, 1), (1, 7), (2, 6), (5, 80), (3, 3)])
def test_keep_prob_for_width_is_eq7(tb, r, width):
    theta = sd.keep_prob_for_width(tb, r, width)
    # (1-theta)/theta = (d/r)(1-tb)/tb: a few flops, 1e-12 relative.
    assert (1 - theta) / theta == pytest.approx((width / r) * (1 - tb) / tb, rel=1e-12)
    assert theta == pytest.approx(tb * r / (tb * r + (1 - tb) * width), rel=1e-12)
    assert 0 < theta <= 1
    # theta(r) = tb, and the width-free beta of eq. 8 is (1-tb)/tb.
    assert sd.keep_prob_for_width(tb, r, r) == pytest.approx(tb, rel=1e-12)
    scheme = sd.GridBlock(1 - theta, r) if r > 1 else sd.Bernoulli(1 - theta)
    assert sd.regularization_strength(scheme, width) == pytest.approx((1 - tb) / tb, rel=1e-10)


def test_keep_prob_for_width_decreases_with_width():
    thetas = [sd.keep_prob_for_width(0.7, 2, d) for d in (2, 4, 8, 16)]
    assert np.all(np.diff(thetas) < 0)


@pytest.mark.parametrize(
    ("scheme", "width", "want"),
    [
        (sd.Bernoulli(0.3), 6, (1 / 6) * 0.3 / 0.7),
        (sd.GridBlock(0.3, 2), 6, (2 / 6) * 0.3 / 0.7),
        (sd.GridBlock(0.5, 5), 80, (5 / 80) * 1.0),
        (sd.GridBlock(0.5, 1), 4, 0.25),
        (sd.Bernoulli(0.0), 3, 0.0),
    ],
)
def test_regularization_strength(scheme, width, want):
    # beta = (r/d)(1-theta)/theta; a few flops, 1e-12 relative.
    assert sd.regularization_strength(scheme, width) == pytest.approx(want, rel=1e-12, abs=0)


# ----------------------------------------------------------------------------------------------
# Global minimum against CVXPY
# ----------------------------------------------------------------------------------------------
def _case(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "N<b":  # X full column rank, row space everything: residual 0
        X, Y = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
        return X, Y, sd.GridBlock(0.5, 2), 4
    if name == "N>b noisy":  # Y = W0 X + noise, so Y(I - P) != 0
        X = rng.standard_normal((4, 8))
        Y = rng.standard_normal((3, 4)) @ X + 0.5 * rng.standard_normal((3, 8))
        return X, Y, sd.GridBlock(0.3, 2), 6
    if name == "X rank 2":  # rank-deficient X (5 x 9, rank 2)
        X = rng.standard_normal((5, 2)) @ rng.standard_normal((2, 9))
        Y = rng.standard_normal((3, 9))
        return X, Y, sd.Bernoulli(0.4), 5
    if name == "X rank 3, r=2":
        X = rng.standard_normal((5, 3)) @ rng.standard_normal((3, 7))
        Y = rng.standard_normal((4, 7))
        return X, Y, sd.GridBlock(0.6, 2), 4
    if name == "dominant head":  # rho* = r = 2
        X = rng.standard_normal((4, 4))
        return X, with_spectrum(rng, [10.0, 1.0, 1.0], 4), sd.GridBlock(2 / 3, 2), 4
    raise KeyError(name)


@pytest.mark.parametrize("name", ["N<b", "N>b noisy", "X rank 2", "dominant head"])
def test_global_minimum_matches_cvxpy_sdp(name):
    X, Y, scheme, width = _case(name)
    r = scheme.sampler.block_size
    opt = sd.global_minimum(X, Y, scheme, width)
    beta = _beta(scheme.p, r, width)
    value_cvx, A_cvx = _cvx_global(X, Y, beta, r)
    A = as_numpy(opt.prediction)
    # Value: SDP accuracy, CVX_RTOL.
    assert float(opt.value) == pytest.approx(value_cvx, rel=CVX_RTOL)
    # Prediction: F is 2-strongly convex in A, so ||A_cvx - A*||^2 <= F(A_cvx) - F*; this bounds
    # the distance by the solver's own suboptimality (1e-12 * F covers rounding).
    gap = _matrix_objective(Y, A_cvx, beta, r) - float(opt.value)
    assert np.sum((A_cvx - A) ** 2) <= gap + 1e-12 * float(opt.value)
    # Singular values: Mirsky's inequality, ||sigma(A) - sigma(B)||_2 <= ||A - B||_F.
    s_cvx = np.linalg.svd(A_cvx, compute_uv=False)
    n = max(s_cvx.size, as_numpy(opt.singular_values).size)
    dist = np.linalg.norm(_pad(s_cvx, n) - _pad(as_numpy(opt.singular_values), n))
    assert dist <= math.sqrt(max(gap, 0.0) + 1e-12 * float(opt.value))
    if name == "N>b noisy":
        assert float(opt.residual) > 0.1  # the noise really leaves the row space


# ----------------------------------------------------------------------------------------------
# Global minimum: structure and value, recomputed independently
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["N<b", "N>b noisy", "X rank 2", "X rank 3, r=2", "dominant head"])
def test_global_minimum_fields_recomputed(name):
    X, Y, scheme, width = _case(name)
    r = scheme.sampler.block_size
    opt = sd.global_minimum(X, Y, scheme, width)
    beta = _beta(scheme.p, r, width)
    f_star, x_star, m, residual = _oracle(X, Y, beta, r)
    A, W = as_numpy(opt.prediction), as_numpy(opt.weights)
    x = as_numpy(opt.singular_values)
    n = max(m.size, x.size, as_numpy(opt.target_singular_values).size)
    scale = float(np.sum(Y**2))

    assert opt.beta == pytest.approx(beta, rel=1e-12)
    assert opt.block_size == r
    assert opt.width == width
    assert A.shape == Y.shape
    assert W.shape == (Y.shape[0], X.shape[0])
    # A* = W* X, A* in the row space of X; rounding of products of O(1) matrices: 1e-10.
    np.testing.assert_allclose(W @ X, A, atol=1e-10 * math.sqrt(scale))
    np.testing.assert_allclose(A @ _projector(X), A, atol=1e-10 * math.sqrt(scale))
    # Residual and target singular values (of Y P).
    assert float(opt.residual) == pytest.approx(residual, rel=EXACT_RTOL, abs=1e-10 * scale)
    np.testing.assert_allclose(
        _pad(as_numpy(opt.target_singular_values), n), _pad(m, n), atol=1e-10 * m.max()
    )
    # Singular values: those of the prediction, and the Thm 2.7 search's optimum.
    np.testing.assert_allclose(
        _pad(np.linalg.svd(A, compute_uv=False), n), _pad(x, n), atol=1e-10 * m.max()
    )
    np.testing.assert_allclose(_pad(x, n), _pad(x_star, n), atol=1e-10 * m.max())
    assert np.all(np.diff(x) <= 1e-12 * m.max())  # descending
    # Value three ways: oracle, from the singular values, from the prediction.
    assert float(opt.value) == pytest.approx(f_star, rel=EXACT_RTOL)
    from_sv = float(opt.residual) + _spectral_objective(_pad(m, n), _pad(x, n), beta, r)
    assert float(opt.value) == pytest.approx(from_sv, rel=EXACT_RTOL)
    assert float(opt.value) == pytest.approx(_matrix_objective(Y, A, beta, r), rel=EXACT_RTOL)
    # Same singular vectors as Y P: A (Y P)^T = U diag(x m) U^T is symmetric PSD.
    S = A @ (Y @ _projector(X)).T
    np.testing.assert_allclose(S, S.T, atol=1e-9 * scale)
    assert np.linalg.eigvalsh(0.5 * (S + S.T)).min() >= -1e-9 * scale
    # rank = lambda* = number of nonzero singular values.
    assert opt.rank == int(np.sum(x_star > 1e-9 * m.max()))


_sizes = st.tuples(
    st.integers(1, 4), st.integers(1, 5), st.integers(1, 8), st.integers(1, 3), st.integers(1, 3)
)


@settings(max_examples=25, deadline=None)
@given(
    sizes=_sizes,
    p=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    grid=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_global_minimum_property_matches_thm27_search(sizes, p, grid, seed):
    a, b, N, r, blocks = sizes
    if not grid:
        r = 1
    width = r * blocks
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((b, N))
    Y = rng.standard_normal((a, N)) * 10.0 ** rng.uniform(-2, 2)
    scheme = sd.GridBlock(p, r) if grid else sd.Bernoulli(p)
    opt = sd.global_minimum(X, Y, scheme, width)
    f_star, x_star, m, _ = _oracle(X, Y, _beta(p, r, width), r)
    n = max(m.size, as_numpy(opt.singular_values).size)
    # EXACT_RTOL (closed forms); absolute floor 1e-12 of ||Y||^2 for value ~ 0 when p = 0.
    assert float(opt.value) == pytest.approx(f_star, rel=EXACT_RTOL, abs=1e-12 * np.sum(Y**2))
    np.testing.assert_allclose(
        _pad(as_numpy(opt.singular_values), n), _pad(x_star, n), atol=1e-10 * max(m.max(), 1e-300)
    )


def test_zero_target_gives_zero_optimum():
    X = np.random.default_rng(0).standard_normal((3, 5))
    opt = sd.global_minimum(X, np.zeros((2, 5)), sd.GridBlock(0.5, 2), 4)
    assert float(opt.value) == 0.0
    assert np.all(as_numpy(opt.prediction) == 0.0)
    assert opt.rank == 0


# ----------------------------------------------------------------------------------------------
# Special cases: r = 1 (squared nuclear norm), r >= rank (ridge)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", [sd.Bernoulli(0.5), sd.GridBlock(0.5, 1), sd.Bernoulli(0.8)])
def test_r1_is_squared_nuclear_norm_soft_threshold(scheme):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((6, 5))  # full column rank: P = I
    Y = with_spectrum(rng, [4.0, 3.0, 1.5, 0.4], 5)
    width = 3
    beta = _beta(scheme.p, 1, width)
    opt = sd.global_minimum(X, Y, scheme, width)
    want = _soft_threshold_sq_nuclear([4.0, 3.0, 1.5, 0.4], beta)
    # Closed form: EXACT_RTOL scaled to the largest singular value.
    np.testing.assert_allclose(_pad(as_numpy(opt.singular_values), 4), want, atol=1e-10 * 4.0)
    assert want[-1] == 0.0  # the threshold really cuts (the case is not plain shrinkage)
    assert opt.rho == 1
    assert opt.rank == int(np.sum(want > 0))
    # The paper's Thm 2.7 takes rho in {1..r-1}: for r = 1 there is no candidate at all.
    assert _thm27_best(np.array([4.0, 3.0, 1.5, 0.4]), beta, 1, range(1, 1)) is None


@pytest.mark.parametrize(("r", "width"), [(2, 4), (3, 6), (4, 4)])
def test_r_at_least_rank_is_ridge(r, width):
    rng = np.random.default_rng(12)
    X = rng.standard_normal((6, 5))  # full column rank
    Y = with_spectrum(rng, [5.0, 0.5], 5)  # rank 2 <= r
    scheme = sd.GridBlock(0.4, r)
    beta = _beta(0.4, r, width)
    opt = sd.global_minimum(X, Y, scheme, width)
    # Ridge m/(1+beta); prediction Y/(1+beta) (P = I). Closed form: 1e-10.
    np.testing.assert_allclose(
        _pad(as_numpy(opt.singular_values), 2)[:2], np.array([5.0, 0.5]) / (1 + beta), rtol=1e-10
    )
    np.testing.assert_allclose(as_numpy(opt.prediction), Y / (1 + beta), atol=1e-10 * 5.0)
    assert opt.rank == 2


# ----------------------------------------------------------------------------------------------
# The paper's Thm 2.7 and its corrections (docs/theory.md)
# ----------------------------------------------------------------------------------------------
def _dominant_head_problem():
    # Worked example (docs/theory.md#rho-rule): m = (10, 1, 1), r = 2, beta = 1 gives
    # x = (5, 1/3, 1/3), rho* = 2 = r.
    # beta = (r/d)(1-theta)/theta = 1 at d = 4 needs (1-theta)/theta = 2: p = 2/3.
    rng = np.random.default_rng(13)
    X = rng.standard_normal((4, 3))  # full column rank: P = I
    Y = with_spectrum(rng, [10.0, 1.0, 1.0], 3)
    return X, Y, sd.GridBlock(2 / 3, 2), 4


def test_dominant_head_worked_example_and_paper_rho_range_is_suboptimal():
    X, Y, scheme, width = _dominant_head_problem()
    opt = sd.global_minimum(X, Y, scheme, width)
    m = np.array([10.0, 1.0, 1.0])
    assert opt.beta == pytest.approx(1.0, rel=1e-12)
    # Exact numbers (rounding only): 1e-10.
    np.testing.assert_allclose(as_numpy(opt.singular_values)[:3], [5.0, 1 / 3, 1 / 3], rtol=1e-10)
    f_star = 25.0 + 2 * (2 / 3) ** 2 + (25.0 + (2 / 3) ** 2)  # ||m-x||^2 + ||x||_(2)^2
    assert float(opt.value) == pytest.approx(f_star, rel=1e-10)
    assert opt.rho == 2
    assert opt.rank == 3
    # The paper restricts rho to {1..r-1} = {1}: its best candidate, with or without the
    # thresholding of its proof, is clearly worse than the optimum (57.56 vs 51.33 here).
    for clip in (False, True):
        f_paper, _ = _thm27_best(m, 1.0, 2, range(1, 2), clip=clip)
        assert f_paper > float(opt.value) + 1.0


@pytest.mark.parametrize("name", ["N<b", "N>b noisy", "X rank 3, r=2", "dominant head"])
def test_thm27_with_rho_up_to_r_matches_library(name):
    X, Y, scheme, width = _case(name)
    r = scheme.sampler.block_size
    opt = sd.global_minimum(X, Y, scheme, width)
    m = as_numpy(opt.target_singular_values)
    f, x = _thm27_best(m, float(opt.beta), r, range(1, r + 1))
    # Closed form against closed form: EXACT_RTOL.
    n = max(x.size, as_numpy(opt.singular_values).size)
    np.testing.assert_allclose(
        _pad(as_numpy(opt.singular_values), n), _pad(x, n), atol=1e-10 * m[0]
    )
    assert float(opt.value) == pytest.approx(float(opt.residual) + f, rel=EXACT_RTOL)


def test_prop33_needs_one_over_d():
    # Dropout at width d: min_A ||Y - A||^2 + (1-theta)/(theta d) ||A||_*^2
    # (docs/theory.md#dropout-at-width-d), not the paper's eq. 18 without 1/d. X has full
    # column rank, so A ranges over all a x N matrices.
    rng = np.random.default_rng(14)
    X = rng.standard_normal((5, 4))
    Y = rng.standard_normal((3, 4))
    p, width = 0.5, 4
    c = p / (1 - p)
    A = cp.Variable(Y.shape)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(Y - A) + c / width * cp.square(cp.normNuc(A))))
    problem.solve(solver="CLARABEL", **SOLVER_TOL)
    assert problem.status == "optimal"
    opt = sd.global_minimum(X, Y, sd.Bernoulli(p), width)
    # CVX_RTOL: SDP accuracy.
    assert float(opt.value) == pytest.approx(problem.value, rel=CVX_RTOL)
    m = np.linalg.svd(Y, compute_uv=False)
    x = _soft_threshold_sq_nuclear(m, c / width)
    assert problem.value == pytest.approx(
        float(np.sum((m - x) ** 2) + c / width * x.sum() ** 2), rel=CVX_RTOL
    )
    # Eq. 18 as printed (strength c, no 1/d) gives a value more than 10% away here.
    x18 = _soft_threshold_sq_nuclear(m, c)
    f18 = float(np.sum((m - x18) ** 2) + c * x18.sum() ** 2)
    assert abs(f18 - float(opt.value)) > 0.1 * float(opt.value)


# ----------------------------------------------------------------------------------------------
# Grid vs Bernoulli
# ----------------------------------------------------------------------------------------------
def test_grid_equals_bernoulli_when_rho_is_one_and_differs_for_dominant_head():
    rng = np.random.default_rng(15)
    X = rng.standard_normal((5, 4))
    p, r, width = 0.5, 2, 4
    # Flat spectrum: Dropout's optimum has r x_1 <= sum x, so rho* = 1 and
    # beta_grid ||A||_(r)^2 = (beta_grid / r) ||A||_*^2 = beta_bernoulli ||A||_*^2 there.
    Y = with_spectrum(rng, [3.0, 2.6, 2.2], 4)
    bern = sd.global_minimum(X, Y, sd.Bernoulli(p), width)
    grid = sd.global_minimum(X, Y, sd.GridBlock(p, r), width)
    xb = as_numpy(bern.singular_values)
    assert r * xb[0] <= xb.sum()  # precondition: the case really has rho* = 1
    assert grid.rho == 1
    # Same optimum; closed forms, EXACT_RTOL.
    assert float(grid.value) == pytest.approx(float(bern.value), rel=EXACT_RTOL)
    np.testing.assert_allclose(
        as_numpy(grid.prediction), as_numpy(bern.prediction), atol=1e-10 * 3.0
    )
    # Dominant head: Dropout's optimum has r x_1 > sum x; DropBlock's optimum is strictly worse
    # (its regularizer is >= Dropout's everywhere and larger at Dropout's minimizer).
    Y = with_spectrum(rng, [10.0, 1.0, 1.0], 4)
    bern = sd.global_minimum(X, Y, sd.Bernoulli(p), width)
    grid = sd.global_minimum(X, Y, sd.GridBlock(p, r), width)
    xb = as_numpy(bern.singular_values)
    assert r * xb[0] > xb.sum()
    assert float(grid.value) > float(bern.value) * (1 + 1e-3)
    assert grid.rho == 2


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def _xy():
    rng = np.random.default_rng(3)
    return rng.standard_normal((4, 8)), rng.standard_normal((3, 8))


@pytest.mark.parametrize(
    "scheme",
    [
        sd.SlidingBlock(0.3, 2),
        sd.Discrete(np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]), np.array([0.5, 0.5])),
        sd.DropConnect(0.3),
    ],
)
def test_other_schemes_raise_value_error(scheme):
    X, Y = _xy()
    with pytest.raises(ValueError):
        sd.global_minimum(X, Y, scheme, 4)


class _PairsOfUnits(sd.Scheme):
    """Blocks of two units kept together with probability 1 - p, written from scratch (not a
    GridBlock): the closed form asks the law how it is drawn, not what class it is."""

    def __init__(self, p: float) -> None:
        self.p = p

    @property
    def keep_prob(self) -> float:
        return 1.0 - self.p

    @property
    def sampler(self) -> IndependentBlocks:
        return IndependentBlocks(self.keep_prob, 2)

    def mean(self, d):
        return np.full(d, self.keep_prob)

    def second_moment(self, d):
        theta = self.keep_prob
        return theta * theta + (theta - theta * theta) * np.kron(np.eye(d // 2), np.ones((2, 2)))

    def _sample(self, n, d, rng):
        return np.repeat((rng.random((n, d // 2)) < self.keep_prob).astype(float), 2, axis=1)


def test_any_law_of_independent_blocks_of_units_has_the_closed_form():
    X, Y = _xy()
    ours = sd.global_minimum(X, Y, _PairsOfUnits(0.3), 4)
    grid = sd.global_minimum(X, Y, sd.GridBlock(0.3, 2), 4)
    assert ours.block_size == 2
    assert ours.beta == grid.beta
    assert ours.value == grid.value
    np.testing.assert_array_equal(ours.prediction, grid.prediction)
    assert sd.regularization_strength(_PairsOfUnits(0.3), 4) == pytest.approx(2 / 4 * 0.3 / 0.7)


def test_a_non_law_raises_type_error():
    X, Y = _xy()
    with pytest.raises(TypeError, match=r"scheme must be a structdrop Scheme, got 0\.3"):
        sd.global_minimum(X, Y, 0.3, 4)


def test_mismatched_shapes_raise_value_error_with_the_shapes():
    X, Y = _xy()
    with pytest.raises(ValueError, match=r"7[\s\S]*8|8[\s\S]*7"):
        sd.global_minimum(X, Y[:, :7], sd.Bernoulli(0.3), 4)
    with pytest.raises(ValueError):
        sd.global_minimum(X[0], Y, sd.Bernoulli(0.3), 4)


@pytest.mark.parametrize("which", ["X", "Y"])
def test_nan_inputs_raise_value_error(which):
    X, Y = _xy()
    (X if which == "X" else Y)[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"(?i)nan|finite"):
        sd.global_minimum(X, Y, sd.GridBlock(0.3, 2), 4)


@pytest.mark.parametrize("width", [5, 3, 7])
def test_width_not_multiple_of_block_raises_value_error_naming_it(width):
    X, Y = _xy()
    with pytest.raises(ValueError, match=re.escape(str(width))):
        sd.global_minimum(X, Y, sd.GridBlock(0.3, 2), width)


@pytest.mark.parametrize("width", [0, -2])
def test_nonpositive_width_raises_value_error(width):
    X, Y = _xy()
    with pytest.raises(ValueError, match=re.escape(str(width))):
        sd.global_minimum(X, Y, sd.Bernoulli(0.3), width)


def test_torch_inputs_give_torch_outputs():
    X, Y = _xy()
    ref = sd.global_minimum(X, Y, sd.GridBlock(0.3, 2), 4)
    opt = sd.global_minimum(torch.from_numpy(X), torch.from_numpy(Y), sd.GridBlock(0.3, 2), 4)
    assert isinstance(opt.prediction, torch.Tensor)
    assert isinstance(opt.weights, torch.Tensor)
    assert opt.prediction.dtype == torch.float64
    # Same computation in another array library: 1e-10.
    np.testing.assert_allclose(opt.prediction.numpy(), as_numpy(ref.prediction), atol=1e-10)
    np.testing.assert_allclose(opt.weights.numpy(), as_numpy(ref.weights), atol=1e-10)
    assert float(opt.value) == pytest.approx(float(ref.value), rel=1e-10)
    assert isinstance(ref.prediction, np.ndarray)
