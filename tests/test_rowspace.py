"""X's row space by the Gram route or the SVD (_rowspace.py), the closed-form optimum through
either route, and the one-thread policy for small dense work (_threads.py).

Oracles: the SVD route (LAPACK gesdd on X itself, the previous implementation), the projector
``X^+ X`` from NumPy's pinv, and the existing CVXPY and L-BFGS oracles of test_optimum.py, which
now run through the route that ``global_minimum`` picks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info, threadpool_limits

import structdrop as sd
from structdrop import _rowspace, _threads
from structdrop import optimum as optimum_module
from structdrop._arrays import binary_exponent

# Agreement of the routes on well-conditioned data (cond(X) <= 1e3): the Gram route's rounding
# is about eps * cond(X)^2 <= 2.2e-10 relative, so 1e-9 has a margin of ~5x at the worst case.
ROUTES_RTOL = 1e-9


def _data(rng: np.random.Generator, a: int, b: int, n: int, condition: float = 1.0):
    """X (b x N) with singular values spread geometrically from 1 to 1/condition."""
    left, _ = np.linalg.qr(rng.standard_normal((b, min(b, n))))
    right, _ = np.linalg.qr(rng.standard_normal((n, min(b, n))))
    spectrum = np.geomspace(1.0, 1.0 / condition, min(b, n))
    X = (left * spectrum) @ right.T
    Y = rng.standard_normal((a, b)) @ X + 0.1 * rng.standard_normal((a, n))
    return X, Y


def _both_routes(X: np.ndarray, Y: np.ndarray, scheme: sd.Scheme, width: int):
    beta = sd.regularization_strength(scheme, width)
    r = scheme.block_size
    return (
        optimum_module.solve_unit_scale(X, Y, beta, r, route="auto"),
        optimum_module.solve_unit_scale(X, Y, beta, r, route="svd"),
    )


def _assert_same_solution(fast, exact, rtol: float = ROUTES_RTOL) -> None:
    scale = max(np.abs(exact.prediction).max(), 1e-300)
    largest = exact.m[0] if exact.m.size else 0.0
    assert fast.value == pytest.approx(exact.value, rel=rtol)
    np.testing.assert_allclose(fast.parts.x, exact.parts.x, rtol=rtol, atol=rtol * largest)
    np.testing.assert_allclose(fast.m, exact.m, rtol=rtol, atol=rtol * largest)
    np.testing.assert_allclose(fast.prediction, exact.prediction, atol=rtol * scale)
    assert fast.residual == pytest.approx(exact.residual, rel=1e-6, abs=rtol * exact.value)
    assert (fast.rank, fast.rho) == (exact.rank, exact.rho)


@settings(max_examples=40)
@given(
    a=st.integers(1, 12),
    b=st.integers(1, 15),
    n=st.integers(1, 40),
    condition=st.sampled_from([1.0, 10.0, 300.0, 999.0]),
    block=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_gram_route_agrees_with_the_svd_route(a, b, n, condition, block, seed) -> None:
    """Wide and tall X, cond(X) up to the Gram route's limit: same F*, x, m, A*, rank, rho."""
    rng = np.random.default_rng(seed)
    X, Y = _data(rng, a, b, n, condition)
    scheme = sd.GridBlock(0.5, block) if block > 1 else sd.Bernoulli(0.5)
    fast, exact = _both_routes(X, Y, scheme, 6 * block)
    assert fast.space.route.startswith("gram") and exact.space.route == "svd"
    _assert_same_solution(fast, exact)


def test_gram_route_at_the_papers_scale() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 1000))
    Y = rng.standard_normal((80, 50)) @ rng.standard_normal((50, 100)) @ X
    X, Y = X / np.abs(X).max(), Y / np.abs(Y).max()
    fast, exact = _both_routes(X, Y, sd.GridBlock(0.5, 5), 50)
    assert fast.space.route == "gram"
    _assert_same_solution(fast, exact)
    np.testing.assert_allclose(fast.weights, exact.weights, atol=1e-9 * np.abs(exact.weights).max())


@pytest.mark.parametrize(
    "case", ["rank-deficient", "nearly collinear", "ill-conditioned", "zero row", "zero"]
)
def test_hard_inputs_fall_back_to_the_exact_projection(case: str) -> None:
    """Where squaring cond(X) would lose digits, the SVD route is taken and the projection is
    exact: ``Y P`` equals ``Y X^+ X`` from NumPy's pinv to rounding. A subspace is only defined
    to about ``eps * cond(X)`` (Wedin's bound), so that, times a safety factor of 100 and Y's
    scale, is the tolerance (1e-9 or less but for the nearly collinear X, cond ~ 1e9)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 30))
    if case == "rank-deficient":
        X = rng.standard_normal((8, 3)) @ rng.standard_normal((3, 30))
    elif case == "nearly collinear":
        X[1] = X[0] + 1e-9 * rng.standard_normal(30)
    elif case == "ill-conditioned":
        X = _data(rng, 1, 8, 30, condition=1e6)[0]
    elif case == "zero row":
        X[4] = 0.0
    else:
        X = np.zeros((8, 30))
    Y = rng.standard_normal((5, 30))
    space = _rowspace.row_space(X)
    assert space.route == "svd"
    projected = space.expand(space.coordinates(Y))
    singular = np.linalg.svd(X, compute_uv=False)
    kept = singular[singular > singular[0] * 30 * np.finfo(float).eps] if singular[0] else [1.0]
    atol = 100 * np.finfo(float).eps * (kept[0] / kept[-1]) * np.abs(Y).max()
    np.testing.assert_allclose(projected, Y @ np.linalg.pinv(X) @ X, atol=max(atol, 1e-12))
    fast, exact = _both_routes(X, Y, sd.GridBlock(0.5, 2), 4)
    _assert_same_solution(fast, exact, rtol=1e-12)


def test_the_condition_rule_is_the_stated_one() -> None:
    rng = np.random.default_rng(5)
    limit = _rowspace.GRAM_MAX_CONDITION
    below, _ = _data(rng, 1, 6, 20, condition=0.9 * limit)
    above, _ = _data(rng, 1, 6, 20, condition=1.1 * limit)
    assert _rowspace.row_space(below).route == "gram"
    assert _rowspace.row_space(above).route == "svd"
    assert _rowspace.row_space(below, route="svd").route == "svd"
    with pytest.raises(ValueError, match="route must be"):
        _rowspace.row_space(below, route="qr")


def test_global_minimum_takes_the_gram_route_and_matches_cvxpy_values() -> None:
    """End to end through the public function: the value of the Gram route equals the SVD
    route's to 1e-9 relative (and both are certified elsewhere against CVXPY and L-BFGS)."""
    rng = np.random.default_rng(7)
    X, Y = _data(rng, 6, 10, 50, condition=50.0)
    scheme = sd.GridBlock(0.5, 2)
    opt = sd.global_minimum(X, Y, scheme, 6)
    exact = optimum_module.solve_unit_scale(
        np.ldexp(X, -binary_exponent(X)),
        np.ldexp(Y, -binary_exponent(Y)),
        sd.regularization_strength(scheme, 6),
        2,
        route="svd",
    )
    scale = 2.0 ** (2 * binary_exponent(Y))
    assert opt.value == pytest.approx(exact.value * scale, rel=ROUTES_RTOL)


# ------------------------------------------------------------------------------------------------
# Threads
# ------------------------------------------------------------------------------------------------
def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_small_work_uses_one_blas_thread_and_restores_the_callers_setting() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        with _threads.small_work(1e6):
            assert set(_blas_threads()) == {1}
        assert _blas_threads() == before
        with _threads.small_work(10 * _threads.SMALL_WORK_FLOPS):
            assert _blas_threads() == before  # big work keeps the caller's threads


def test_global_minimum_restores_the_callers_threads() -> None:
    rng = np.random.default_rng(0)
    X, Y = _data(rng, 4, 6, 20)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        sd.global_minimum(X, Y, sd.Bernoulli(0.5), 4)
        assert _blas_threads() == before
