"""Autograd through the closed-form global minimum (:func:`structdrop.global_minimum`).

The values come from the NumPy computation of :mod:`structdrop.optimum`; for torch inputs that
require grad, :func:`with_autograd` attaches the derivatives of a torch graph that recomputes the
solution on the current piece of the solution map (see :class:`structdrop.GlobalMinimum`). This
module imports torch, so it is loaded only when such inputs are given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .ksupport import TIE_RTOL, ProxParts

if TYPE_CHECKING:
    from ._arrays import Array
    from .optimum import ScaledSolution

__all__ = ["SpectralProx", "spectral_tables", "times_pow2", "with_autograd"]


def times_pow2(tensor: torch.Tensor, exponent: int) -> torch.Tensor:
    """``tensor * 2**exponent`` in steps that stay inside float64's exponent range."""
    while exponent:
        step = max(-1000, min(1000, exponent))
        tensor = tensor * 2.0**step
        exponent -= step
    return tensor


class SpectralProx(torch.autograd.Function):
    """``B -> (A*, m)`` for ``B = W diag(m) Z^T``: the minimizer ``A* = W diag(x) Z^T`` of
    ``||B - A||^2 + beta ||A||_(r)^2`` (eq. 12, Thm 2.7 corrected) and the singular values, with
    the derivative of a spectral function (Lewis and Sendov 2005).

    Forward returns the precomputed ``W diag(x) Z^T`` and ``m`` (B itself only links the graph).
    With ``K = W^T G Z`` for an output gradient ``G``, the input gradient is::

        W [Gs o sym(K) + Ga o skew(K) + Diag(J diag K)] Z^T
        + (I - W W^T) G Z diag(x/m) Z^T + W diag(x/m) W^T G (I - Z Z^T) + W diag(g_m) Z^T,

    where ``Gs_ij = (x_i - x_j)/(m_i - m_j)`` and ``Ga_ij = (x_i + x_j)/(m_i + m_j)`` off the
    diagonal and ``J = dx/dm`` on the decided piece of the prox (:class:`ProxParts`). Entries
    on one piece take the piece's slope (the limit of ``Gs`` at a tie, and of ``Ga`` and
    ``x/m`` at zero), so ties and zeros are fine.

    The general formula has one more term, ``c (I - W W^T) G (I - Z Z^T)``, for singular values
    born outside both spans. It is left out: for Y with a rows and X of rank q, W has
    ``min(a, q)`` columns, so either ``W W^T = I`` or Z spans the row space of X, and through
    ``B = Y P`` that term reaches neither the gradient of Y nor that of X.
    """

    @staticmethod
    def forward(
        ctx: Any,
        B: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        m: torch.Tensor,
        x: torch.Tensor,
        tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(left, right, *tables)
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
        return result, None, None, None, None, None


def spectral_tables(
    m: np.ndarray, parts: ProxParts
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The coefficients ``(Gs, Ga, x/m, J)`` of :class:`SpectralProx`'s backward.

    Pairs on one piece of the prox take the piece's slope; pairs on two pieces are at least
    ``TIE_RTOL * max m`` apart (tied values share their piece, see :class:`ProxParts`), so their
    divided differences lose at most ``eps / TIE_RTOL`` (relative) to rounding. ``Ga`` and
    ``x/m`` take the slope where both values, or the one value, are zeros by the same
    tolerance.
    """
    x, slope = parts.x, parts.slope
    regime = np.where(parts.head, 0, np.where(parts.middle, 1, 2))
    zero = m <= TIE_RTOL * (m[0] if m.size else 0.0)
    both_zero = zero[:, None] & zero[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        divided = (x[:, None] - x[None, :]) / (m[:, None] - m[None, :])
        symmetric = np.where(regime[:, None] == regime[None, :], slope[:, None], divided)
        summed = (x[:, None] + x[None, :]) / (m[:, None] + m[None, :])
        antisymmetric = np.where(both_zero, slope[:, None], summed)
        ratio = np.where(zero, slope, x / np.where(zero, 1.0, m))
    return symmetric, antisymmetric, ratio, parts.jacobian()


def with_autograd(
    fields: dict[str, Any],
    X: Array,
    Y: Array,
    solution: ScaledSolution,
    beta: float,
    block_size: int,
    ex: int,
    ey: int,
) -> dict[str, Any]:
    """``fields`` (the exact values) with the derivatives of a torch graph attached.

    The graph recomputes the solution of the scaled problem from X and Y on the current piece
    (see :class:`structdrop.GlobalMinimum`): ``P`` from ``torch.linalg.pinv`` (its backward is the
    constant-rank derivative, finite at repeated singular values), the prox of ``Y P`` from
    :class:`SpectralProx`, then ``x``, the residual and ``F*`` with torch operations. Each
    output is the exact value plus ``(t - t.detach())`` for its graph ``t``: the values stay
    those of the NumPy computation, the gradients are the graph's.
    """
    device = fields["prediction"].device
    options = {"dtype": torch.float64, "device": device}
    inputs = times_pow2(torch.as_tensor(X, **options), -ex)  # a NumPy input is a constant
    targets = times_pow2(torch.as_tensor(Y, **options), -ey)
    tables = spectral_tables(solution.m, solution.parts)
    constants = tuple(torch.as_tensor(t, **options) for t in tables)
    left, right, m, x = (
        torch.as_tensor(a, **options)
        for a in (solution.left, solution.right(), solution.m, solution.parts.x)
    )
    # the rank of the NumPy solution: singular values at most the tolerance are zero
    pinv = torch.linalg.pinv(inputs, atol=solution.tolerance)  # (N, b)
    target = (targets @ pinv) @ inputs  # Y P
    prediction, m_t = SpectralProx.apply(target, left, right, m, x, constants)
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
        graph = times_pow2(graph, exponent).to(exact.dtype)
        fields[name] = exact + (graph - graph.detach())
    return fields
