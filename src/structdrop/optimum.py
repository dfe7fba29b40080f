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
from typing import Any, NamedTuple

import numpy as np
import torch

from . import _validation as check
from ._arrays import Array, Kind, binary_exponent, common_kind, convert, scale_back, to_numpy
from ._rowspace import RowSpace, row_space
from ._threads import small_work
from .ksupport import ProxParts, _ksupport_sq_sorted, _prox_parts, ksupport_split
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
      is held fixed; at a breakpoint (some ``m_i`` with ``m_i = tau`` or
      ``beta m_i = (1+beta) tau``) the map has a kink and the gradient is one of its one-sided
      derivatives.
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


class _Scaled(NamedTuple):
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


def _solve(
    x: np.ndarray, y: np.ndarray, beta: float, block_size: int, route: str = "auto"
) -> _Scaled:
    """Thm 2.7 (corrected, NOTES.md) on data of unit scale.

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
        return _Scaled(
            np.zeros_like(y), np.zeros((a, b)), residual, residual, empty, parts, 0, 1,
            np.zeros((a, 0)), np.zeros((0, 0)), space,
        )  # fmt: skip

    w, m, zt = np.linalg.svd(y_row, full_matrices=False)
    parts = _prox_parts(m, beta, block_size)
    x_star = parts.x
    coefficients = (w * x_star) @ zt  # A* = coefficients @ qt
    a = y.shape[0]
    both = np.concatenate([y_row, coefficients])  # Y P and A* from one product with X
    both_weights, expanded = space.weights_and_expansion(both)
    weights = both_weights[a:]
    residual = float(np.sum((y - expanded[:a]) ** 2))  # ||Y (I - P)||^2, no cancellation
    prediction = expanded[a:]
    rank = int(np.count_nonzero(x_star > x_star[0] * x_star.size * np.finfo(float).eps))
    value = residual + float(np.sum((m - x_star) ** 2))
    value += beta * _ksupport_sq_sorted(x_star, block_size)
    return _Scaled(
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


def _flops(b: int, n: int, a: int) -> float:
    """Multiply-adds of the Gram route: X X^T, Y X^T, A* = W* X and the residual."""
    return float(b) * n * (b + 3 * a)


def global_minimum(X: Array, Y: Array, scheme: Scheme, width: int) -> GlobalMinimum:
    """The closed-form global minimum of the Dropout/DropBlock objective (Thm 2.7, NOTES.md).

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
    block_size = _block_size_of(scheme)
    width = _check_width(width, block_size)
    X = check.check_matrix(X, "X")
    Y = check.check_matrix(Y, "Y")
    check.check_same(Y.shape[1], X.shape[1], "X and Y must have the same number of samples N")
    kind = common_kind(X, Y)
    beta = regularization_strength(scheme, width)
    x_np, y_np = to_numpy(X, "X"), to_numpy(Y, "Y")
    # Entries within 2**+-SAFE_EXPONENT cannot overflow or underflow any product here: no copy.
    ex, ey = (e if abs(e) > SAFE_EXPONENT else 0 for e in map(binary_exponent, (x_np, y_np)))
    differentiable = (
        kind.is_torch and torch.is_grad_enabled() and (X.requires_grad or Y.requires_grad)
    )
    # Autograd differentiates the SVD route (finite differences of the Gram route's rounding,
    # eps * cond(X)^2, would blur a gradient check); everything else takes the cheaper route.
    route = "svd" if differentiable else "auto"
    with small_work(_flops(*x_np.shape, y_np.shape[0])):
        x_scaled = np.ldexp(x_np, -ex) if ex else x_np
        y_scaled = np.ldexp(y_np, -ey) if ey else y_np
        solution = _solve(x_scaled, y_scaled, beta, block_size, route)

    # Scale back: the value first (the quantity that overflows first), then the arrays.
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
        fields["value"] = scale_back(value, 0, kind, "the optimum value", "Y")
        fields["residual"] = scale_back(residual, 0, kind, "the residual", "Y")
        if differentiable:
            fields = _with_autograd(fields, X, Y, solution, beta, block_size, ex, ey)
    return GlobalMinimum(
        beta=beta,
        rho=solution.rho,
        rank=solution.rank,
        block_size=block_size,
        width=width,
        **fields,
    )


# ----------------------------------------------------------------------------------------------
# Autograd for torch inputs
# ----------------------------------------------------------------------------------------------
def _times_pow2(tensor: torch.Tensor, exponent: int) -> torch.Tensor:
    """``tensor * 2**exponent`` in steps that stay inside float64's exponent range."""
    while exponent:
        step = max(-1000, min(1000, exponent))
        tensor = tensor * 2.0**step
        exponent -= step
    return tensor


class _SpectralProx(torch.autograd.Function):
    """``B -> (A*, m)`` for ``B = W diag(m) Z^T``: the minimizer ``A* = W diag(x) Z^T`` of
    ``||B - A||^2 + beta ||A||_(r)^2`` (eq. 12, Thm 2.7 corrected) and the singular values, with
    the derivative of a spectral function (Lewis and Sendov 2005).

    Forward returns the precomputed ``W diag(x) Z^T`` and ``m`` (B itself only links the graph).
    With ``K = W^T G Z`` for an output gradient ``G``, the input gradient is::

        W [Gs o sym(K) + Ga o skew(K) + Diag(J diag K)] Z^T
        + (I - W W^T) G Z diag(x/m) Z^T + W diag(x/m) W^T G (I - Z Z^T)
        + c0 (I - W W^T) G (I - Z Z^T) + W diag(g_m) Z^T,

    where ``Gs_ij = (x_i - x_j)/(m_i - m_j)`` and ``Ga_ij = (x_i + x_j)/(m_i + m_j)`` off the
    diagonal, ``J = dx/dm`` on the current piece of the prox and ``c0`` the prox's slope at 0.
    Ties take their limits (the slope of the common piece), so repeated singular values are fine.
    """

    @staticmethod
    def forward(
        ctx: Any,
        B: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        m: torch.Tensor,
        x: torch.Tensor,
        tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(left, right, *tables[:4])
        ctx.c0 = tables[4]
        return (left * x) @ right.T, m.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, grad_m: torch.Tensor) -> tuple[Any, ...]:
        left, right, symmetric, antisymmetric, ratio, jacobian = ctx.saved_tensors
        grad_right = grad @ right  # G Z
        k = left.T @ grad_right  # W^T G Z
        inner = symmetric * (k + k.T) / 2 + antisymmetric * (k - k.T) / 2
        inner = inner - torch.diag(inner.diagonal()) + torch.diag(jacobian @ k.diagonal())
        inner = inner + torch.diag(grad_m)
        left_grad = left.T @ grad  # W^T G
        result = left @ inner @ right.T
        result = result + ((grad_right - left @ k) * ratio) @ right.T
        result = result + (left * ratio) @ (left_grad - k @ right.T)
        if ctx.c0:
            complement = grad - left @ left_grad - grad_right @ right.T + left @ k @ right.T
            result = result + ctx.c0 * complement
        return result, None, None, None, None, None


def _spectral_tables(
    m: np.ndarray, parts: ProxParts
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The coefficients of :class:`_SpectralProx`'s backward, ties at their limits."""
    x, slope = parts.x, parts.slope
    regime = np.where(parts.head, 0, np.where(parts.middle, 1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = m[:, None] - m[None, :]
        divided = (x[:, None] - x[None, :]) / gap
        crossing = np.where(gap != 0, divided, (slope[:, None] + slope[None, :]) / 2)
        symmetric = np.where(regime[:, None] == regime[None, :], slope[:, None], crossing)
        total = m[:, None] + m[None, :]
        antisymmetric = np.where(total > 0, (x[:, None] + x[None, :]) / total, slope[:, None])
        ratio = np.where(m > 0, x / np.where(m > 0, m, 1.0), slope)
    c0 = 1.0 / (1.0 + parts.beta) if parts.head.all() else 0.0
    return symmetric, antisymmetric, ratio, parts.jacobian(), c0


def _with_autograd(
    fields: dict[str, Any],
    X: torch.Tensor,
    Y: torch.Tensor,
    solution: _Scaled,
    beta: float,
    block_size: int,
    ex: int,
    ey: int,
) -> dict[str, Any]:
    """``fields`` (the exact values) with the derivatives of a torch graph attached.

    The graph recomputes the solution of the scaled problem from X and Y on the current piece
    (see :class:`GlobalMinimum`): ``P`` from ``torch.linalg.pinv`` (its backward is the
    constant-rank derivative, finite at repeated singular values), the prox of ``Y P`` from
    :class:`_SpectralProx`, then ``x``, the residual and ``F*`` with torch operations. Each
    output is the exact value plus ``(t - t.detach())`` for its graph ``t``: the values stay
    those of the NumPy computation, the gradients are the graph's.
    """
    device = fields["prediction"].device
    options = {"dtype": torch.float64, "device": device}
    inputs = _times_pow2(X.to(**options), -ex)
    targets = _times_pow2(Y.to(**options), -ey)
    tables = _spectral_tables(solution.m, solution.parts)
    constants = [torch.as_tensor(t, **options) for t in tables[:4]]
    left, right, m, x = (
        torch.as_tensor(a, **options)
        for a in (solution.left, solution.right(), solution.m, solution.parts.x)
    )
    # the rank of the NumPy solution: singular values at most the tolerance are zero
    pinv = torch.linalg.pinv(inputs, atol=solution.tolerance)  # (N, b)
    target = (targets @ pinv) @ inputs  # Y P
    prediction, m_t = _SpectralProx.apply(target, left, right, m, x, (*constants, tables[4]))
    parts = solution.parts
    head, middle = (torch.as_tensor(a, device=device) for a in (parts.head, parts.middle))
    tau = parts.coupling * (m_t * middle).sum()
    x_t = torch.where(head, m_t / (1.0 + beta), torch.where(middle, m_t - tau, 0.0 * m_t))
    residual = ((targets - target) ** 2).sum()
    value = residual + ((m_t - x_t) ** 2).sum()
    if x_t.numel():
        k = min(block_size, x_t.numel())
        rho = solution.rho
        tail = x_t[rho - 1 :].sum()
        value = value + beta * ((x_t[: rho - 1] ** 2).sum() + tail * tail / (k - rho + 1))
    graphs = {
        "prediction": (prediction, ey),
        "weights": (prediction @ pinv, ey - ex),
        "value": (value, 2 * ey),
        "singular_values": (x_t, ey),
        "target_singular_values": (m_t, ey),
        "residual": (residual, 2 * ey),
    }
    for name, (graph, exponent) in graphs.items():
        exact = fields[name]
        graph = _times_pow2(graph, exponent).to(exact.dtype)
        fields[name] = exact + (graph - graph.detach())
    return fields


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
    (a, _), b = U.shape, V.shape[0]
    with small_work(float(d) * (a * d + b * b + b * d)):
        products = (U.T @ U) * (V.T @ xx @ V)  # (i, j): (u_i^T u_j)(x-weighted v_i^T v_j)
    k = d // block_size
    blocks = products.reshape(k, block_size, k, block_size)
    squares = blocks.sum(axis=(1, 3)).diagonal()  # NumPy and torch alike
    check.check_result(squares, U=U, V=V)
    return squares.clip(min=0.0) ** 0.5
