"""Full-batch minimisation of the exact expected objective at a fixed width (L-BFGS).

The objective is eq. 4 / eq. 14 in the Gram form (docs/theory.md)::

    f(U, V) = ||Y||^2 - 2 <U, Y X^T V> + <Q * (U^T U), V^T X X^T V>,   Q = 1 1^T + Cbar,

with gradients ``df/dU = 2 (U (Q * M) - Y X^T V)`` and ``df/dV = 2 (X X^T V (Q * K) - X Y^T U)``
where ``K = U^T U`` and ``M = V^T X X^T V``. DropConnect adds its corrected penalty (Thm 4.1 in
docs/theory.md) instead of the ``Cbar`` term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .. import _validation as check
from .._arrays import to_numpy
from ..objectives import Gram, weight_keep_prob
from ..schemes import Scheme, check_scheme

__all__ = ["GDResult", "fit_gd", "objective_and_gradient"]


@dataclass(frozen=True)
class GDResult:
    """The end point of :func:`fit_gd`."""

    U: np.ndarray
    V: np.ndarray
    value: float
    iterations: int
    converged: bool


def objective_and_gradient(
    stats: Gram, scheme: Scheme, a: int, b: int, d: int
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """``f`` and its gradient as one function of the flattened ``(U, V)`` (U's a x d entries,
    then V's b x d), for the data of ``stats`` (see the module docstring)."""
    assert stats.yx is not None and stats.yy is not None  # statistics of X and Y
    xx, yx = to_numpy(stats.xx), to_numpy(stats.yx)
    yy = float(to_numpy(stats.yy))
    theta = weight_keep_prob(scheme)
    on_weights = theta is not None
    if theta is not None:  # on_weights
        weight = np.ones((d, d))
        strength = (1.0 - theta) / theta
        x_norms = np.diag(xx)
    else:
        weight = 1.0 + scheme.characteristic(d)

    def value_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        U = flat[: a * d].reshape(a, d)
        V = flat[a * d :].reshape(b, d)
        xx_v = xx @ V
        yx_v = yx @ V
        K = U.T @ U
        M = V.T @ xx_v
        value = yy - 2.0 * np.sum(U * yx_v) + np.sum(weight * K * M)
        grad_u = 2.0 * (U @ (weight * M) - yx_v)
        grad_v = 2.0 * (xx_v @ (weight * K) - yx.T @ U)
        if on_weights:
            unit_norms = np.diag(K)
            weight_norms = x_norms @ (V * V)
            value += strength * float(unit_norms @ weight_norms)
            grad_u += 2.0 * strength * U * weight_norms
            grad_v += 2.0 * strength * (x_norms[:, None] * V) * unit_norms
        return value, np.concatenate([grad_u.ravel(), grad_v.ravel()])

    return value_and_gradient


def fit_gd(
    X: np.ndarray,
    Y: np.ndarray,
    U0: np.ndarray,
    V0: np.ndarray,
    scheme: Scheme,
    max_iterations: int = 10_000,
    tol: float = 1e-12,
) -> GDResult:
    """Minimise the exact expected objective ``expected_loss(Y, U, V, X, scheme)`` over (U, V)
    at the width of U0 and V0, by L-BFGS from (U0, V0).

    Args:
        X: (b, N) inputs.
        Y: (a, N) targets.
        U0: (a, d) starting point of U.
        V0: (b, d) starting point of V.
        scheme: the mask law.
        max_iterations: L-BFGS iteration cap.
        tol: relative reduction of the objective below which L-BFGS stops.

    Returns:
        A :class:`GDResult` (final U, V, objective value, iterations, whether L-BFGS converged).
    """
    scheme = check_scheme(scheme)
    stats = Gram.from_data(X, Y)
    U0 = to_numpy(check.check_matrix(U0, "U0"))
    V0 = to_numpy(check.check_matrix(V0, "V0"))
    stats.check_factors(U0, V0, needs_y=True)
    max_iterations = check.check_positive_int(max_iterations, "max_iterations")
    tol = check.check_nonnegative(tol, "tol")
    (a, d), b = U0.shape, V0.shape[0]
    scheme.check_width(d)
    function = objective_and_gradient(stats, scheme, a, b, d)
    start = np.concatenate([U0.ravel(), V0.ravel()])
    result = optimize.minimize(
        function,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iterations, "ftol": tol, "gtol": 0.0, "maxcor": 30},
    )
    U = result.x[: a * d].reshape(a, d).copy()
    V = result.x[a * d :].reshape(b, d).copy()
    return GDResult(
        U=U,
        V=V,
        value=float(stats.expected_loss(U, V, scheme)),
        iterations=int(result.nit),
        converged=bool(result.success),
    )
