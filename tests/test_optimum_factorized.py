"""The non-convex factorized objective of U V^T X reaches the closed-form global minimum
(structdrop.optimum), balanced (Thm 2.5).

Oracles, independent of the library: the expected loss at width d in Gram form with its gradient,
written out here, minimised by L-BFGS from random starts; block norms computed block by block.
"""

import numpy as np
import pytest
from scipy.optimize import minimize

import structdrop as sd
from oracles import as_numpy, with_spectrum


# ----------------------------------------------------------------------------------------------
# The non-convex factorized objective reaches the bound (L-BFGS)
# ----------------------------------------------------------------------------------------------
def _factorized_objective(X, Y, scheme, width):
    """Expected loss at width d in Gram form, with its gradient (written independently).

    f = ||Y||^2 - 2 <U, Y X^T V> + <(U^T U) * H, V^T X X^T V>, H = 1 + (1-theta)/theta * M with
    M = blockdiag(ones(r, r)) (Lemma 2.1; M = I for Dropout).
    """
    a, b = Y.shape[0], X.shape[0]
    r = scheme.sampler.block_size
    c = scheme.p / (1 - scheme.p)
    H = 1.0 + c * np.kron(np.eye(width // r), np.ones((r, r)))
    G, C, yy = X @ X.T, Y @ X.T, float(np.sum(Y**2))

    def f(z):
        U = z[: a * width].reshape(a, width)
        V = z[a * width :].reshape(b, width)
        K, UU = V.T @ G @ V, U.T @ U
        value = yy - 2 * np.sum(U * (C @ V)) + np.sum(UU * H * K)
        gU = -2 * C @ V + 2 * U @ (K * H)
        gV = -2 * C.T @ U + 2 * G @ V @ (UU * H)
        return value, np.concatenate([gU.ravel(), gV.ravel()])

    return f


def _lbfgs_case(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "grid r=2 noisy":
        X = rng.standard_normal((5, 12))
        return X, rng.standard_normal((4, 12)), sd.GridBlock(0.5, 2), 8
    if name == "grid r=2 dominant head":
        X = rng.standard_normal((4, 3))
        return X, with_spectrum(rng, [10.0, 1.0, 1.0], 3), sd.GridBlock(0.5, 2), 6
    if name == "grid r=3":
        X = rng.standard_normal((4, 10))
        return X, rng.standard_normal((3, 10)), sd.GridBlock(0.4, 3), 6
    if name == "bernoulli":
        X = rng.standard_normal((3, 10))
        return X, rng.standard_normal((4, 10)), sd.Bernoulli(0.3), 6
    raise KeyError(name)


@pytest.mark.parametrize(
    "name", ["grid r=2 noisy", "grid r=2 dominant head", "grid r=3", "bernoulli"]
)
def test_lbfgs_on_nonconvex_objective_reaches_global_minimum_balanced(name):
    X, Y, scheme, width = _lbfgs_case(name)
    a, b, r = Y.shape[0], X.shape[0], scheme.sampler.block_size
    opt = sd.global_minimum(X, Y, scheme, width)
    f_star = float(opt.value)
    f = _factorized_objective(X, Y, scheme, width)
    rng = np.random.default_rng(0)
    best = None
    for _ in range(3):
        z0 = 0.5 * rng.standard_normal((a + b) * width)
        res = minimize(
            f,
            z0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-16, "gtol": 1e-12, "maxcor": 30},
        )
        U = res.x[: a * width].reshape(a, width)
        V = res.x[a * width :].reshape(b, width)
        # The library's expected loss is the objective being minimised (rounding: 1e-10).
        lib = float(as_numpy(sd.expected_loss(Y, U, V, X, scheme)))
        assert lib == pytest.approx(res.fun, rel=1e-10)
        # F* is a lower bound: never beaten beyond rounding (1e-8 relative).
        assert lib >= f_star * (1 - 1e-8)
        if best is None or lib < best[0]:
            best = (lib, U, V)
    lib, U, V = best
    # Reached to 1e-6 relative (observed ~1e-15 with these tolerances).
    assert lib <= f_star * (1 + 1e-6)
    # The prediction: f(U, V) >= F(U V^T X) >= F* + ||U V^T X - A*||^2 (2-strong convexity).
    A = U @ V.T @ X
    assert np.sum((A - as_numpy(opt.prediction)) ** 2) <= lib - f_star + 1e-8 * f_star
    # Balanced blocks (Thm 2.5): at a minimizer every block is nonzero (splitting a block into
    # an empty one lowers the sum of squares) and all ||U_i V_i^T X||_F are equal. Observed
    # spread ~1e-7 relative; an imbalance costs the objective quadratically, so 1e-4 is safe.
    norms = as_numpy(sd.block_norms(U, V, X, r))
    mine = [
        np.linalg.norm(U[:, i * r : (i + 1) * r] @ V[:, i * r : (i + 1) * r].T @ X)
        for i in range(width // r)
    ]
    np.testing.assert_allclose(norms, mine, rtol=1e-10)
    assert norms.min() > 0
    assert np.ptp(norms) <= 1e-4 * norms.max()


def test_expected_loss_matches_independent_objective_at_random_points():
    X, Y, scheme, width = _lbfgs_case("grid r=3")
    f = _factorized_objective(X, Y, scheme, width)
    rng = np.random.default_rng(1)
    a, b = Y.shape[0], X.shape[0]
    for _ in range(3):
        z = rng.standard_normal((a + b) * width)
        U, V = z[: a * width].reshape(a, width), z[a * width :].reshape(b, width)
        # Same quantity, two codes: rounding only, 1e-10.
        assert float(as_numpy(sd.expected_loss(Y, U, V, X, scheme))) == pytest.approx(
            f(z)[0], rel=1e-10
        )


def test_block_norms_values_and_bad_width():
    rng = np.random.default_rng(2)
    U, V, X = rng.standard_normal((3, 6)), rng.standard_normal((4, 6)), rng.standard_normal((4, 5))
    got = as_numpy(sd.block_norms(U, V, X, 3))
    want = [np.linalg.norm(U[:, :3] @ V[:, :3].T @ X), np.linalg.norm(U[:, 3:] @ V[:, 3:].T @ X)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="4"):
        sd.block_norms(U, V, X, 4)
