"""The row space of the inputs X (b x N): a thin factorization ``X = ux diag(s) qt`` of its
nonzero part, by whichever route is cheaper and still exact.

Thm 2.7 (corrected in NOTES.md) needs the projector P onto X's row space: ``Y P = C qt`` with
``C = Y qt^T`` (a x r), so the prox is computed from the small matrix C. Two routes give the same
factorization:

* **Gram** (the default when it is safe): the eigendecomposition of the smaller Gram matrix,
  ``X X^T`` (b x b) when b <= N, else ``X^T X`` (N x N); its eigenvalues are ``s^2``. For the
  paper's X (100 x 1000) this replaces an SVD of X by a 100 x 100 eigenproblem and products, and
  ``qt = diag(1/s) ux^T X`` is never formed: ``C = (Y X^T) ux diag(1/s)`` and
  ``K qt = (K diag(1/s) ux^T) X``.
* **SVD** of X itself (LAPACK ``gesdd``), as before.

The Gram route squares X's condition number: the eigenvalues carry an absolute error of about
``eps * s_max^2``, so the factorization's relative error grows like ``eps * cond(X)^2``. It is
used only when every eigenvalue is at least ``s_max^2 / GRAM_MAX_CONDITION^2``, which bounds that
error by ``eps * 1e6 ~ 2e-10``; otherwise (ill-conditioned, nearly collinear or rank-deficient X)
the SVD route keeps the projection exact to rounding, with rank decided by the singular values
(``s > s_max * max(b, N) * eps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GRAM_MAX_CONDITION", "RowSpace", "row_space"]

#: The Gram route is taken only when cond(X) = s_max / s_min is at most this (see above).
GRAM_MAX_CONDITION = 1e3


@dataclass(frozen=True)
class RowSpace:
    """``X = ux diag(s) qt`` over the numerically nonzero singular values of X.

    Attributes:
        x: X (b x N).
        ux: left singular vectors (b x r).
        s: singular values, descending, all above ``tolerance`` (r,).
        explicit_qt: the right singular vectors as rows (r x N), or None when they are implied
            (``qt = diag(1/s) ux^T X``, the Gram route on X X^T).
        tolerance: singular values of X at most this count as zero.
        route: ``"gram"`` or ``"svd"``.
    """

    x: np.ndarray
    ux: np.ndarray
    s: np.ndarray
    explicit_qt: np.ndarray | None
    tolerance: float
    route: str

    @property
    def rank(self) -> int:
        return int(self.s.size)

    def qt(self) -> np.ndarray:
        """The right singular vectors as rows (r x N), formed if they are implied."""
        if self.explicit_qt is not None:
            return self.explicit_qt
        return (self.ux.T @ self.x) / self.s[:, None]

    def coordinates(self, y: np.ndarray) -> np.ndarray:
        """``C = Y qt^T`` (a x r): Y's projection on the row space, in the basis qt."""
        if self.explicit_qt is not None:
            return y @ self.explicit_qt.T
        return ((y @ self.x.T) @ self.ux) / self.s

    def weights(self, coefficients: np.ndarray) -> np.ndarray:
        """The minimum-norm ``W`` (a x b) with ``W X = coefficients @ qt``."""
        return (coefficients / self.s) @ self.ux.T

    def expand(self, coefficients: np.ndarray) -> np.ndarray:
        """``coefficients @ qt`` (a x N)."""
        if self.explicit_qt is not None:
            return coefficients @ self.explicit_qt
        return self.weights(coefficients) @ self.x


def _tolerance(s_max: float, x: np.ndarray) -> float:
    return s_max * max(x.shape) * np.finfo(np.float64).eps


def _svd_route(x: np.ndarray) -> RowSpace:
    ux, s, qt = np.linalg.svd(x, full_matrices=False)
    tolerance = _tolerance(s[0] if s.size else 0.0, x)
    keep = s > tolerance
    return RowSpace(x, ux[:, keep], s[keep], qt[keep], tolerance, "svd")


def _gram_route(x: np.ndarray) -> RowSpace | None:
    """The factorization from the smaller Gram matrix, or None when X is too ill-conditioned
    for it (see the module's docstring)."""
    b, n = x.shape
    gram = x @ x.T if b <= n else x.T @ x
    eigenvalues, vectors = np.linalg.eigh(gram)  # ascending
    largest = eigenvalues[-1] if eigenvalues.size else 0.0
    if not largest > 0.0 or eigenvalues[0] < largest / GRAM_MAX_CONDITION**2:
        return None
    s = np.sqrt(eigenvalues[::-1])
    vectors = vectors[:, ::-1]
    tolerance = _tolerance(float(s[0]), x)
    if b <= n:
        return RowSpace(x, vectors, s, None, tolerance, "gram")
    return RowSpace(x, (x @ vectors) / s, s, vectors.T, tolerance, "gram")


def row_space(x: np.ndarray, route: str = "auto") -> RowSpace:
    """The row space of ``x`` by the Gram route when it is safe, else by the SVD.

    Args:
        x: (b, N) float64 inputs, finite, of unit scale (the caller rescales).
        route: ``"auto"``, or ``"gram"`` / ``"svd"`` to force one (``"gram"`` still falls back
            to the SVD when X is too ill-conditioned for it).
    """
    if route not in ("auto", "gram", "svd"):
        raise ValueError(f"route must be 'auto', 'gram' or 'svd', got {route!r}")
    if route != "svd" and x.size:
        gram = _gram_route(x)
        if gram is not None:
            return gram
    return _svd_route(x)
