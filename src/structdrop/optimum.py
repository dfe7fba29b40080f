"""The closed-form global minimum of Dropout and DropBlock on a single hidden linear layer.

With the drop rate scaled with the width as in eq. 7, the DropBlock objective (eq. 8) has the
convex lower bound ``F(A) = ||Y - A||^2 + beta ||A||_(r)^2`` over predictions ``A = W X`` in the
row space of X (eq. 9-12, Thm 2.6), with ``||.||_(r)`` the spectral r-support norm and
``beta = (r/d)(1-theta)/theta``. Its minimizer is a spectral proximal step (Thm 2.7), corrected
here as in NOTES.md:

* X need not have full column rank (it cannot when N > b): with P the projector onto X's row
  space, ``||Y - A||^2 = ||Y (I-P)||^2 + ||Y P - A||^2``, so ``A* = prox(Y P)``.
* ``rho`` ranges over ``{1..r}``, not ``{1..r-1}`` (empty for r = 1).
* Prop. 3.3 (eq. 18) misses a factor 1/d: Dropout at width d gives
  ``(1-theta)/(theta d) ||A||_*^2``, which is ``beta`` above with r = 1.

The bound is attained (``inf`` over width and factors of eq. 8 equals ``F*``); at a fixed width
``d`` equality needs ``d >= rank(A*)`` (and for r > 1 possibly more). Minimizers are balanced
(Thm 2.5): all ``||U_i V_i^T X||_F`` are equal, see :func:`block_norms`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _validation as check
from ._arrays import Array, common_kind, convert, to_numpy
from .ksupport import _ksupport_sq_sorted, _prox_sorted, ksupport_split
from .objectives import Gram
from .schemes import Bernoulli, GridBlock, Scheme

__all__ = [
    "GlobalMinimum",
    "block_norms",
    "global_minimum",
    "keep_prob_for_width",
    "regularization_strength",
]


def _block_size_of(scheme: Scheme) -> int:
    if isinstance(scheme, Bernoulli | GridBlock):
        return scheme.block_size
    raise ValueError(
        "the closed-form optimum is known for Bernoulli and GridBlock schemes only (their "
        f"regularizer is a squared spectral k-support norm, Thm 2.3), got {scheme!r}"
    )


def _check_width(width: object, block_size: int) -> int:
    width = check.check_positive_int(width, "width")
    check.check_block_divides(block_size, width, name="width")
    return width


def regularization_strength(scheme: Scheme, width: int) -> float:
    """``beta = (r/d)(1-theta)/theta`` for a Bernoulli or GridBlock scheme at width d (eq. 7-8).

    At width d with keep probability theta, eq. 8's weight ``(d/r)(1-tb)/tb`` equals
    ``(1-theta)/theta``, so ``beta = (1-tb)/tb`` is the strength of ``||A||_(r)^2``.
    """
    block_size = _block_size_of(scheme)
    width = _check_width(width, block_size)
    theta = scheme.keep_prob
    return block_size / width * (1.0 - theta) / theta


def keep_prob_for_width(keep_prob: float, block_size: int, width: int) -> float:
    """Eq. 7: ``theta(d) = tb r / (tb r + (1 - tb) d)``, the keep probability at width d that
    keeps the regularization of a one-block network with keep probability ``tb``.

    Equivalently ``(1-theta(d))/theta(d) = (d/r)(1-tb)/tb``.
    """
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, int | float | np.floating):
        raise TypeError(f"keep_prob must be a real number, got {keep_prob!r}")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    block_size = check.check_block_size(block_size)
    width = check.check_positive_int(width, "width")
    return keep_prob * block_size / (keep_prob * block_size + (1.0 - keep_prob) * width)


@dataclass(frozen=True)
class GlobalMinimum:
    """The global minimum of eq. 8 (Thm 2.7, corrected).

    Attributes:
        prediction: ``A*`` (a x N), the optimal output ``U V^T X``.
        weights: ``W*`` (a x b) with ``A* = W* X`` (minimum-norm, in the row space of X^T).
        value: ``F* = residual + sum_i (m_i - x_i)^2 + beta ||x||_(r)^2``.
        singular_values: ``x``, the singular values of A* (descending).
        target_singular_values: ``m``, the singular values of ``Y P`` (descending).
        beta: the regularization strength ``(r/d)(1-theta)/theta``.
        rho: ``rho*``, the split index of ``||x||_(r)`` (1 when DropBlock acts as Dropout).
        rank: ``lambda*``, the rank of A*; the bound is attained at widths ``>= rank``
            (for r = 1; for r > 1 possibly more are needed).
        residual: ``||Y (I - P)||^2``, the part of Y that no ``W X`` can fit.
        block_size: ``r``.
        width: ``d``.
    """

    prediction: Array
    weights: Array
    value: float
    singular_values: Array
    target_singular_values: Array
    beta: float
    rho: int
    rank: int
    residual: float
    block_size: int
    width: int


def global_minimum(X: Array, Y: Array, scheme: Scheme, width: int) -> GlobalMinimum:
    """The closed-form global minimum of the Dropout/DropBlock objective (Thm 2.7, NOTES.md).

    Solves ``min_A ||Y - A||^2 + beta ||A||_(r)^2`` over ``A = W X``: with the SVD
    ``Y P = W diag(m) Z^T``, ``A* = W diag(x) Z^T`` where
    ``x_i = min(m_i/(1+beta), (m_i - tau)_+)`` and ``tau`` solves
    ``sum_i clip(beta (m_i - tau)/tau, 0, 1) = r`` (``x = m/(1+beta)`` when r >= rank).

    Args:
        X: (b, N) inputs; any rank.
        Y: (a, N) targets.
        scheme: ``Bernoulli(p)`` or ``GridBlock(p, r)``, p being the drop rate at this width.
        width: the number of hidden units d (a multiple of r).

    Returns:
        A :class:`GlobalMinimum`; its arrays are of the inputs' kind.
    """
    block_size = _block_size_of(scheme)
    width = _check_width(width, block_size)
    X = check.check_matrix(X, "X")
    Y = check.check_matrix(Y, "Y")
    check.check_same(Y.shape[1], X.shape[1], "X and Y must have the same number of samples N")
    kind = common_kind(X, Y)
    beta = regularization_strength(scheme, width)
    x_np, y_np = to_numpy(X), to_numpy(Y)

    # Row space of X: X = Ux diag(s) Qt, keeping the numerically nonzero singular values.
    ux, s, qt = np.linalg.svd(x_np, full_matrices=False)
    tol = (s[0] if s.size else 0.0) * max(x_np.shape) * np.finfo(np.float64).eps
    keep = s > tol
    ux, s, qt = ux[:, keep], s[keep], qt[keep]
    y_row = y_np @ qt.T  # Y P = y_row @ qt
    residual = float(np.sum((y_np - y_row @ qt) ** 2))

    w, m, zt = np.linalg.svd(y_row, full_matrices=False)
    x = _prox_sorted(m, beta, block_size)
    coefficients = (w * x) @ zt  # A* = coefficients @ qt, W* = coefficients @ diag(1/s) @ ux^T
    prediction = coefficients @ qt
    weights = (coefficients / s) @ ux.T
    rank = int(np.count_nonzero(x > (x[0] if x.size else 0.0) * x.size * np.finfo(float).eps))
    value = residual + float(np.sum((m - x) ** 2)) + beta * _ksupport_sq_sorted(x, block_size)
    return GlobalMinimum(
        prediction=convert(prediction, kind),
        weights=convert(weights, kind),
        value=value,
        singular_values=convert(x, kind),
        target_singular_values=convert(m, kind),
        beta=beta,
        rho=ksupport_split(x, block_size) if rank else 1,
        rank=rank,
        residual=residual,
        block_size=block_size,
        width=width,
    )


def block_norms(U: Array, V: Array, X: Array, block_size: int) -> Array:
    """``||U_i V_i^T X||_F`` for each block of ``r`` consecutive units (Def. 2.4).

    A pair (U, V) is balanced when these are all equal; global minimizers are (Thm 2.5).

    Returns:
        A (d/r,) vector of the inputs' kind.
    """
    block_size = check.check_block_size(block_size)
    stats = Gram.from_data(X)
    U, V, kind = stats._factors(U, V, needs_y=False)
    d = U.shape[1]
    check.check_block_divides(block_size, d)
    xx = convert(stats.xx, kind)
    products = (U.T @ U) * (V.T @ xx @ V)  # entry (i, j): (u_i^T u_j)(x-weighted v_i^T v_j)
    k = d // block_size
    blocks = products.reshape(k, block_size, k, block_size)
    squares = blocks.sum(axis=(1, 3)).diagonal()  # NumPy and torch alike
    check.check_result(squares, U=U, V=V)
    return squares.clip(min=0.0) ** 0.5
