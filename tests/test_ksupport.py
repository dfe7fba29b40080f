"""Tests for the k-support norms and their squared proxes (structdrop.ksupport).

Oracles, all independent of the library:
- the rho rule of Argyriou et al. 2012, Prop. 2.1 (closed form, exact up to rounding);
- CVXPY on the variational form ||w||_(k)^2 = min {sum_i w_i^2 / t_i : 0 <= t <= 1, sum t <= k}
  and on its spectral analogue min {tr(A^T T^-1 A) : 0 <= T <= I, tr T <= k};
- CVXPY on the dual definition ||w||_(k) = max {<w, u> : sqrt(sum of the k largest u_i^2) <= 1};
- for the prox, a bisection on the variational weights t (a derivation that never uses rho).
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
    sorted_abs,
    spectral_ksupport_constraints,
)


# ----------------------------------------------------------------------------------------------
# Independent oracles
# ----------------------------------------------------------------------------------------------
def _eq11_candidates(w, k):
    """Eq. (11) of the paper, sum_{i<rho} a_i^2 + (sum_{i>=rho} a_i)^2 / (k-rho+1), for each rho."""
    a = sorted_abs(w, k)
    return [
        float(np.sum(a[: rho - 1] ** 2) + a[rho - 1 :].sum() ** 2 / (k - rho + 1))
        for rho in range(1, k + 1)
    ]


def _prox_oracle(w, beta, k):
    """argmin_x ||w - x||^2 + beta ||x||_(k)^2 through the variational weights t.

    Minimising jointly over x and t, x_i = w_i t_i / (t_i + beta) and t_i = clip(|w_i| s - beta,
    0, 1) for a multiplier s > 0 fixed by sum t = k (or t = 1 when at most k entries are nonzero).
    s is found by bisection; then the sets {t = 1} and {0 < t < 1} are read off and s is solved
    for exactly on them.
    """
    w = np.asarray(w, dtype=float)
    if beta == 0:
        return w.copy()
    m = np.abs(w)
    if np.count_nonzero(m) <= k:
        return w / (1.0 + beta)
    lo, hi = 0.0, 2.0 * (1.0 + beta) / m[m > 0].min()
    for _ in range(300):
        s = 0.5 * (lo + hi)
        if np.clip(m * s - beta, 0.0, 1.0).sum() > k:
            hi = s
        else:
            lo = s
    t = np.clip(m * 0.5 * (lo + hi) - beta, 0.0, 1.0)
    head = t >= 1.0 - 1e-12
    plateau = (t > 1e-12) & ~head
    x = np.where(head, m / (1.0 + beta), 0.0)
    if plateau.any():
        s_exact = (k - head.sum() + beta * plateau.sum()) / m[plateau].sum()
        x = np.where(plateau, np.maximum(m - beta / s_exact, 0.0), x)
    return np.sign(w) * x


def _cvx_ksq(w, k):
    w = np.asarray(w, dtype=float)
    t = cp.Variable(w.size)
    objective = sum(cp.quad_over_lin(w[i], t[i]) for i in range(w.size))
    problem = cp.Problem(cp.Minimize(objective), [t >= 0, t <= 1, cp.sum(t) <= k])
    problem.solve(solver="CLARABEL", **SOLVER_TOL)
    assert problem.status == "optimal"
    return problem.value


def _cvx_dual_ksq(w, k):
    """Square of max <w, u> over the unit ball of the dual norm sqrt(top-k sum of u_i^2)."""
    w = np.asarray(w, dtype=float)
    u = cp.Variable(w.size)
    problem = cp.Problem(cp.Maximize(w @ u), [cp.sum_largest(cp.square(u), k) <= 1])
    problem.solve(solver="CLARABEL", **SOLVER_TOL)
    assert problem.status == "optimal"
    return problem.value**2


def _cvx_prox(w, beta, k):
    w = np.asarray(w, dtype=float)
    x = cp.Variable(w.size)
    t = cp.Variable(w.size)
    objective = cp.sum_squares(w - x) + beta * sum(
        cp.quad_over_lin(x[i], t[i]) for i in range(w.size)
    )
    problem = cp.Problem(cp.Minimize(objective), [t >= 0, t <= 1, cp.sum(t) <= k])
    problem.solve(solver="CLARABEL", **SOLVER_TOL)
    assert problem.status == "optimal"
    return x.value, problem.value


def _cvx_spectral_ksq(A, k):
    T = cp.Variable((A.shape[0], A.shape[0]), symmetric=True)
    problem = cp.Problem(
        cp.Minimize(cp.matrix_frac(A, T)), spectral_ksupport_constraints(T, A.shape[0], k)
    )
    problem.solve(solver="CLARABEL", **SOLVER_TOL)
    assert problem.status == "optimal"
    return problem.value


def _cvx_spectral_prox(A, beta, k):
    Z = cp.Variable(A.shape)
    T = cp.Variable((A.shape[0], A.shape[0]), symmetric=True)
    objective = cp.sum_squares(A - Z) + beta * cp.matrix_frac(Z, T)
    problem = cp.Problem(cp.Minimize(objective), spectral_ksupport_constraints(T, A.shape[0], k))
    problem.solve(solver="CLARABEL", **SOLVER_TOL)
    assert problem.status == "optimal"
    return Z.value, problem.value


def _prox_objective(w, x, beta, k):
    return float(np.sum((np.asarray(w) - x) ** 2) + beta * ksupport_sq(x, k))


def _spectral_prox_objective(A, Z, beta, k):
    return float(np.sum((A - Z) ** 2) + beta * ksupport_sq(np.linalg.svd(Z, compute_uv=False), k))


def _as_float(value):
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().item())
    return float(value)


# ----------------------------------------------------------------------------------------------
# The oracles agree with each other (so a failure below points at the library)
# ----------------------------------------------------------------------------------------------
def test_oracles_agree_with_each_other():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(6)
    for k in (1, 3):
        ref = ksupport_sq(w, k)
        # Three derivations: rho rule, variational min, dual max; CVX_RTOL as above.
        assert _cvx_ksq(w, k) == pytest.approx(ref, rel=CVX_RTOL)
        assert _cvx_dual_ksq(w, k) == pytest.approx(ref, rel=CVX_RTOL)
    x = _prox_oracle(w, 0.7, 3)
    # The rho rule must certify the bisection prox too: perturbing it never helps.
    f0 = _prox_objective(w, x, 0.7, 3)
    for _ in range(50):
        assert _prox_objective(w, x + 1e-4 * rng.standard_normal(6), 0.7, 3) >= f0 - 1e-12


# ----------------------------------------------------------------------------------------------
# Vector norm
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("w", "k"),
    [
        (np.array([3.0, -1.0, 0.5, 0.0, 2.0]), 2),
        (np.array([1.0, 1.0, 1.0, 1.0]), 3),
        (np.array([10.0, 1.0, 1.0]), 2),
        (np.array([0.3, -4.0, 2.2, 2.2, -0.1, 0.7]), 4),
    ],
)
def test_ksupport_norm_matches_cvxpy_variational_form(w, k):
    got = _as_float(sd.ksupport_norm(w, k)) ** 2
    # CVX_RTOL: interior-point accuracy (see top of file).
    assert got == pytest.approx(_cvx_ksq(w, k), rel=CVX_RTOL)
    # The closed-form rho rule is exact up to rounding: 1e-12 relative.
    assert got == pytest.approx(ksupport_sq(w, k), rel=1e-12)


@pytest.mark.parametrize(
    ("w", "k"),
    [(np.array([2.0, -0.5, 1.5, 0.1]), 2), (np.array([5.0, 4.0, 0.0, -3.0, 1.0]), 3)],
)
def test_ksupport_norm_matches_dual_norm_definition(w, k):
    got = _as_float(sd.ksupport_norm(w, k)) ** 2
    # CVX_RTOL: interior-point accuracy.
    assert got == pytest.approx(_cvx_dual_ksq(w, k), rel=CVX_RTOL)


def test_ksupport_worked_example_and_paper_max_rule_differs():
    w = np.array([1.0, 1.0, 1.0])
    # ||(1,1,1)||_(2)^2 = (1+1+1)^2 / 2 = 4.5 (rho = 1); exact arithmetic, so 1e-12.
    assert _as_float(sd.ksupport_norm(w, 2)) ** 2 == pytest.approx(4.5, rel=1e-12)
    # Thm 2.3's "rho* maximizes (11)" gives rho = 2: 1 + (1+1)^2 / 1 = 5, which is wrong.
    assert max(_eq11_candidates(w, 2)) == pytest.approx(5.0)
    assert _as_float(sd.ksupport_norm(w, 2)) ** 2 < 5.0 - 0.4
    # "minimizes" is wrong too: for (10, 1, 1), k = 2 the norm is 10^2 + 2^2 = 104, rho = 2.
    w2 = np.array([10.0, 1.0, 1.0])
    assert min(_eq11_candidates(w2, 2)) == pytest.approx(72.0)
    assert _as_float(sd.ksupport_norm(w2, 2)) ** 2 == pytest.approx(104.0, rel=1e-12)


def test_ksupport_norm_k1_is_l1_and_large_k_is_l2():
    w = np.array([0.5, -2.0, 0.0, 3.25, -1e-3])
    # Exact identities; rounding only, so 1e-12 relative.
    assert _as_float(sd.ksupport_norm(w, 1)) == pytest.approx(np.abs(w).sum(), rel=1e-12)
    for k in (5, 6, 50):
        assert _as_float(sd.ksupport_norm(w, k)) == pytest.approx(np.linalg.norm(w), rel=1e-12)


def test_ksupport_norm_is_a_norm_between_l2_and_l1_over_sqrt_k():
    rng = np.random.default_rng(3)
    for _ in range(20):
        w = rng.standard_normal(7)
        k = int(rng.integers(1, 8))
        val = _as_float(sd.ksupport_norm(w, k))
        # max(||w||_2, ||w||_1/sqrt k) <= ||w||_(k) <= ||w||_1 (Argyriou et al.); 1e-12 slack.
        lower = max(np.linalg.norm(w), np.abs(w).sum() / math.sqrt(k))
        assert lower * (1 - 1e-12) <= val <= np.abs(w).sum() * (1 + 1e-12)
        # Homogeneity, sign and permutation invariance: exact up to rounding.
        assert _as_float(sd.ksupport_norm(-2.5 * w[::-1], k)) == pytest.approx(2.5 * val, rel=1e-12)


# Values with ties, zeros and a wide dynamic range (1e-6 .. 1e6).
_entries = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.5, -2.5, 1e-6, 1e6]),
    st.floats(min_value=1e-6, max_value=1e6),
    st.floats(min_value=-1e6, max_value=-1e-6),
)
_vectors = st.lists(_entries, min_size=1, max_size=8).map(np.array)


@settings(max_examples=25, deadline=None)
@given(w=_vectors, k=st.integers(min_value=1, max_value=10))
def test_ksupport_norm_property_matches_rho_rule(w, k):
    got = _as_float(sd.ksupport_norm(w, k)) ** 2
    # Both sides are sums of at most 8 terms: relative rounding <= ~1e-15 * 8; 1e-9 is ample
    # and still catches any wrong rho (which changes the value by far more).
    assert got == pytest.approx(ksupport_sq(w, k), rel=1e-9, abs=1e-300)


# ----------------------------------------------------------------------------------------------
# Vector prox
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("w", "beta", "k"),
    [
        (np.array([3.0, -1.0, 0.5, 0.0, 2.0]), 0.8, 2),
        (np.array([10.0, 1.0, 1.0]), 1.0, 2),
        (np.array([0.3, -4.0, 2.2, 2.2, -0.1, 0.7]), 2.5, 3),
        (np.array([1.0, -2.0, 3.0]), 0.3, 1),
    ],
)
def test_prox_matches_cvxpy(w, beta, k):
    got = as_numpy(sd.prox_ksupport_sq(w, beta, k))
    x_cvx, f_cvx = _cvx_prox(w, beta, k)
    f_got = _prox_objective(w, got, beta, k)
    # Value: CVX_RTOL (solver accuracy).
    assert f_got == pytest.approx(f_cvx, rel=CVX_RTOL)
    # Argmin: the objective is 2-strongly convex, so ||x - x*||^2 <= f(x) - f(x*). Applied to the
    # solver's point, this bounds its distance to the library's point without any tolerance
    # guess (1e-12 * f covers rounding in evaluating f).
    gap = _prox_objective(w, x_cvx, beta, k) - f_got
    assert np.sum((x_cvx - got) ** 2) <= gap + 1e-12 * max(f_got, 1.0)
    # The closed-form oracle is exact: 1e-12 relative to the scale of w.
    np.testing.assert_allclose(got, _prox_oracle(w, beta, k), rtol=0, atol=1e-12 * np.abs(w).max())


def test_prox_worked_example():
    # Worked example: m = (10, 1, 1), k = 2, beta = 1 gives (5, 1/3, 1/3): head m_1/(1+beta),
    # plateau m_i - tau with tau = beta * 2 / (2 - 1 + 2 * beta) = 2/3. Exact: 1e-12.
    got = as_numpy(sd.prox_ksupport_sq(np.array([10.0, 1.0, 1.0]), 1.0, 2))
    np.testing.assert_allclose(got, [5.0, 1.0 / 3.0, 1.0 / 3.0], rtol=1e-12)
    got = as_numpy(sd.prox_ksupport_sq(np.array([-1.0, 10.0, -1.0]), 1.0, 2))
    np.testing.assert_allclose(got, [-1.0 / 3.0, 5.0, -1.0 / 3.0], rtol=1e-12)


def test_prox_beta_zero_is_identity_and_k_large_is_ridge_and_k1_soft_threshold():
    w = np.array([0.5, -2.0, 0.0, 3.25, -1e-3])
    np.testing.assert_array_equal(as_numpy(sd.prox_ksupport_sq(w, 0.0, 2)), w)
    # k >= number of nonzeros: ridge w/(1+beta); exact, 1e-12.
    np.testing.assert_allclose(as_numpy(sd.prox_ksupport_sq(w, 0.5, 4)), w / 1.5, rtol=1e-12)
    np.testing.assert_allclose(as_numpy(sd.prox_ksupport_sq(w, 0.5, 9)), w / 1.5, rtol=1e-12)
    # k = 1, beta ||x||_1^2: soft threshold at tau = beta * ||x||_1; support {3.25, -2} here:
    # tau = 0.5 * (5.25 - 2 tau) -> tau = 1.3125. Exact, 1e-12.
    tau = 0.5 * 5.25 / 2.0
    want = np.sign(w) * np.maximum(np.abs(w) - tau, 0.0)
    np.testing.assert_allclose(as_numpy(sd.prox_ksupport_sq(w, 0.5, 1)), want, atol=1e-12)


_betas = st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e3))


@settings(max_examples=25, deadline=None)
@given(w=_vectors, beta=_betas, k=st.integers(min_value=1, max_value=10), seed=st.integers(0, 99))
def test_prox_property_matches_oracle_signs_and_permutations(w, beta, k, seed):
    got = as_numpy(sd.prox_ksupport_sq(w, beta, k))
    scale = np.abs(w).max()
    # The prox is 1-Lipschitz and the oracle is a closed form on the same sets: rounding in the
    # sums of up to 8 entries of size <= 1e6 stays below ~1e-13 * scale; 1e-10 * scale allows
    # for differently ordered sums.
    np.testing.assert_allclose(got, _prox_oracle(w, beta, k), rtol=0, atol=1e-10 * scale)
    # Signs kept, magnitudes shrunk (exact properties).
    assert np.all(got * w >= 0)
    assert np.all(np.abs(got) <= np.abs(w) * (1 + 1e-12))
    # Permutation equivariance: up to rounding of reordered sums, 1e-10 * scale as above.
    perm = np.random.default_rng(seed).permutation(w.size)
    np.testing.assert_allclose(
        as_numpy(sd.prox_ksupport_sq(w[perm], beta, k)), got[perm], rtol=0, atol=1e-10 * scale
    )


# ----------------------------------------------------------------------------------------------
# Spectral norm and prox
# ----------------------------------------------------------------------------------------------
def _spectral_cases():
    rng = np.random.default_rng(7)
    low_rank = rng.standard_normal((4, 2)) @ rng.standard_normal((2, 5))  # rank 2, 4 x 5
    return [
        (rng.standard_normal((4, 3)), 2),
        (rng.standard_normal((3, 5)), 2),
        (low_rank, 3),
    ]


@pytest.mark.parametrize(("A", "k"), _spectral_cases())
def test_spectral_norm_matches_cvxpy_and_singular_values(A, k):
    got = _as_float(sd.spectral_ksupport_norm(A, k)) ** 2
    # CVX_RTOL: SDP accuracy.
    assert got == pytest.approx(_cvx_spectral_ksq(A, k), rel=CVX_RTOL)
    # Same as the vector norm of the singular values (numpy SVD; rounding only).
    assert got == pytest.approx(ksupport_sq(np.linalg.svd(A, compute_uv=False), k), rel=1e-12)


def test_spectral_norm_k1_nuclear_k_large_frobenius():
    A = np.random.default_rng(8).standard_normal((3, 5))
    s = np.linalg.svd(A, compute_uv=False)
    # Exact identities; SVD rounding only, 1e-12 relative.
    assert _as_float(sd.spectral_ksupport_norm(A, 1)) == pytest.approx(s.sum(), rel=1e-12)
    assert _as_float(sd.spectral_ksupport_norm(A, 3)) == pytest.approx(np.linalg.norm(A), rel=1e-12)
    assert _as_float(sd.spectral_ksupport_norm(A, 7)) == pytest.approx(np.linalg.norm(A), rel=1e-12)


@pytest.mark.parametrize(("A", "k"), _spectral_cases())
def test_spectral_prox_matches_cvxpy(A, k):
    beta = 0.9
    got = as_numpy(sd.prox_spectral_ksupport_sq(A, beta, k))
    Z_cvx, f_cvx = _cvx_spectral_prox(A, beta, k)
    f_got = _spectral_prox_objective(A, got, beta, k)
    # Value: CVX_RTOL (SDP accuracy).
    assert f_got == pytest.approx(f_cvx, rel=CVX_RTOL)
    # Argmin by 2-strong convexity, as in test_prox_matches_cvxpy.
    gap = _spectral_prox_objective(A, Z_cvx, beta, k) - f_got
    assert np.sum((Z_cvx - got) ** 2) <= gap + 1e-12 * max(f_got, 1.0)
    # Structure: same singular vectors as A, vector prox on the singular values (rounding only).
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    want = U @ np.diag(_prox_oracle(s, beta, k)) @ Vt
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * s[0])


def test_spectral_prox_beta_zero_identity_and_worked_example():
    rng = np.random.default_rng(9)
    Q1, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    Q2, _ = np.linalg.qr(rng.standard_normal((4, 3)))
    A = Q1 @ np.diag([10.0, 1.0, 1.0]) @ Q2.T
    # beta = 0: identity up to the rounding of an SVD round trip (1e-12).
    np.testing.assert_allclose(as_numpy(sd.prox_spectral_ksupport_sq(A, 0.0, 2)), A, atol=1e-12)
    got = as_numpy(sd.prox_spectral_ksupport_sq(A, 1.0, 2))
    want = Q1 @ np.diag([5.0, 1.0 / 3.0, 1.0 / 3.0]) @ Q2.T
    np.testing.assert_allclose(got, want, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# NumPy / torch
# ----------------------------------------------------------------------------------------------
def test_torch_inputs_give_torch_outputs_with_same_values():
    w = np.array([3.0, -1.0, 0.5, 0.0, 2.0])
    A = np.random.default_rng(10).standard_normal((3, 4))
    wt, At = torch.from_numpy(w), torch.from_numpy(A)

    x_np = sd.prox_ksupport_sq(w, 0.8, 2)
    x_t = sd.prox_ksupport_sq(wt, 0.8, 2)
    assert isinstance(x_np, np.ndarray)
    assert isinstance(x_t, torch.Tensor)
    assert x_t.dtype == torch.float64
    assert x_t.shape == wt.shape
    np.testing.assert_allclose(x_t.numpy(), x_np, rtol=1e-12, atol=1e-15)

    Z_np = sd.prox_spectral_ksupport_sq(A, 0.8, 2)
    Z_t = sd.prox_spectral_ksupport_sq(At, 0.8, 2)
    assert isinstance(Z_np, np.ndarray)
    assert isinstance(Z_t, torch.Tensor)
    assert Z_t.shape == At.shape
    np.testing.assert_allclose(Z_t.numpy(), Z_np, rtol=1e-10, atol=1e-12)

    n_np, n_t = sd.ksupport_norm(w, 2), sd.ksupport_norm(wt, 2)
    assert not isinstance(n_np, torch.Tensor)
    assert np.ndim(n_np) == 0
    assert isinstance(n_t, torch.Tensor)
    assert _as_float(n_t) == pytest.approx(_as_float(n_np), rel=1e-12)
    s_np, s_t = sd.spectral_ksupport_norm(A, 2), sd.spectral_ksupport_norm(At, 2)
    assert not isinstance(s_np, torch.Tensor)
    assert isinstance(s_t, torch.Tensor)
    assert _as_float(s_t) == pytest.approx(_as_float(s_np), rel=1e-10)


def test_numpy_integer_k_is_accepted():
    # A numpy integer is an integer; exact value 4.5 (the worked example), 1e-12.
    w = np.array([1.0, 1.0, 1.0])
    assert _as_float(sd.ksupport_norm(w, np.int64(2))) ** 2 == pytest.approx(4.5, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------
_W = np.array([1.0, -2.0, 3.0])
_A = np.arange(6.0).reshape(2, 3)


def _calls(k=2, beta=0.5, w=_W, A=_A):
    return [
        lambda: sd.ksupport_norm(w, k),
        lambda: sd.prox_ksupport_sq(w, beta, k),
        lambda: sd.spectral_ksupport_norm(A, k),
        lambda: sd.prox_spectral_ksupport_sq(A, beta, k),
    ]


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_raises_value_error_naming_it(k):
    for call in _calls(k=k):
        with pytest.raises(ValueError, match=re.escape(str(k))):
            call()


@pytest.mark.parametrize("k", [1.5, 2.5])
def test_non_integer_k_raises_naming_it(k):
    # A non-integral k is refused; TypeError (Python's convention for a non-integer where an
    # integer is required) or ValueError are both acceptable, the value must be named.
    for call in _calls(k=k):
        with pytest.raises((ValueError, TypeError), match=re.escape(str(k))):
            call()


@pytest.mark.parametrize("beta", [-0.5, -1e-3])
def test_negative_beta_raises_value_error_naming_it(beta):
    for call in _calls(beta=beta)[1::2]:
        with pytest.raises(ValueError, match=re.escape(str(beta))):
            call()


def test_nan_and_inf_inputs_raise_value_error():
    w_nan = np.array([1.0, np.nan, 3.0])
    A_nan = np.array([[1.0, 2.0], [np.inf, 0.0]])
    for call in _calls(w=w_nan, A=A_nan):
        with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
            call()
    with pytest.raises(ValueError, match=r"(?i)nan|finite"):
        sd.prox_ksupport_sq(_W, float("nan"), 2)


def test_empty_inputs_raise_value_error():
    for call in _calls(w=np.array([]), A=np.zeros((0, 3))):
        with pytest.raises(ValueError):
            call()
