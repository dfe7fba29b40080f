"""The row space of the inputs X (b x N): an orthonormal basis ``qt`` (r x N) of it, by
whichever route is cheaper and still exact.

Thm 2.7 (corrected in docs/theory.md) needs the projector P onto X's row space: ``Y P = C qt`` with
``C = Y qt^T`` (a x r), so the prox is computed from the small matrix C. Two routes give such a
basis:

* **Gram** (the default when it is safe): the Cholesky factor ``L`` of the smaller Gram matrix.
  When b <= N, ``X X^T = L L^T`` and ``qt = L^-1 X``, never formed: ``C = (Y X^T) L^-T``,
  ``W* = K L^-1`` and ``K qt = W* X`` take products with X and b x b triangular solves. When
  b > N (and X has full column rank), the row space is all of R^N: ``qt = I`` and
  ``W* = K (X^T X)^-1 X^T``. For the paper's X (100 x 1000) this replaces the SVD of X by a
  100 x 100 Cholesky factorization and products.
* **SVD** of X itself (LAPACK ``gesdd``), as before.

The Gram route squares X's condition number: the Gram matrix is only known to about
``eps * s_max^2``, so the basis's relative error grows like ``eps * cond(X)^2``. It is used only
when the Gram matrix's eigenvalues (``s^2``, computed without vectors) are all at least
``s_max^2 / GRAM_MAX_CONDITION^2``, which bounds that error by ``eps * 1e6 ~ 2e-10``; otherwise
(ill-conditioned, nearly collinear or rank-deficient X) the SVD route keeps the projection exact
to rounding, with rank decided by the singular values (``s > s_max * max(b, N) * eps``).

:mod:`scipy.linalg` is imported when a Gram route is first taken, not with the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GRAM_MAX_CONDITION", "RowSpace", "row_space"]

#: The Gram route is taken only when cond(X) = s_max / s_min is at most this (see above).
GRAM_MAX_CONDITION = 1e3


@dataclass(frozen=True)
class RowSpace:
    """An orthonormal basis ``qt`` (r x N) of X's row space, given explicitly or implied.

    Attributes:
        x: X (b x N).
        route: ``"svd"``, ``"gram"`` (b <= N: ``qt = L^-1 X``) or ``"gram-tall"`` (b > N:
            ``qt = I``).
        rank: r, the dimension of the row space.
        tolerance: singular values of X at most this count as zero.
        factor: the SVD's ``(ux, s, qt)`` or the Gram route's Cholesky factor ``L``.
    """

    x: np.ndarray
    route: str
    rank: int
    tolerance: float
    factor: Any

    def qt(self) -> np.ndarray:
        """The basis as rows (r x N), formed if it is implied."""
        if self.route == "svd":
            return self.factor[2]
        if self.route == "gram":
            from scipy.linalg import solve_triangular

            return solve_triangular(self.factor, self.x, lower=True, check_finite=False)
        return np.eye(self.x.shape[1])

    def coordinates(self, y: np.ndarray) -> np.ndarray:
        """``C = Y qt^T`` (a x r): Y's projection on the row space, in the basis qt."""
        if self.route == "svd":
            return y @ self.factor[2].T
        if self.route == "gram":  # C^T = L^-1 X Y^T
            from scipy.linalg import solve_triangular

            return solve_triangular(self.factor, self.x @ y.T, lower=True, check_finite=False).T
        return y

    def weights(self, coefficients: np.ndarray) -> np.ndarray:
        """The minimum-norm ``W`` (a x b) with ``W X = coefficients @ qt``."""
        if self.route == "svd":
            ux, s, _ = self.factor
            return (coefficients / s) @ ux.T
        from scipy.linalg import cho_solve, solve_triangular

        if self.route == "gram":  # W = K L^-1, i.e. W^T = L^-T K^T
            return solve_triangular(
                self.factor, coefficients.T, lower=True, trans="T", check_finite=False
            ).T
        # W = K (X^T X)^-1 X^T
        return (self.x @ cho_solve((self.factor, True), coefficients.T, check_finite=False)).T

    def expand(self, coefficients: np.ndarray) -> np.ndarray:
        """``coefficients @ qt`` (a x N)."""
        return self.weights_and_expansion(coefficients)[1]

    def weights_and_expansion(self, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(weights(coefficients), coefficients @ qt)``, sharing the work (on the Gram route
        the expansion is the weights times X)."""
        if self.route == "svd":
            return self.weights(coefficients), coefficients @ self.factor[2]
        weights = self.weights(coefficients)
        return weights, (weights @ self.x if self.route == "gram" else coefficients)


def _tolerance(s_max: float, x: np.ndarray) -> float:
    return s_max * max(x.shape) * np.finfo(np.float64).eps


def _svd_route(x: np.ndarray) -> RowSpace:
    ux, s, qt = np.linalg.svd(x, full_matrices=False)
    tolerance = _tolerance(s[0] if s.size else 0.0, x)
    keep = s > tolerance
    factor = (ux[:, keep], s[keep], qt[keep])
    return RowSpace(x, "svd", int(keep.sum()), tolerance, factor)


def _gram_route(x: np.ndarray) -> RowSpace | None:
    """The Cholesky factor of the smaller Gram matrix, or None when X is too ill-conditioned
    for it (see the module's docstring)."""
    b, n = x.shape
    gram = x @ x.T if b <= n else x.T @ x
    eigenvalues = np.linalg.eigvalsh(gram)  # ascending; no vectors: about a third of eigh
    largest = eigenvalues[-1] if eigenvalues.size else 0.0
    if not largest > 0.0 or eigenvalues[0] < largest / GRAM_MAX_CONDITION**2:
        return None
    from scipy.linalg import cholesky

    try:
        factor = cholesky(gram, lower=True, check_finite=False)
    except np.linalg.LinAlgError:  # not positive definite after all: rounding at the limit
        return None
    tolerance = _tolerance(math.sqrt(largest), x)
    return RowSpace(x, "gram" if b <= n else "gram-tall", min(b, n), tolerance, factor)


def row_space(x: np.ndarray, route: str = "auto") -> RowSpace:
    """The row space of ``x`` by the Gram route when it is safe, else by the SVD.

    Args:
        x: (b, N) float64 inputs, finite, of unit scale (the caller rescales).
        route: ``"auto"`` (the Gram route when it is safe), or ``"svd"`` to force the SVD.
    """
    if route not in ("auto", "svd"):
        raise ValueError(f"route must be 'auto' or 'svd', got {route!r}")
    if route != "svd" and x.size:
        gram = _gram_route(x)
        if gram is not None:
            return gram
    return _svd_route(x)
