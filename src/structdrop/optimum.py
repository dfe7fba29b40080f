"""The closed-form global minimum of Dropout and DropBlock on a single hidden linear layer.

With the drop rate scaled with the width as in eq. 7, the DropBlock objective (eq. 8) has the
convex lower bound ``F(A) = ||Y - A||^2 + beta ||A||_(r)^2`` over predictions ``A = W X`` in the
row space of X (eq. 9-12, Thm 2.6), with ``||.||_(r)`` the spectral r-support norm and
``beta = (r/d)(1-theta)/theta``. Its minimizer is a spectral proximal step (Thm 2.7), corrected
here as in docs/theory.md:

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
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import _validation as check
from ._arrays import Kind, binary_exponent, common_kind, convert, scale_back, to_numpy
from ._rowspace import RowSpace, row_space
from ._threads import small_work
from .ksupport import TIE_RTOL, ProxParts, ksupport_split, ksupport_sq_sorted, prox_parts
from .objectives import Gram
from .schemes import IndependentBlocks, Scheme, check_scheme

if TYPE_CHECKING:
    from ._arrays import Array

__all__ = [
    "GlobalMinimum",
    "block_norms",
    "global_minimum",
    "keep_prob_for_width",
    "regularization_strength",
]


def _independent_blocks(scheme: Scheme) -> IndependentBlocks:
    """The blocks of a law of independent blocks of ``r`` units, each kept with probability
    theta (Dropout: r = 1; the paper's DropBlock): the laws whose regularizer is a squared
    spectral r-support norm (Thm 2.3), for which the closed form holds."""
    sampler = check_scheme(scheme).sampler
    if scheme.acts_on == "units" and isinstance(sampler, IndependentBlocks):
        return sampler
    raise ValueError(
        "the closed-form optimum is known for laws of independent blocks of units only "
        "(Bernoulli and GridBlock: their regularizer is a squared spectral k-support norm, "
        f"Thm 2.3), got {scheme!r}"
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
    blocks = _independent_blocks(scheme)
    width = _check_width(width, blocks.block_size)
    theta = blocks.keep_prob
    return blocks.block_size / width * (1.0 - theta) / theta


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

    Arrays are of the inputs' kind (NumPy or torch, the inputs' precision and device); for torch
    inputs ``value`` and ``residual`` are 0-d tensors, for NumPy inputs Python floats.

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

    Autograd (torch inputs with ``requires_grad``, grad mode on): ``prediction``, ``weights``,
    ``value``, ``residual``, ``singular_values`` and ``target_singular_values`` carry autograd
    to X and Y; ``beta``, ``rho``, ``rank``, ``block_size`` and ``width`` are plain numbers.
    The gradients are those of the piece of the solution map that contains the inputs, exact
    there (they are checked against finite differences):

    * X's numerical rank is held fixed (the derivative of the row-space projector is that of the
      pseudoinverse at constant rank, as ``torch.linalg.pinv``'s); a perturbation that changes
      the rank is a jump, not a derivative.
    * The piece of the prox (which ``x_i`` are ``m_i/(1+beta)``, which ``m_i - tau``, which 0)
      is held fixed, decided with the relative tolerance ``structdrop.ksupport.TIE_RTOL``
      (1e-10), so that the last bits of LAPACK's output decide nothing: tied singular values
      share a piece, values at most ``TIE_RTOL * max m`` are zeros. At a breakpoint (some
      ``m_i`` with ``m_i = tau`` or ``beta m_i = (1+beta) tau``, to that tolerance) the map has
      a kink and the gradient is the one-sided derivative of the piece of larger ``tau`` (the
      unit counts as zero rather than middle, middle rather than head), unless g is flat there,
      where the map is differentiable (docs/theory.md, "Decisions on computed numbers").
    * Repeated singular values of ``Y P`` are fine for ``prediction``, ``weights``, ``value`` and
      ``residual`` and for symmetric functions of ``singular_values`` and
      ``target_singular_values`` (a sum, a norm): their derivatives are computed from the
      spectral formula with divided differences, not through ``torch.linalg.svd``'s backward,
      which is undefined at ties. A single entry of a tied group has no derivative.
    """

    prediction: Array
    weights: Array
    value: float | Array
    singular_values: Array
    target_singular_values: Array
    beta: float
    rho: int
    rank: int
    residual: float | Array
    block_size: int
    width: int


class ScaledSolution(NamedTuple):
    """The solution of the problem for ``X / 2**ex`` and ``Y / 2**ey`` (largest entries in
    [0.5, 1)), with the factorizations that the autograd route reuses."""

    prediction: np.ndarray
    weights: np.ndarray
    value: float
    residual: float
    m: np.ndarray
    parts: ProxParts
    rank: int
    rho: int
    left: np.ndarray  # W: left singular vectors of Y P (a x q)
    zt: np.ndarray  # Z^T in the row-space basis (q x r): Y P's right vectors are (zt @ qt)^T
    space: RowSpace

    @property
    def tolerance(self) -> float:
        """Singular values of X at most this are zero."""
        return self.space.tolerance

    def right(self) -> np.ndarray:
        """Z: the right singular vectors of Y P (N x q); formed only for autograd."""
        return (self.zt @ self.space.qt()).T


def solve_unit_scale(
    x: np.ndarray, y: np.ndarray, beta: float, block_size: int, route: str = "auto"
) -> ScaledSolution:
    """Thm 2.7 (corrected, docs/theory.md) on data of unit scale.

    X's row space comes from :func:`~structdrop._rowspace.row_space` (the Gram route when X is
    well conditioned, else its SVD): with ``Y P = C qt`` and the SVD ``C = W diag(m) Z^T``,
    ``A* = W diag(x) Z^T qt``, so only the small a x r matrix C is decomposed.
    """
    space = row_space(x, route)
    y_row = space.coordinates(y)  # C: Y P = C qt
    if not space.rank:  # X = 0: nothing can be fitted
        residual = float(np.sum(y * y))
        empty = np.zeros(0)
        parts = ProxParts(empty, empty.astype(bool), empty.astype(bool), 0.0, 0.0, beta)
        a, b = y.shape[0], x.shape[0]
        return ScaledSolution(
            np.zeros_like(y), np.zeros((a, b)), residual, residual, empty, parts, 0, 1,
            np.zeros((a, 0)), np.zeros((0, 0)), space,
        )  # fmt: skip

    w, m, zt = np.linalg.svd(y_row, full_matrices=False)
    parts = prox_parts(m, beta, block_size)
    x_star = parts.x
    coefficients = (w * x_star) @ zt  # A* = coefficients @ qt
    a = y.shape[0]
    both = np.concatenate([y_row, coefficients])  # Y P and A* from one product with X
    both_weights, expanded = space.weights_and_expansion(both)
    weights = both_weights[a:]
    residual = float(np.sum((y - expanded[:a]) ** 2))  # ||Y (I - P)||^2, no cancellation
    prediction = expanded[a:]
    rank = int(np.count_nonzero(x_star > TIE_RTOL * m[0]))  # zeros as the prox decides them
    value = residual + float(np.sum((m - x_star) ** 2))
    value += beta * ksupport_sq_sorted(x_star, block_size)
    return ScaledSolution(
        prediction=prediction,
        weights=weights,
        value=value,
        residual=residual,
        m=m,
        parts=parts,
        rank=rank,
        rho=ksupport_split(x_star, block_size) if rank else 1,
        left=w,
        zt=zt,
        space=space,
    )


#: Data whose largest entry lies within 2**+-SAFE_EXPONENT is used as it is: squares and sums
#: of N products of such entries stay far inside float64's range (2**+-1022).
SAFE_EXPONENT = 200


def optimum_flops(b: int, n: int, a: int) -> float:
    """Multiply-adds of the Gram route: X X^T, Y X^T, A* = W* X and the residual."""
    return float(b) * n * (b + 3 * a)


def global_minimum(X: Array, Y: Array, scheme: Scheme, width: int) -> GlobalMinimum:
    """The closed-form global minimum of the Dropout/DropBlock objective (Thm 2.7, docs/theory.md).

    Solves ``min_A ||Y - A||^2 + beta ||A||_(r)^2`` over ``A = W X``: with the SVD
    ``Y P = W diag(m) Z^T``, ``A* = W diag(x) Z^T`` where
    ``x_i = min(m_i/(1+beta), (m_i - tau)_+)`` and ``tau`` solves
    ``sum_i clip(beta (m_i - tau)/tau, 0, 1) = r`` (``x = m/(1+beta)`` when r >= rank).

    Scale-safe: the row space of X does not depend on X's scale, ``A*``, ``x`` and ``m`` scale
    linearly with Y, ``W*`` with Y's scale over X's, and ``F*`` with the square of Y's; so the
    problem is solved for X and Y divided by powers of two near their largest entries (exact)
    and the results scaled back, whenever those entries lie outside ``2**+-SAFE_EXPONENT``.
    Every result is right whenever it is representable (data at 1e-200 give exact results, not
    zeros); one that is not raises a ValueError.

    X's row space comes from the Cholesky factor of its smaller Gram matrix when
    ``cond(X) <= 1e3``, else from its SVD (:mod:`structdrop._rowspace`); the work runs with one
    BLAS thread below ``structdrop._threads.SMALL_WORK_FLOPS`` multiply-adds.

    Args:
        X: (b, N) inputs; any rank.
        Y: (a, N) targets.
        scheme: ``Bernoulli(p)`` or ``GridBlock(p, r)``, p being the drop rate at this width.
        width: the number of hidden units d (a multiple of r).

    Returns:
        A :class:`GlobalMinimum`; its arrays are of the inputs' kind. With torch inputs that
        require grad, its arrays and values carry autograd (see :class:`GlobalMinimum`).

    Raises:
        ValueError: bad inputs (named), or a result that overflows its type, e.g. "the optimum
            value overflows float64 (about 1e400): rescale Y".
    """
    block_size = _independent_blocks(scheme).block_size
    width = _check_width(width, block_size)
    X = check.check_matrix(X, "X")
    Y = check.check_matrix(Y, "Y")
    check.check_same(Y.shape[1], X.shape[1], "X and Y must have the same number of samples N")
    kind = common_kind(X, Y)
    beta = regularization_strength(scheme, width)
    x_np, y_np = to_numpy(X, "X"), to_numpy(Y, "Y")
    # Entries within 2**+-SAFE_EXPONENT cannot overflow or underflow any product here: no copy.
    ex, ey = (e if abs(e) > SAFE_EXPONENT else 0 for e in map(binary_exponent, (x_np, y_np)))
    differentiable = _needs_autograd(X, Y, kind)
    # Autograd differentiates the SVD route (finite differences of the Gram route's rounding,
    # eps * cond(X)^2, would blur a gradient check); everything else takes the cheaper route.
    route = "svd" if differentiable else "auto"
    with small_work(optimum_flops(x_np.shape[0], x_np.shape[1], y_np.shape[0])):
        x_scaled = np.ldexp(x_np, -ex) if ex else x_np
        y_scaled = np.ldexp(y_np, -ey) if ey else y_np
        solution = solve_unit_scale(x_scaled, y_scaled, beta, block_size, route)
    fields = _scaled_back(solution, kind, ex, ey)
    if differentiable:
        from ._optimum_grad import with_autograd  # imports torch: an input is a tensor

        fields = with_autograd(fields, X, Y, solution, beta, block_size, ex, ey)
    return GlobalMinimum(
        beta=beta,
        rho=solution.rho,
        rank=solution.rank,
        block_size=block_size,
        width=width,
        **fields,
    )


def _needs_autograd(X: Array, Y: Array, kind: Kind) -> bool:
    """Whether torch inputs require grad with grad mode on."""
    if not kind.is_torch:
        return False
    import torch  # loaded: the inputs hold a tensor

    return torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in (X, Y)
    )


def _scaled_back(solution: ScaledSolution, kind: Kind, ex: int, ey: int) -> dict[str, Any]:
    """The fields of :class:`GlobalMinimum` that scale with the data, in ``kind``: the solution
    for ``X / 2**ex`` and ``Y / 2**ey`` scaled back exactly (a ValueError when one overflows)."""
    # The value first (the quantity that overflows first), then the arrays.
    double = Kind(is_torch=False, double=True)
    value = scale_back(solution.value, 2 * ey, double, "the optimum value", "Y")
    residual = scale_back(solution.residual, 2 * ey, double, "the residual", "Y")
    arrays = {  # field: (scaled value, exponent of its scale, what it is, what to rescale)
        "prediction": (solution.prediction, ey, "A* (the optimal prediction)", "Y"),
        "weights": (solution.weights, ey - ex, "W* (the optimal weights)", "X or Y"),
        "singular_values": (solution.parts.x, ey, "x (the singular values of A*)", "Y"),
        "target_singular_values": (solution.m, ey, "m (the singular values of Y P)", "Y"),
    }
    fields: dict[str, Any] = {
        name: scale_back(array, exponent, kind, what, rescale)
        for name, (array, exponent, what, rescale) in arrays.items()
    }
    fields["value"], fields["residual"] = float(value), float(residual)
    if kind.is_torch:
        fields["value"] = scale_back(float(value), 0, kind, "the optimum value", "Y")
        fields["residual"] = scale_back(float(residual), 0, kind, "the residual", "Y")
    return fields


def block_norms(U: Array, V: Array, X: Array, block_size: int) -> Array:
    """``||U_i V_i^T X||_F`` for each block of ``r`` consecutive units (Def. 2.4).

    A pair (U, V) is balanced when these are all equal; global minimizers are (Thm 2.5).

    Returns:
        A (d/r,) vector of the inputs' kind.
    """
    block_size = check.check_block_size(block_size)
    stats = Gram.from_data(X)
    U, V, kind = stats.check_factors(U, V)
    d = U.shape[1]
    check.check_block_divides(block_size, d)
    xx = convert(stats.xx, kind)
    (a, _), b = U.shape, V.shape[0]
    with small_work(float(d) * (a * d + b * b + b * d)):
        products = (U.T @ U) * (V.T @ xx @ V)  # (i, j): (u_i^T u_j)(x-weighted v_i^T v_j)
    k = d // block_size
    blocks = products.reshape(k, block_size, k, block_size)
    squares = blocks.sum(axis=(1, 3)).diagonal()  # type: ignore[call-overload]  # torch takes axis
    check.check_result(squares, U=U, V=V)
    return squares.clip(min=0.0) ** 0.5
