"""Window drop probabilities and exact keep probabilities inside a traced graph.

Under ``torch.compile`` a layer's ``p`` is a constant until it changes (e.g. under a
:class:`structdrop.nn.DropRateSchedule`); from then on Dynamo traces it as a symbolic float,
which no host function can take. So a traced call computes ``gamma`` and ``1 / mu`` from ``p``
with tensor operators, on shape constants from the host: ``t = -log(1 - gamma)`` from
``u = -log(1 - p)`` by a closed form ("interior", "ghiasi", a number) or, for "mean", by a table
of ``t / u`` over ``u`` refined by Newton steps on ``G(t) = log sum_j w_j exp(-n_j t) + u``
(convex and decreasing; the histogram ``(n_j, w_j)`` of the window counts is exact). Linear
interpolation in the table errs by about 1e-6 relative, and each Newton step squares the error:
two steps reach the float64 rounding of the host's bisection (docs/theory.md, "Sec. 5.3 ...
corrected", for the rules themselves).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from ._masking import exact_dtype
from ._tracing import host_constant
from ._window_rates import device_counts
from ._windows import count_histogram, window_counts

__all__ = ["traced_scales"]

_TABLE_POINTS = 4096
_TABLE_RANGE = 40.0  # u = -log(1 - p) <= 36.8 for every float64 p < 1
_NEWTON_STEPS = 2


def _log_keep_solutions(u: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``t`` with ``sum_j w_j exp(-n_j t) = exp(-u)`` for every ``u`` (float64, vectorized):
    Newton's method from ``u / max(n)``, left of the root, where it increases monotonically."""
    log_weights = np.log(weights)
    t = u / values.max()
    for _ in range(200):
        exponents = log_weights[None, :] - values[None, :] * t[:, None]
        top = exponents.max(1, keepdims=True)
        terms = np.exp(exponents - top)
        total = terms.sum(1)
        g = top[:, 0] + np.log(total) + u
        slope = -(terms * values[None, :]).sum(1) / total
        step = g / slope
        t = t - step
        if np.all(np.abs(step) <= 1e-17 * np.maximum(t, 1e-300)):
            break
    return t


@functools.lru_cache(maxsize=64)
def _mean_rule_constants(
    spatial: tuple[int, ...], block: tuple[int, ...], boundary: str, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """The table of ``t / u`` on ``u = 0, h, ..., _TABLE_RANGE`` and the histogram
    ``(n_j, log w_j)`` of the window counts, on a device."""
    values, weights = count_histogram(spatial, block, boundary)
    u = np.linspace(0.0, _TABLE_RANGE, _TABLE_POINTS + 1)
    ratio = np.empty_like(u)
    ratio[0] = 1.0 / float(weights @ values)  # t ~ u / mean(n) as u -> 0
    ratio[1:] = _log_keep_solutions(u[1:], values, weights) / u[1:]
    dtype = exact_dtype(device)
    arrays = (ratio, values, np.log(weights))
    return tuple(torch.from_numpy(a).to(device=device, dtype=dtype) for a in arrays)


@host_constant
def _traced_mean_constants(
    spatial: tuple[int, ...], block: tuple[int, ...], boundary: str, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_mean_rule_constants`, trace-safe."""
    return _mean_rule_constants(spatial, block, boundary, device)


@host_constant
def _traced_counts(
    spatial: tuple[int, ...], block: tuple[int, ...], boundary: str, device: torch.device
) -> Tensor:
    """The window counts ``n_i`` on a device, trace-safe."""
    return device_counts(spatial, block, boundary, device)


@host_constant
def _ghiasi_factor(spatial: tuple[int, ...], block: tuple[int, ...]) -> float:
    """``prod_k L_k / (w_k (L_k - w_k + 1))``: the "ghiasi" gamma is p times this."""
    factor = 1.0
    for length, r in zip(spatial, block, strict=True):
        w = min(r, length)
        factor *= length / (w * (length - w + 1))
    return factor


@host_constant
def _largest_count(spatial: tuple[int, ...], block: tuple[int, ...], boundary: str) -> float:
    """``max_i n_i``, the volume of the "interior" rule."""
    return float(window_counts(spatial, block, boundary).max())


def _mean_rule_log_keep(
    u: Tensor, spatial: tuple[int, ...], block: tuple[int, ...], boundary: str
) -> Tensor:
    """``t`` of the "mean" rule from ``u`` (0-d tensors): table, then Newton steps."""
    ratio, values, log_weights = _traced_mean_constants(spatial, block, boundary, u.device)
    position = u * (_TABLE_POINTS / _TABLE_RANGE)
    index = position.floor().clamp(0, _TABLE_POINTS - 1)
    fraction = position - index
    # a one-element gather, not ratio[index]: indexing by a 0-d tensor would read it back
    ends = ratio.index_select(0, index.long().reshape(1) + torch.arange(2, device=u.device))
    t = u * (ends[0] + fraction * (ends[1] - ends[0]))
    weights = log_weights.exp()
    for _ in range(_NEWTON_STEPS):
        exponents = log_weights - values * t
        # log sum_j w_j e^{-n_j t}: log1p of sum_j w_j expm1(-n_j t) while that sum is small
        # (no cancellation near 1), else the log-sum-exp (no cancellation, no underflow)
        drop = (weights * torch.expm1(-values * t)).sum()
        log_mean = torch.where(drop > -0.5, torch.log1p(drop), torch.logsumexp(exponents, 0))
        slope = -(torch.softmax(exponents, 0) * values).sum()
        t = t - (log_mean + u) / slope
    return t


def _traced_log_keep(
    p: float,
    spatial: tuple[int, ...],
    block: tuple[int, ...],
    boundary: str,
    rule: str | float,
    device: torch.device,
) -> Tensor:
    """``t = -log(1 - gamma)`` as a 0-d tensor computed with tensor operators from ``p`` (a
    constant or a symbolic float), for ``0 < p < 1``."""
    # ones * p, not scalar_tensor(p): a symbolic float stays symbolic in arithmetic with a
    # tensor, while a factory function taking it would specialize it (a recompile per p)
    one = torch.ones((), dtype=exact_dtype(device), device=device)
    if isinstance(rule, float):
        return -torch.log1p(-(one * rule))
    p_tensor = one * p
    if rule == "ghiasi":
        gamma = (p_tensor * _ghiasi_factor(spatial, block)).clamp_max(math.nextafter(1.0, 0.0))
        return -torch.log1p(-gamma)
    u = -torch.log1p(-p_tensor)
    if rule == "interior":
        return u / _largest_count(spatial, block, boundary)
    return _mean_rule_log_keep(u, spatial, block, boundary)


def traced_scales(
    p: float,
    spatial: tuple[int, ...],
    block: tuple[int, ...],
    boundary: str,
    rule: str | float,
    input: Tensor,
) -> tuple[Tensor, Tensor]:
    """``gamma`` (0-d) and ``1 / mu`` (shape ``spatial``, the input's dtype) in the graph: the
    same values as the host's ``window_gamma`` and ``inverse_keep_prob``
    (:mod:`._window_rates`)."""
    log_keep = _traced_log_keep(p, spatial, block, boundary, rule, input.device)
    mu = torch.exp(_traced_counts(spatial, block, boundary, input.device) * -log_keep)
    inverse = torch.where(mu > 0, 1.0 / mu.clamp_min(torch.finfo(mu.dtype).tiny), 0.0)
    inverse = inverse.clamp_max(torch.finfo(input.dtype).max).to(input.dtype)
    return -torch.expm1(-log_keep), inverse
