"""Sliding DropBlock on 1-D, 2-D and 3-D feature maps from one N-d code path.

Ghiasi et al.'s DropBlock drops every candidate window of ``block_size`` units independently
with probability ``gamma``; a unit is kept iff no dropped window covers it. Windows are products
of 1-D windows, one per spatial axis of length ``L`` with block ``r``:

* ``"valid"`` (torchvision, TensorFlow): starts ``s = 0 .. L - w`` with ``w = min(r, L)``, i.e.
  the window fits inside the map (a single window covering the axis when ``r >= L``);
* ``"clipped"`` (timm): one window per centre ``c = 0 .. L - 1`` covering
  ``[c - (r - 1) // 2, c + r // 2]`` clipped to ``[0, L)``.

With ``n_i`` windows covering unit ``i`` the exact keep probability is ``mu_i = (1 - gamma)^n_i``
(NOTES.md, "Sec. 5.3 ... corrected"); in 1-D the mask law is exactly
``structdrop.SlidingBlock(p, r, boundary=placement, gamma=gamma)``. The default scaling divides
unit ``i`` by ``mu_i``, so ``E[output] = input`` per unit, also at the borders.

Two samplers draw this same law:

* **sparse** (CPU eager): the dropped windows form a Bernoulli process over the flattened
  candidate positions, drawn through its geometric gaps, and the units of each dropped window
  are set to zero by index arithmetic, in the output itself when every unit has its own mask.
  Its work is proportional to the number of dropped windows, about ``gamma`` of the candidates.
* **dense** (accelerators, ``torch.compile``, ``torch.export``, CUDA graphs): Bernoulli(gamma)
  on the whole candidate grid, expanded to windows by a stride-1 max-pool (or, when traced, by
  shifted maxima that the compiler fuses), times the cached device copy of ``1 / mu``. Only
  tensor operators with static shapes: no value is read back to the host.

``method="auto"`` picks the sparse sampler for CPU eager calls and the dense one otherwise.

References:
    Ghiasi, Lin, Le. DropBlock: A regularization method for convolutional networks.
    NeurIPS 2018. https://arxiv.org/abs/1810.12890
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.fx
import torch.nn.functional as torch_functional
from torch import Tensor

from .._validation import (
    check_block_sizes,
    check_choice,
    check_gamma_rule,
    check_generator,
    check_probability,
)
from ._tracing import (
    check_method,
    check_traceable_generator,
    host_constant,
    is_compiling,
    static_sizes,
    use_dense,
)

__all__ = [
    "drop_block",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "drop_block_keep_prob",
    "window_drop_prob",
]

PLACEMENTS: tuple[str, ...] = ("valid", "clipped")
GAMMA_RULES: tuple[str, ...] = ("mean", "interior", "ghiasi")
SCALES: tuple[str, ...] = ("expected", "batch")

# Windows of a configuration are looked up in a table of (candidates x block volume) int32
# unit indices when it holds at most this many entries, else computed per draw.
_TABLE_LIMIT = 1 << 22
# Bisection steps for the "mean" rule: enough to reach float64 resolution for any root in
# (0, 1), even a subnormal one (the loop stops as soon as the bracket cannot be split).
_BISECTION_STEPS = 1100
# The eager dense path max-pools all axes at once up to this block volume, else axis by axis.
_JOINT_POOL_LIMIT = 64


# ----------------------------------------------------------------------------------------------
# Input checks (the shared ones live in structdrop._validation)


def _check_spatial_shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Size | Sequence) and not isinstance(value, str) and len(value):
        if all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value
        ):
            return tuple(int(v) for v in value)
    raise ValueError(f"spatial_shape must be a non-empty sequence of ints >= 1, got {value!r}")


def _check_input(input: Any, min_ndim: int = 3, name: str = "drop_block") -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating point tensor, got dtype {input.dtype}")
    if input.ndim < min_ndim:
        raise ValueError(
            f"input must have shape (N, C, *spatial) with at least one spatial axis for "
            f"{name}, got shape {tuple(input.shape)}"
        )
    return input


def check_drop_rate(value: Any, name: str = "p") -> float:
    """A drop probability of a layer: a real number in [0, 1]; ``p = 1`` drops everything, as
    in ``torch.nn.functional.dropout``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # False for NaN as well
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_eps(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"eps must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value < math.inf:  # False for NaN as well
        raise ValueError(f"eps must be a finite number >= 0, got {value}")
    return value


def check_inplace(value: Any) -> bool:
    """``inplace``, the third positional argument as in torchvision: a bool. A string here is
    the old positional ``placement``, which is keyword-only now."""
    if not isinstance(value, bool | np.bool_):
        hint = (
            "; placement, gamma, scale, ... are keyword-only (e.g. placement='clipped')"
            if isinstance(value, str)
            else ""
        )
        raise TypeError(f"inplace must be a bool, got {value!r}{hint}")
    return bool(value)


# ----------------------------------------------------------------------------------------------
# Geometry and exact keep probabilities (float64, cached per configuration)


class _Geometry(NamedTuple):
    """Windows of one configuration: per axis the candidate count, the first covered offset
    relative to the candidate index, and the window extent (before clipping)."""

    spatial: tuple[int, ...]
    candidates: tuple[int, ...]
    starts: tuple[int, ...]
    extents: tuple[int, ...]
    clipped: bool

    def pads(self) -> tuple[tuple[int, int], ...]:
        """Per axis, the zeros to put before and after the candidate grid so that a stride-1
        window maximum of ``extents`` gives, at unit ``u``, the maximum over the candidates
        whose windows cover ``u``: ``[u - w + 1, u]`` (valid) or
        ``[u - r // 2, u + (r - 1) // 2]`` (clipped)."""
        return tuple(
            (s + e - 1, n - c - s)
            for n, c, s, e in zip(
                self.spatial, self.candidates, self.starts, self.extents, strict=True
            )
        )


def _geometry(spatial: tuple[int, ...], block: tuple[int, ...], placement: str) -> _Geometry:
    if placement == "valid":
        extents = tuple(min(r, n) for r, n in zip(block, spatial, strict=True))
        candidates = tuple(n - w + 1 for n, w in zip(spatial, extents, strict=True))
        return _Geometry(spatial, candidates, (0,) * len(spatial), extents, False)
    starts = tuple(-((r - 1) // 2) for r in block)
    return _Geometry(spatial, spatial, starts, block, True)


def _axis_counts(length: int, block: int, placement: str) -> np.ndarray:
    """Number of windows covering each unit of one axis."""
    i = np.arange(length)
    if placement == "valid":
        w = min(block, length)
        return np.minimum(i, length - w) - np.maximum(0, i - w + 1) + 1
    return np.minimum(i + (block - 1) // 2, length - 1) - np.maximum(i - block // 2, 0) + 1


@functools.lru_cache(maxsize=128)
def _window_counts(spatial: tuple[int, ...], block: tuple[int, ...], placement: str) -> np.ndarray:
    """``n_i``: the number of candidate windows covering each unit, shape ``spatial``."""
    counts = np.ones((), dtype=np.int64)
    for length, r in zip(spatial, block, strict=True):
        counts = np.multiply.outer(counts, _axis_counts(length, r, placement))
    counts.setflags(write=False)
    return counts


@functools.lru_cache(maxsize=128)
def _count_histogram(
    spatial: tuple[int, ...], block: tuple[int, ...], placement: str
) -> tuple[np.ndarray, np.ndarray]:
    values, multiplicity = np.unique(_window_counts(spatial, block, placement), return_counts=True)
    return values.astype(np.float64), multiplicity / multiplicity.sum()


def _mean_rate_below(gamma: float, p: float, values: np.ndarray, weights: np.ndarray) -> bool:
    """Whether the mean drop rate ``mean_i 1 - (1 - gamma)^{n_i}`` at ``gamma`` is below ``p``,
    compared in drop rates for ``p <= 1/2`` (accurate for tiny rates) and in keep rates above
    (``1 - p`` is exact there, and tiny keep rates stay accurate)."""
    log_keep = values * math.log1p(-gamma)
    if p <= 0.5:
        return -float(weights @ np.expm1(log_keep)) < p
    return float(weights @ np.exp(log_keep)) > 1.0 - p


@functools.lru_cache(maxsize=256)
def _gamma_for(
    p: float, spatial: tuple[int, ...], block: tuple[int, ...], placement: str, rule: str
) -> float:
    """The window drop probability of a rule (validated arguments, ``p < 1``)."""
    if p == 0.0:
        return 0.0
    if rule == "mean":
        values, weights = _count_histogram(spatial, block, placement)
        lo, hi = 0.0, 1.0  # the mean drop rate is 0 at gamma = 0, increasing, 1 at gamma = 1
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if _mean_rate_below(mid, p, values, weights):
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi) if hi < 1.0 else lo
    if rule == "interior":
        volume = int(_window_counts(spatial, block, placement).max())
        return -math.expm1(math.log1p(-p) / volume)
    # "ghiasi": p / block_volume * prod(L / (L - w + 1)) with w = min(r, L), as torchvision
    gamma = p
    for length, r in zip(spatial, block, strict=True):
        w = min(r, length)
        gamma *= length / (w * (length - w + 1))
    return min(gamma, math.nextafter(1.0, 0.0))


def _window_gamma(
    p: float, spatial: tuple[int, ...], block: tuple[int, ...], placement: str, rule: str | float
) -> float:
    """``gamma`` of a rule, or the rule itself when it is a number (eager calls)."""
    if isinstance(rule, float):
        return rule
    return _gamma_for(p, spatial, block, placement, rule)


@functools.lru_cache(maxsize=128)
def _keep_prob(
    spatial: tuple[int, ...], block: tuple[int, ...], placement: str, gamma: float
) -> Tensor:
    """``mu = (1 - gamma)^n`` as a float64 CPU tensor (cached: never modify it)."""
    counts = _window_counts(spatial, block, placement)
    return torch.from_numpy(np.exp(counts * math.log1p(-gamma)))


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64


@functools.lru_cache(maxsize=64)
def _device_counts(
    spatial: tuple[int, ...], block: tuple[int, ...], placement: str, device: torch.device
) -> Tensor:
    """``n_i`` on a device (one upload per configuration; cached: never modify it)."""
    counts = torch.from_numpy(_window_counts(spatial, block, placement).astype(np.float64))
    return counts.to(device=device, dtype=_exact_dtype(device))


@functools.lru_cache(maxsize=128)
def _inverse_keep_prob_cached(
    spatial: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    gamma: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    counts = _device_counts(spatial, block, placement, device)
    mu = torch.exp(counts * math.log1p(-gamma))  # on the device: no upload for a new gamma
    inverse = torch.where(mu > 0, 1.0 / mu.clamp_min(torch.finfo(mu.dtype).tiny), 0.0)
    return inverse.clamp_max(torch.finfo(dtype).max).to(dtype)


@host_constant
def _inverse_keep_prob(
    spatial: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    gamma: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """``1 / mu`` on a device in a dtype; 0 where mu underflows, capped at the dtype's largest
    finite value, so that no scale is infinite (cached: never modify it; trace-safe).

    A new ``gamma`` (e.g. under :class:`structdrop.nn.DropRateSchedule`) is computed on the
    device from the cached window counts, so it costs no host-to-device copy.
    """
    return _inverse_keep_prob_cached(spatial, block, placement, gamma, device, dtype)


# ----------------------------------------------------------------------------------------------
# Window drop probabilities inside a traced graph
#
# Under torch.compile a layer's p is a constant until it changes (e.g. under a
# DropRateSchedule); from then on Dynamo traces it as a symbolic float, which no host function
# can take. So a traced call computes gamma and 1 / mu from p with tensor operators, on shape
# constants from the host: ``t = -log(1 - gamma)`` from ``u = -log(1 - p)`` by a closed form
# ("interior", "ghiasi", a number) or, for "mean", by a table of ``t / u`` over u refined by
# Newton steps on ``G(t) = log sum_j w_j exp(-n_j t) + u`` (convex and decreasing; the
# histogram ``(n_j, w_j)`` of the window counts is exact). Linear interpolation in the table
# errs by about 1e-6 relative, and each Newton step squares the error: two steps reach the
# float64 rounding of the host's bisection.

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
    spatial: tuple[int, ...], block: tuple[int, ...], placement: str, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """The table of ``t / u`` on ``u = 0, h, ..., _TABLE_RANGE`` and the histogram
    ``(n_j, log w_j)`` of the window counts, on a device."""
    values, weights = _count_histogram(spatial, block, placement)
    u = np.linspace(0.0, _TABLE_RANGE, _TABLE_POINTS + 1)
    ratio = np.empty_like(u)
    ratio[0] = 1.0 / float(weights @ values)  # t ~ u / mean(n) as u -> 0
    ratio[1:] = _log_keep_solutions(u[1:], values, weights) / u[1:]
    dtype = _exact_dtype(device)
    arrays = (ratio, values, np.log(weights))
    return tuple(torch.from_numpy(a).to(device=device, dtype=dtype) for a in arrays)


@host_constant
def _traced_mean_constants(
    spatial: tuple[int, ...], block: tuple[int, ...], placement: str, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    return _mean_rule_constants(spatial, block, placement, device)


@host_constant
def _traced_counts(
    spatial: tuple[int, ...], block: tuple[int, ...], placement: str, device: torch.device
) -> Tensor:
    return _device_counts(spatial, block, placement, device)


@host_constant
def _ghiasi_factor(spatial: tuple[int, ...], block: tuple[int, ...]) -> float:
    """``prod_k L_k / (w_k (L_k - w_k + 1))``: the "ghiasi" gamma is p times this."""
    factor = 1.0
    for length, r in zip(spatial, block, strict=True):
        w = min(r, length)
        factor *= length / (w * (length - w + 1))
    return factor


@host_constant
def _largest_count(spatial: tuple[int, ...], block: tuple[int, ...], placement: str) -> float:
    return float(_window_counts(spatial, block, placement).max())


def _mean_rule_log_keep(
    u: Tensor, spatial: tuple[int, ...], block: tuple[int, ...], placement: str
) -> Tensor:
    """``t`` of the "mean" rule from ``u`` (0-d tensors): table, then Newton steps."""
    ratio, values, log_weights = _traced_mean_constants(spatial, block, placement, u.device)
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
    placement: str,
    rule: str | float,
    device: torch.device,
) -> Tensor:
    """``t = -log(1 - gamma)`` as a 0-d tensor computed with tensor operators from ``p`` (a
    constant or a symbolic float), for ``0 < p < 1``."""
    # ones * p, not scalar_tensor(p): a symbolic float stays symbolic in arithmetic with a
    # tensor, while a factory function taking it would specialize it (a recompile per p)
    one = torch.ones((), dtype=_exact_dtype(device), device=device)
    if isinstance(rule, float):
        return -torch.log1p(-(one * rule))
    p_tensor = one * p
    if rule == "ghiasi":
        gamma = (p_tensor * _ghiasi_factor(spatial, block)).clamp_max(math.nextafter(1.0, 0.0))
        return -torch.log1p(-gamma)
    u = -torch.log1p(-p_tensor)
    if rule == "interior":
        return u / _largest_count(spatial, block, placement)
    return _mean_rule_log_keep(u, spatial, block, placement)


def _traced_scales(
    p: float,
    spatial: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    rule: str | float,
    input: Tensor,
) -> tuple[Tensor, Tensor]:
    """``gamma`` (0-d) and ``1 / mu`` (shape ``spatial``, the input's dtype) in the graph: the
    same values as the host's :func:`_window_gamma` and :func:`_inverse_keep_prob`."""
    log_keep = _traced_log_keep(p, spatial, block, placement, rule, input.device)
    mu = torch.exp(_traced_counts(spatial, block, placement, input.device) * -log_keep)
    inverse = torch.where(mu > 0, 1.0 / mu.clamp_min(torch.finfo(mu.dtype).tiny), 0.0)
    inverse = inverse.clamp_max(torch.finfo(input.dtype).max).to(input.dtype)
    return -torch.expm1(-log_keep), inverse


# ----------------------------------------------------------------------------------------------
# Sparse sampling (CPU eager): only the dropped windows are drawn


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, stride = [], 1
    for n in reversed(shape):
        strides.append(stride)
        stride *= n
    return tuple(reversed(strides))


def _output_strides(input: Tensor) -> tuple[int, ...]:
    """The strides of ``torch.empty_like(input)``: the input's own when it is dense and
    non-overlapping (channels_last, channels_last_3d, ...), else contiguous."""
    if input.is_contiguous():
        return _contiguous_strides(input.shape)
    return tuple(torch.empty_like(input, device="meta").stride())


def _window_units(
    rem: Tensor, geometry: _Geometry, strides: tuple[int, ...] | None = None
) -> Tensor:
    """Offsets (within one mask plane of the given spatial ``strides``, contiguous by default)
    of the units of the windows at candidate indices ``rem``.

    Returns an int64 tensor of shape ``(len(rem), prod(extents))``; clipped windows repeat
    border units, which is harmless for writing zeros.
    """
    ndim = len(geometry.spatial)
    if strides is None:
        strides = _contiguous_strides(geometry.spatial)
    index = torch.zeros((rem.numel(),) + (1,) * ndim, dtype=torch.int64, device=rem.device)
    for axis in reversed(range(ndim)):
        coordinate = rem % geometry.candidates[axis]
        rem = rem.div(geometry.candidates[axis], rounding_mode="floor")
        offsets = torch.arange(geometry.extents[axis], device=rem.device) + geometry.starts[axis]
        units = coordinate[:, None] + offsets
        if geometry.clipped:
            units = units.clamp_(0, geometry.spatial[axis] - 1)
        shape = [units.shape[0]] + [1] * ndim
        shape[axis + 1] = units.shape[1]
        index = index + (units * strides[axis]).view(shape)
    return index.view(index.shape[0], math.prod(geometry.extents))


@functools.lru_cache(maxsize=64)
def _window_table(
    geometry: _Geometry, device: torch.device, strides: tuple[int, ...] | None = None
) -> Tensor:
    """The unit offsets of every candidate window, int32 (int64 if needed), shape
    (candidates, volume)."""
    count = math.prod(geometry.candidates)
    rem = torch.arange(count, dtype=torch.int64, device=device)
    table = _window_units(rem, geometry, strides)
    fits = table.numel() == 0 or int(table.max()) < 2**31
    return table.to(torch.int32) if fits else table


def _chunk_size(total: int, gamma: float) -> int:
    """Gaps drawn per round: the expected number of windows plus six standard deviations."""
    mean = total * gamma
    return int(mean + 6.0 * math.sqrt(mean * (1.0 - gamma)) + 16.0)


def _dropped_positions(
    total: int, gamma: float, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """Sorted positions in ``range(total)``, each present independently with probability gamma.

    Draws the Bernoulli process exactly through its gaps: ``gap - 1`` is geometric with
    ``P(gap - 1 >= k) = (1 - gamma)^k``, i.e. ``floor(log(U) / log(1 - gamma))`` for ``U``
    uniform on (0, 1). Enough gaps to pass ``total`` are drawn up front; in the rare event
    that they do not, more are drawn.
    """
    if gamma <= 0.0 or total == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    log_q = math.log1p(-gamma)
    chunk = _chunk_size(total, gamma)
    tiny = torch.finfo(torch.float64).tiny
    ends: list[Tensor] = []
    last = 0.0
    while True:
        gaps = torch.empty(chunk, dtype=torch.float64, device=device)
        gaps.uniform_(tiny, 1.0, generator=generator).log_().div_(log_q).floor_().add_(1.0)
        cumulative = torch.cumsum(gaps, 0)
        if last:
            cumulative.add_(last)
        inside = int(torch.searchsorted(cumulative, float(total), right=True))
        ends.append(cumulative[:inside])
        if inside < chunk:
            break
        last = float(cumulative[-1])
    positions = ends[0] if len(ends) == 1 else torch.cat(ends)
    return positions.sub_(1.0).to(torch.int64)


def _dropped_units(
    shape: tuple[int, ...],
    geometry: _Geometry,
    gamma: float,
    device: torch.device,
    generator: torch.Generator | None,
    strides: tuple[int, ...] | None = None,
) -> Tensor:
    """Storage offsets (into a dense tensor of ``shape = (B0, B1, *spatial)`` with ``strides``,
    contiguous by default) of the units covered by the dropped windows, with repeats, int64."""
    planes = shape[0] * shape[1]
    per_plane = math.prod(geometry.candidates)
    contiguous = strides is None or strides == _contiguous_strides(shape)
    spatial_strides = None if contiguous else strides[2:]
    positions = _dropped_positions(planes * per_plane, gamma, device, generator)
    plane = positions // per_plane
    rem = positions % per_plane
    if per_plane * math.prod(geometry.extents) <= _TABLE_LIMIT:
        units = _window_table(geometry, device, spatial_strides)[rem]
    else:
        units = _window_units(rem, geometry, spatial_strides)
    if contiguous:
        base = plane * math.prod(geometry.spatial)
    else:
        base = plane.div(shape[1], rounding_mode="floor") * strides[0]
        base += (plane % shape[1]) * strides[1]
    return (units + base[:, None]).view(-1)


def _block_mask(
    shape: tuple[int, ...],
    geometry: _Geometry,
    gamma: float,
    init: Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """A mask of ``shape = (B0, B1, *spatial)``: ``init`` (broadcast over the planes; ones when
    None) with every unit covered by a dropped window set to zero."""
    if init is None:
        mask = torch.ones(shape, dtype=dtype, device=device)
    else:
        mask = init.expand(shape).contiguous()
    index = _dropped_units(shape, geometry, gamma, device, generator)
    return mask.view(-1).index_fill_(0, index, 0).view(shape)


def _scale_and_fill(
    input: Tensor, scale: Tensor, index: Tensor, strides: tuple[int, ...]
) -> Tensor:
    """``input * scale`` in a new tensor of the given (dense) strides, zero at storage ``index``."""
    output = torch.empty_strided(input.shape, strides, dtype=input.dtype, device=input.device)
    torch.mul(input, scale, out=output)
    output.as_strided((output.numel(),), (1,)).index_fill_(0, index, 0)
    return output


class _ScaleAndZero(torch.autograd.Function):
    """``input * scale`` with the units at ``index`` set to zero: the product with the mask
    ``z / mu`` without materializing the mask. Linear in ``input``, so the backward pass is the
    same operation on the gradient (and differentiable again). The result has the dense
    ``strides`` the indices were computed for (the input's memory format)."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, scale: Tensor, index: Tensor, strides: tuple[int, ...]
    ) -> Tensor:
        ctx.save_for_backward(scale, index)
        ctx.strides = strides
        return _scale_and_fill(input, scale, index, strides)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        scale, index = ctx.saved_tensors
        return _ScaleAndZero.apply(grad, scale, index, ctx.strides), None, None, None


def _batch_scaled(keep: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """``keep`` times its size over its number of kept units plus ``eps`` (summed in float32,
    as torchvision and timm), capped so that an all-dropped mask gives zeros, not NaN."""
    kept = keep.sum(dtype=torch.float32)
    largest = min(torch.finfo(torch.float32).max, torch.finfo(dtype).max)
    factor = (keep.numel() / (kept + eps)).clamp_max(largest)
    return keep.mul_(factor.to(dtype))


def _scaled_mask(
    shape: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    p: float,
    rule: str | float,
    scale: str,
    eps: float,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """The sparse sampler's mask that multiplies the input, scaling included."""
    spatial = shape[2:]
    gamma = _window_gamma(p, spatial, block, placement, rule)
    geometry = _geometry(spatial, block, placement)
    if scale == "expected":
        init = _inverse_keep_prob(spatial, block, placement, gamma, device, dtype)
        return _block_mask(shape, geometry, gamma, init, dtype, device, generator)
    mask = _block_mask(shape, geometry, gamma, None, dtype, device, generator)
    return _batch_scaled(mask, eps, dtype)


def _scale_and_index(
    shape: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    p: float,
    rule: str | float,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
    strides: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """``1 / mu`` and the storage offsets of the dropped units (sparse sampler)."""
    spatial = shape[2:]
    gamma = _window_gamma(p, spatial, block, placement, rule)
    geometry = _geometry(spatial, block, placement)
    inverse = _inverse_keep_prob(spatial, block, placement, gamma, device, dtype)
    return inverse, _dropped_units(shape, geometry, gamma, device, generator, strides)


# The number of dropped windows is random: under torch.compile, method="sparse" runs the mask
# making eagerly (a graph break); method="auto" takes the dense sampler there instead.
_scaled_mask_eager = torch.compiler.disable(_scaled_mask)
_scale_and_index_eager = torch.compiler.disable(_scale_and_index)


# ----------------------------------------------------------------------------------------------
# Dense sampling (accelerators, torch.compile, CUDA graphs): static shapes, no host reads

_POOLS = {1: torch_functional.max_pool1d, 2: torch_functional.max_pool2d}
_POOLS[3] = torch_functional.max_pool3d


def _flat_pads(pads: Sequence[tuple[int, int]]) -> list[int]:
    """Per-axis (before, after) pads in the last-axis-first order of ``F.pad``."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return flat


def _hits_by_pooling(drops: Tensor, geometry: _Geometry) -> Tensor:
    """1 where a dropped window covers the unit, else 0, from the 0/1 floats ``drops`` on the
    candidate grid: a stride-1 max-pool (eager; at most 3 spatial axes).

    Part of each axis' zero padding is left to the pool's own padding (its implicit -inf never
    wins: every pooling window holds a real or zero-padded entry, since it pads less than a
    kernel), the rest is explicit."""
    kernels = geometry.extents
    pads = geometry.pads()
    inner = tuple(min(*pad, k // 2) for pad, k in zip(pads, kernels, strict=True))
    outer = [(before - q, after - q) for (before, after), q in zip(pads, inner, strict=True)]
    flat = _flat_pads(outer)
    if any(flat):
        drops = torch_functional.pad(drops, flat)
    pool = _POOLS[len(kernels)]
    if math.prod(kernels) <= _JOINT_POOL_LIMIT:
        return pool(drops, kernels, stride=1, padding=inner)
    ndim = len(kernels)
    for axis in range(ndim):  # a box maximum is the maximum of per-axis maxima
        kernel = tuple(kernels[axis] if a == axis else 1 for a in range(ndim))
        padding = tuple(inner[axis] if a == axis else 0 for a in range(ndim))
        drops = pool(drops, kernel, stride=1, padding=padding)
    return drops


def _hits_by_shifts(drops: Tensor, geometry: _Geometry) -> Tensor:
    """Nonzero where a dropped window covers the unit, from the 0/1 ``drops`` (bool or uint8)
    on the candidate grid: axis by axis, the last first, pad that axis with zeros and OR
    ``extent`` shifted slices. Any number of spatial axes. Under ``torch.compile`` the ORs fuse
    into one kernel per axis, and padding one axis at a time keeps the intermediate that the
    compiler stores (the first axis done) small."""
    hits = drops
    ndim = len(geometry.spatial)
    for axis in reversed(range(ndim)):
        dim, length, extent = axis + 2, geometry.spatial[axis], geometry.extents[axis]
        hits = torch_functional.pad(hits, [0, 0] * (ndim - 1 - axis) + list(geometry.pads()[axis]))
        covered = hits.narrow(dim, 0, length)
        for offset in range(1, extent):
            covered = covered | hits.narrow(dim, offset, length)
        hits = covered
    return hits


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    """Uniforms in float64 for float64 inputs, else float32 (never coarser)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _drop_bytes(
    grid: tuple[int, ...],
    gamma: float | Tensor,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """Bernoulli(gamma) as bytes on the candidate grid (one byte per candidate: the compiler
    stores this, not the uniforms). ``gamma`` is a float, or a 0-d tensor when traced."""
    draws = torch.empty(grid, dtype=torch.uint8, device=device)
    if isinstance(gamma, Tensor):
        gamma = gamma.to(_draw_dtype(dtype))
    if generator is None:  # (a generator=None keyword breaks symbolic batch sizes)
        return draws.bernoulli_(gamma)
    return draws.bernoulli_(gamma, generator=generator)


def _dense_output(
    input: Tensor,
    shape: tuple[int, ...],
    geometry: _Geometry,
    gamma: float | Tensor,
    scale: str,
    eps: float,
    inverse: Tensor,
    inplace: bool,
    generator: torch.Generator | None,
    traced: bool,
) -> Tensor:
    """The dense sampler's output for masks of ``shape = (B0, B1, *spatial)``.

    Bernoulli(gamma) on the ``(B0, B1, *candidates)`` grid, expanded to the units its windows
    cover; then ``z / mu`` (``scale="expected"``) or ``z`` times its size over its sum. Eager
    calls (at most 3 spatial axes) draw in the input's dtype and max-pool: a few library
    kernels. Traced calls (and more axes) draw bytes and OR shifted slices, and the output is
    ``(input / mu) * keep`` with the boolean ``keep``, so that the compiled graph keeps one
    byte per unit for the backward pass (a float mask would cost four).
    """
    dtype, device = input.dtype, input.device
    grid = (shape[0], shape[1], *geometry.candidates)
    if traced or len(geometry.spatial) > 3:
        keep = _hits_by_shifts(_drop_bytes(grid, gamma, dtype, device, generator), geometry) == 0
        if scale == "expected":  # input first: the product keeps its memory format
            if inplace:
                return input.mul_(inverse).mul_(keep)
            return input * inverse * keep
        mask = _batch_scaled(keep.to(dtype), eps, dtype)
    else:
        drops = torch.empty(grid, dtype=dtype, device=device).bernoulli_(gamma, generator=generator)
        hits = _hits_by_pooling(drops, geometry)
        if scale == "expected":
            mask = torch.addcmul(inverse, hits, inverse, value=-1.0)  # (1 - hits) / mu
        else:
            mask = _batch_scaled(hits.neg_().add_(1.0), eps, dtype)
    return _apply(input, mask, inplace)


# ----------------------------------------------------------------------------------------------
# Public functions


def window_drop_prob(
    p: float,
    block_size: int | Sequence[int],
    spatial_shape: Sequence[int],
    placement: str = "valid",
    rule: str = "mean",
) -> float:
    """The probability ``gamma`` with which each candidate window is dropped.

    Rules (NOTES.md, "Sec. 5.3 (matching sliding DropBlock to the grid form), corrected"):

    * ``"mean"``: the unique gamma with ``mean_i (1 - gamma)^{n_i} = 1 - p``, so the mean drop
      rate over the map is exactly ``p`` (solved by bisection in float64).
    * ``"interior"``: ``1 - (1 - p)^(1 / V)`` with ``V = max_i n_i``, so the most covered units
      drop with rate exactly ``p``. ``V`` is the block volume ``prod(min(r_k, L_k))`` for
      ``"clipped"``, and for ``"valid"`` whenever every ``L_k >= 2 r_k - 1``; on smaller maps no
      unit is covered by a full block of valid windows and ``V = prod(min(w_k, L_k - w_k + 1))``
      with ``w_k = min(r_k, L_k)`` (1 when the block covers the map).
    * ``"ghiasi"``: Ghiasi et al.'s ``p / prod(w_k) * prod(L_k / (L_k - w_k + 1))``, as in
      torchvision, capped below 1. First-order only: it neither gives the mean rate ``p`` nor
      the interior rate ``p``.

    Args:
        p: drop probability, in [0, 1).
        block_size: block extent ``r``, an int or one int per spatial axis.
        spatial_shape: the lengths ``L`` of the spatial axes.
        placement: ``"valid"`` or ``"clipped"`` (see the module docstring).
        rule: ``"mean"``, ``"interior"`` or ``"ghiasi"``; a float in [0, 1) is returned as is.

    Returns:
        The window drop probability gamma, a float in [0, 1).
    """
    p = check_probability(p)
    spatial = _check_spatial_shape(spatial_shape)
    block = check_block_sizes(block_size, len(spatial))
    placement = check_choice(placement, "placement", PLACEMENTS)
    if not isinstance(rule, str):
        return check_probability(rule, "rule")
    rule = check_choice(rule, "rule", GAMMA_RULES)
    return _gamma_for(p, spatial, block, placement, rule)


def drop_block_keep_prob(
    spatial_shape: Sequence[int],
    block_size: int | Sequence[int],
    placement: str,
    gamma: float,
) -> Tensor:
    """Exact per-unit keep probabilities ``mu_i = (1 - gamma)^{n_i}`` of a sliding DropBlock.

    ``n_i`` is the number of candidate windows covering unit ``i`` (NOTES.md, "Sec. 5.3 ...
    corrected"); in 1-D this is ``structdrop.SlidingBlock(p, r, placement, gamma).mean(L)``.

    Args:
        spatial_shape: the lengths of the spatial axes.
        block_size: block extent, an int or one int per spatial axis.
        placement: ``"valid"`` or ``"clipped"``.
        gamma: the window drop probability, in [0, 1) (see :func:`window_drop_prob`).

    Returns:
        A float64 CPU tensor of shape ``spatial_shape``.
    """
    spatial = _check_spatial_shape(spatial_shape)
    block = check_block_sizes(block_size, len(spatial))
    placement = check_choice(placement, "placement", PLACEMENTS)
    if isinstance(gamma, str):
        raise TypeError(
            f"gamma must be a window drop probability in [0, 1), got {gamma!r}; "
            f"use window_drop_prob(p, ..., rule={gamma!r}) to get one"
        )
    gamma = check_probability(gamma, "gamma")
    return _keep_prob(spatial, block, placement, gamma).clone()


def _fx_leaf(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Record ``function`` as one node when ``torch.fx`` traces it through a reference that
    ``torch.fx.wrap`` does not patch (e.g. after ``from ... import drop_block``)."""
    function = getattr(function, "__wrapped__", function)  # not the tracer's patched wrapper
    return args[0].tracer.create_proxy("call_function", function, args, kwargs)


def _zeros(input: Tensor, inplace: bool) -> Tensor:
    """``p = 1``: everything dropped, as ``F.dropout(input, 1.0)`` (``input * 0``)."""
    return input.mul_(0.0) if inplace else input * 0.0


def _apply(input: Tensor, mask: Tensor, inplace: bool) -> Tensor:
    """``input * mask`` (the input's memory format is kept: it is the first operand)."""
    return input.mul_(mask) if inplace else input * mask


def _drop_block_sparse(
    input: Tensor,
    shape: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    p: float,
    rule: str | float,
    scale: str,
    eps: float,
    inplace: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """The sparse sampler (validated arguments)."""
    traced = is_compiling()
    if scale == "expected" and not inplace and shape == tuple(input.shape):
        # one mask per unit: scale and zero the output directly, no full-size mask
        make_index = _scale_and_index_eager if traced else _scale_and_index
        strides = _output_strides(input)
        inverse, index = make_index(
            shape, block, placement, p, rule, input.dtype, input.device, generator, strides
        )
        return _ScaleAndZero.apply(input, inverse, index, strides)
    make_mask = _scaled_mask_eager if traced else _scaled_mask
    mask = make_mask(
        shape, block, placement, p, rule, scale, eps, input.dtype, input.device, generator
    )
    return _apply(input, mask, inplace)


def _drop_block_dense(
    input: Tensor,
    shape: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    p: float,
    rule: str | float,
    scale: str,
    eps: float,
    inplace: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """The dense sampler (validated arguments): no host sync, no data-dependent shape.

    Eager calls take gamma and ``1 / mu`` from the host caches; traced calls compute them in
    the graph from ``p`` (see :func:`_traced_scales`), so that a new ``p`` (a
    :class:`structdrop.nn.DropRateSchedule`, which Dynamo then treats as a symbolic float)
    needs no recompilation.
    """
    check_traceable_generator(generator)
    spatial = shape[2:]
    geometry = _geometry(spatial, block, placement)
    traced = is_compiling()
    if traced:
        gamma, inverse = _traced_scales(p, spatial, block, placement, rule, input)
    else:
        gamma = _window_gamma(p, spatial, block, placement, rule)
        inverse = _inverse_keep_prob(spatial, block, placement, gamma, input.device, input.dtype)
    return _dense_output(
        input, shape, geometry, gamma, scale, eps, inverse, inplace, generator, traced
    )


def drop_block(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    inplace: bool = False,
    eps: float = 1e-6,
    training: bool = True,
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    method: str = "auto",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliding DropBlock (Ghiasi et al., 2018) on ``(N, C, *spatial)`` input, exact per unit.

    Every candidate window (see the module docstring for ``placement``) is dropped
    independently with probability ``gamma``; unit ``i`` is kept with probability
    ``mu_i = (1 - gamma)^{n_i}`` and, with ``scale="expected"``, multiplied by ``1 / mu_i``, so
    ``E[output] = input`` per unit (NOTES.md, "Sec. 5.3 ... corrected": existing layers scale by
    the batch's kept fraction, which is biased at the borders and couples samples).

    The first six arguments are torchvision's ``drop_block2d(input, p, block_size, inplace,
    eps, training)``; everything else is keyword-only.

    Args:
        input: a floating point tensor of shape ``(N, C, *spatial)``, one or more spatial axes.
        p: drop probability, in [0, 1]. ``p = 0`` returns ``input`` itself; ``p = 1`` returns
            zeros (``input * 0``, as ``F.dropout``).
        block_size: block extent ``r >= 1``, an int or one int per spatial axis; even sizes and
            blocks larger than the map are allowed.
        inplace: multiply ``input`` in place and return it.
        eps: added to the number of kept units by ``scale="batch"`` (torchvision's ``eps``);
            unused by the default ``scale="expected"``, which divides by exact keep
            probabilities.
        training: apply DropBlock; when False, ``input`` itself is returned.
        placement: ``"valid"`` (windows inside the map, as torchvision and TensorFlow) or
            ``"clipped"`` (a window centred at every unit, clipped at the borders, as timm).
        gamma: ``"mean"`` (the mean drop rate over the map is exactly p), ``"interior"`` (the
            most covered units drop with rate exactly p), ``"ghiasi"`` (the published
            approximation, for parity) or a window drop probability in [0, 1); see
            :func:`window_drop_prob`.
        scale: ``"expected"`` (divide unit i by mu_i) or ``"batch"`` (multiply by the mask's
            size over its number of kept units plus ``eps``, summed in float32, as
            torchvision and timm; zeros when every unit is dropped).
        shared_channels: one mask per sample, shared by all channels.
        batchwise: one mask for the whole batch, shared by all samples.
        method: ``"auto"`` (the sparse sampler for CPU eager calls, the dense one on
            accelerators and under ``torch.compile`` / ``torch.export``), ``"sparse"`` or
            ``"dense"``. Both draw the same law (see the module docstring).
        generator: a ``torch.Generator`` on the input's device for the window draws (not
            under ``torch.compile``, which cannot trace one).

    Returns:
        A tensor of the input's shape, dtype, device and memory format (``input`` itself when
        ``inplace``).

    Raises:
        TypeError: ``input`` is not a floating point tensor, or an argument has a wrong type.
        ValueError: an argument is out of range (the message names it and its value).
    """
    if isinstance(input, torch.fx.Proxy):
        options = _options(locals())
        return _fx_leaf(drop_block, (input, p, block_size), options)
    input = _check_input(input)
    p = check_drop_rate(p)
    spatial = static_sizes(input.shape[2:])
    block = check_block_sizes(block_size, len(spatial))
    inplace = check_inplace(inplace)
    eps = _check_eps(eps)
    placement = check_choice(placement, "placement", PLACEMENTS)
    rule = check_gamma_rule(gamma, GAMMA_RULES)
    scale = check_choice(scale, "scale", SCALES)
    method = check_method(method)
    generator = check_generator(generator)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return _zeros(input, inplace)
    if input.numel() == 0:
        return input if inplace else input.clone()
    n, c = input.shape[:2]
    shape = (1 if batchwise else n, 1 if shared_channels else c, *spatial)
    if input.is_meta:  # shape propagation: a meta mask of the right broadcast shape, no draws
        return _apply(input, torch.empty(shape, dtype=input.dtype, device=input.device), inplace)
    sampler = _drop_block_dense if use_dense(method, input.device) else _drop_block_sparse
    return sampler(input, shape, block, placement, p, rule, scale, eps, inplace, generator)


_OPTION_NAMES = (
    "inplace",
    "eps",
    "training",
    "placement",
    "gamma",
    "scale",
    "shared_channels",
    "batchwise",
    "method",
    "generator",
)


def _options(arguments: dict[str, Any]) -> dict[str, Any]:
    """The options of a call (every argument after ``block_size``) as keywords."""
    return {name: arguments[name] for name in _OPTION_NAMES}


def _drop_block_nd(
    function: Any, ndim: int, input: Tensor, p: float, block_size: Any, options: dict[str, Any]
) -> Tensor:
    if isinstance(input, torch.fx.Proxy):
        return _fx_leaf(function, (input, p, block_size), options)
    if isinstance(input, Tensor) and input.ndim != ndim + 2:
        axes = ("N, C, L", "N, C, H, W", "N, C, D, H, W")[ndim - 1]
        raise ValueError(
            f"input must be a {ndim + 2}-D tensor ({axes}) for {function.__name__}, "
            f"got shape {tuple(input.shape)}"
        )
    return drop_block(input, p, block_size, **options)


_ND_ARGS = """Args:
        input: a floating point tensor of shape ``{shape}``.
        p: drop probability, in [0, 1] (1 gives zeros, as ``F.dropout``).
        block_size: block extent, an int or one int per spatial axis.
        inplace: multiply the input in place (torchvision's third positional argument).
        eps: used by ``scale="batch"`` only, as torchvision's; see :func:`drop_block`.
        training: apply DropBlock; when False, ``input`` itself is returned.
        placement, gamma, scale, shared_channels, batchwise, method, generator: keyword-only,
            as in :func:`drop_block`.

    Returns:
        A tensor of the input's shape, dtype, device and memory format."""


def drop_block1d(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    inplace: bool = False,
    eps: float = 1e-6,
    training: bool = True,
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    method: str = "auto",
    generator: torch.Generator | None = None,
) -> Tensor:
    return _drop_block_nd(drop_block1d, 1, input, p, block_size, _options(locals()))


def drop_block2d(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    inplace: bool = False,
    eps: float = 1e-6,
    training: bool = True,
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    method: str = "auto",
    generator: torch.Generator | None = None,
) -> Tensor:
    return _drop_block_nd(drop_block2d, 2, input, p, block_size, _options(locals()))


def drop_block3d(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    inplace: bool = False,
    eps: float = 1e-6,
    training: bool = True,
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    method: str = "auto",
    generator: torch.Generator | None = None,
) -> Tensor:
    return _drop_block_nd(drop_block3d, 3, input, p, block_size, _options(locals()))


drop_block1d.__doc__ = f"""Sliding DropBlock on ``(N, C, L)`` input (Ghiasi et al., 2018; NOTES.md
    Sec. 5.3 corrected): the masks of ``structdrop.SlidingBlock(p, r, placement, gamma)`` per
    channel, scaled by the exact inverse keep probabilities.

    {_ND_ARGS.format(shape="(N, C, L)")}
    """
drop_block2d.__doc__ = f"""Sliding DropBlock on ``(N, C, H, W)`` input (Ghiasi et al., 2018;
    NOTES.md Sec. 5.3 corrected), exact per-unit keep probabilities and unbiased scaling by
    default. A drop-in for ``torchvision.ops.drop_block2d`` (same first six arguments).

    {_ND_ARGS.format(shape="(N, C, H, W)")}
    """
drop_block3d.__doc__ = f"""Sliding DropBlock on ``(N, C, D, H, W)`` input (Ghiasi et al., 2018;
    NOTES.md Sec. 5.3 corrected), exact per-unit keep probabilities and unbiased scaling by
    default. A drop-in for ``torchvision.ops.drop_block3d`` (same first six arguments).

    {_ND_ARGS.format(shape="(N, C, D, H, W)")}
    """

# Leaf functions for torch.fx: their shapes depend on the random draws.
torch.fx.wrap("drop_block")
torch.fx.wrap("drop_block1d")
torch.fx.wrap("drop_block2d")
torch.fx.wrap("drop_block3d")
