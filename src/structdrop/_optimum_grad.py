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

from .ksupport import ProxParts

if TYPE_CHECKING:
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


def spectral_tables(
    m: np.ndarray, parts: ProxParts
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The coefficients of :class:`SpectralProx`'s backward, ties at their limits."""
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


def with_autograd(
    fields: dict[str, Any],
    X: torch.Tensor,
    Y: torch.Tensor,
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
    inputs = times_pow2(X.to(**options), -ex)
    targets = times_pow2(Y.to(**options), -ey)
    tables = spectral_tables(solution.m, solution.parts)
    constants = [torch.as_tensor(t, **options) for t in tables[:4]]
    left, right, m, x = (
        torch.as_tensor(a, **options)
        for a in (solution.left, solution.right(), solution.m, solution.parts.x)
    )
    # the rank of the NumPy solution: singular values at most the tolerance are zero
    pinv = torch.linalg.pinv(inputs, atol=solution.tolerance)  # (N, b)
    target = (targets @ pinv) @ inputs  # Y P
    prediction, m_t = SpectralProx.apply(target, left, right, m, x, (*constants, tables[4]))
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
