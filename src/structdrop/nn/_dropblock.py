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

Masks are drawn exactly and sparsely: the dropped windows form a Bernoulli process over the
flattened candidate positions, drawn through its geometric gaps, and the units of each dropped
window are set to zero by index arithmetic, in the output itself when every unit has its own
mask, else in a mask broadcast over channels or samples. No dense mask is max-pooled.

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
from torch import Tensor

from .._validation import (
    check_block_sizes,
    check_choice,
    check_gamma_rule,
    check_probability,
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
# Bisection steps for the "mean" rule: the bracket [0, 1] shrinks below 1e-30.
_BISECTION_STEPS = 100


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


@functools.lru_cache(maxsize=128)
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


def _mean_keep(gamma: float, values: np.ndarray, weights: np.ndarray) -> float:
    return float(weights @ np.exp(values * math.log1p(-gamma)))


@functools.lru_cache(maxsize=256)
def _gamma_for(
    p: float, spatial: tuple[int, ...], block: tuple[int, ...], placement: str, rule: str
) -> float:
    """The window drop probability of a rule (validated arguments)."""
    if p == 0.0:
        return 0.0
    if rule == "mean":
        values, weights = _count_histogram(spatial, block, placement)
        lo, hi = 0.0, 1.0  # mean keep is 1 at gamma = 0, decreasing, 0 at gamma = 1
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if _mean_keep(mid, values, weights) > 1.0 - p:
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


@functools.lru_cache(maxsize=128)
def _keep_prob(
    spatial: tuple[int, ...], block: tuple[int, ...], placement: str, gamma: float
) -> Tensor:
    """``mu = (1 - gamma)^n`` as a float64 CPU tensor (cached: never modify it)."""
    counts = _window_counts(spatial, block, placement)
    return torch.from_numpy(np.exp(counts * math.log1p(-gamma)))


@functools.lru_cache(maxsize=128)
def _inverse_keep_prob(
    spatial: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    gamma: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """``1 / mu`` on a device in a dtype; 0 where mu underflows, capped at the dtype's largest
    finite value, so that no scale is infinite (cached: never modify it)."""
    mu = _keep_prob(spatial, block, placement, gamma)
    inverse = torch.where(mu > 0, 1.0 / mu.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    inverse = inverse.clamp_max(torch.finfo(dtype).max)
    return inverse.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Sampling


def _window_units(rem: Tensor, geometry: _Geometry) -> Tensor:
    """Flat unit indices (within one mask plane) of the windows at candidate indices ``rem``.

    Returns an int64 tensor of shape ``(len(rem), prod(extents))``; clipped windows repeat
    border units, which is harmless for writing zeros.
    """
    ndim = len(geometry.spatial)
    index = torch.zeros((rem.numel(),) + (1,) * ndim, dtype=torch.int64, device=rem.device)
    stride = 1
    for axis in reversed(range(ndim)):
        coordinate = rem % geometry.candidates[axis]
        rem = rem.div(geometry.candidates[axis], rounding_mode="floor")
        offsets = torch.arange(geometry.extents[axis], device=rem.device) + geometry.starts[axis]
        units = coordinate[:, None] + offsets
        if geometry.clipped:
            units = units.clamp_(0, geometry.spatial[axis] - 1)
        shape = [units.shape[0]] + [1] * ndim
        shape[axis + 1] = units.shape[1]
        index = index + (units * stride).view(shape)
        stride *= geometry.spatial[axis]
    return index.view(index.shape[0], -1)


@functools.lru_cache(maxsize=64)
def _window_table(geometry: _Geometry, device: torch.device) -> Tensor:
    """The flat unit indices of every candidate window, int32, shape (candidates, volume)."""
    count = math.prod(geometry.candidates)
    rem = torch.arange(count, dtype=torch.int64, device=device)
    return _window_units(rem, geometry).to(torch.int32)


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
) -> Tensor:
    """Flat indices (into a contiguous tensor of ``shape = (B0, B1, *spatial)``) of the units
    covered by the dropped windows, with repeats, as int64."""
    planes = shape[0] * shape[1]
    per_plane = math.prod(geometry.candidates)
    positions = _dropped_positions(planes * per_plane, gamma, device, generator)
    plane = positions // per_plane
    rem = positions % per_plane
    if per_plane * math.prod(geometry.extents) <= _TABLE_LIMIT:
        units = _window_table(geometry, device)[rem]
    else:
        units = _window_units(rem, geometry)
    return (units + (plane * math.prod(geometry.spatial))[:, None]).view(-1)


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


class _ScaleAndZero(torch.autograd.Function):
    """``input * scale`` with the units at ``index`` set to zero: the product with the mask
    ``z / mu`` without materializing the mask. Linear in ``input``, so the backward pass is the
    same operation on the gradient (and differentiable again)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, scale: Tensor, index: Tensor) -> Tensor:
        output = (input * scale).contiguous()
        output.view(-1).index_fill_(0, index, 0)
        ctx.save_for_backward(scale, index)
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        scale, index = ctx.saved_tensors
        return _ScaleAndZero.apply(grad, scale, index), None, None


def _scaled_mask(
    shape: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    p: float,
    rule: str | float,
    scale: str,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """The mask that multiplies the input, scaling included (validated arguments)."""
    spatial = shape[2:]
    gamma = rule if isinstance(rule, float) else _gamma_for(p, spatial, block, placement, rule)
    geometry = _geometry(spatial, block, placement)
    if scale == "expected":
        init = _inverse_keep_prob(spatial, block, placement, gamma, device, dtype)
        return _block_mask(shape, geometry, gamma, init, dtype, device, generator)
    mask = _block_mask(shape, geometry, gamma, None, dtype, device, generator)
    kept = mask.sum(dtype=torch.float32)
    largest = min(torch.finfo(torch.float32).max, torch.finfo(dtype).max)
    factor = (mask.numel() / kept.clamp_min(1.0)).clamp_max(largest)
    return mask.mul_(factor.to(dtype))


def _scale_and_index(
    shape: tuple[int, ...],
    block: tuple[int, ...],
    placement: str,
    p: float,
    rule: str | float,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """``1 / mu`` and the flat indices of the dropped units (validated arguments)."""
    spatial = shape[2:]
    gamma = rule if isinstance(rule, float) else _gamma_for(p, spatial, block, placement, rule)
    geometry = _geometry(spatial, block, placement)
    inverse = _inverse_keep_prob(spatial, block, placement, gamma, device, dtype)
    return inverse, _dropped_units(shape, geometry, gamma, device, generator)


# The number of dropped windows is random: torch.compile runs the mask making eagerly.
_scaled_mask_eager = torch.compiler.disable(_scaled_mask)
_scale_and_index_eager = torch.compiler.disable(_scale_and_index)


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


def drop_block(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliding DropBlock (Ghiasi et al., 2018) on ``(N, C, *spatial)`` input, exact per unit.

    Every candidate window (see the module docstring for ``placement``) is dropped
    independently with probability ``gamma``; unit ``i`` is kept with probability
    ``mu_i = (1 - gamma)^{n_i}`` and, with ``scale="expected"``, multiplied by ``1 / mu_i``, so
    ``E[output] = input`` per unit (NOTES.md, "Sec. 5.3 ... corrected": existing layers scale by
    the batch's kept fraction, which is biased at the borders and couples samples).

    Args:
        input: a floating point tensor of shape ``(N, C, *spatial)``, one or more spatial axes.
        p: drop probability, in [0, 1). ``p = 0`` returns ``input`` itself.
        block_size: block extent ``r >= 1``, an int or one int per spatial axis; even sizes and
            blocks larger than the map are allowed.
        placement: ``"valid"`` (windows inside the map, as torchvision and TensorFlow) or
            ``"clipped"`` (a window centred at every unit, clipped at the borders, as timm).
        gamma: ``"mean"`` (the mean drop rate over the map is exactly p), ``"interior"`` (the
            most covered units drop with rate exactly p), ``"ghiasi"`` (the published
            approximation, for parity) or a window drop probability in [0, 1); see
            :func:`window_drop_prob`.
        scale: ``"expected"`` (divide unit i by mu_i) or ``"batch"`` (multiply by the mask's
            size over its number of kept units, summed in float32, as torchvision and timm;
            zeros when every unit is dropped).
        shared_channels: one mask per sample, shared by all channels.
        batchwise: one mask for the whole batch, shared by all samples.
        training: apply DropBlock; when False, ``input`` itself is returned.
        inplace: multiply ``input`` in place and return it.
        generator: a ``torch.Generator`` on the input's device for the window draws.

    Returns:
        A tensor of the input's shape, dtype and device (``input`` itself when ``inplace``).

    Raises:
        TypeError: ``input`` is not a floating point tensor, or an argument has a wrong type.
        ValueError: an argument is out of range (the message names it and its value).
    """
    if isinstance(input, torch.fx.Proxy):
        keywords = {
            "placement": placement,
            "gamma": gamma,
            "scale": scale,
            "shared_channels": shared_channels,
            "batchwise": batchwise,
            "training": training,
            "inplace": inplace,
            "generator": generator,
        }
        return _fx_leaf(drop_block, (input, p, block_size), keywords)
    input = _check_input(input)
    p = check_probability(p)
    spatial = tuple(input.shape[2:])
    block = check_block_sizes(block_size, len(spatial))
    placement = check_choice(placement, "placement", PLACEMENTS)
    rule = check_gamma_rule(gamma, GAMMA_RULES)
    scale = check_choice(scale, "scale", SCALES)
    if not training or p == 0.0:
        return input
    if input.numel() == 0:
        return input if inplace else input.clone()
    n, c = input.shape[:2]
    shape = (1 if batchwise else n, 1 if shared_channels else c, *spatial)
    if input.is_meta:  # shape propagation: a meta mask of the right broadcast shape, no draws
        mask = torch.empty(shape, dtype=input.dtype, device=input.device)
        return input.mul_(mask) if inplace else input * mask
    compiling = torch.compiler.is_compiling()
    if scale == "expected" and not inplace and shape == tuple(input.shape):
        # one mask per unit: scale and zero the output directly, no full-size mask
        make_index = _scale_and_index_eager if compiling else _scale_and_index
        inverse, index = make_index(
            shape, block, placement, p, rule, input.dtype, input.device, generator
        )
        return _ScaleAndZero.apply(input, inverse, index)
    make_mask = _scaled_mask_eager if compiling else _scaled_mask
    mask = make_mask(shape, block, placement, p, rule, scale, input.dtype, input.device, generator)
    if inplace:
        return input.mul_(mask)
    return input * mask


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


def drop_block1d(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliding DropBlock on ``(N, C, L)`` input (Ghiasi et al., 2018; NOTES.md Sec. 5.3
    corrected): the masks of ``structdrop.SlidingBlock(p, r, placement, gamma)`` per channel.

    Args:
        input: a floating point tensor of shape ``(N, C, L)``.
        p: drop probability, in [0, 1).
        block_size: block length ``r >= 1``.
        placement, gamma, scale, shared_channels, batchwise, training, inplace, generator:
            as in :func:`drop_block`.

    Returns:
        A tensor of the input's shape, dtype and device.
    """
    options = {
        "placement": placement,
        "gamma": gamma,
        "scale": scale,
        "shared_channels": shared_channels,
        "batchwise": batchwise,
        "training": training,
        "inplace": inplace,
        "generator": generator,
    }
    return _drop_block_nd(drop_block1d, 1, input, p, block_size, options)


def drop_block2d(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliding DropBlock on ``(N, C, H, W)`` input (Ghiasi et al., 2018; NOTES.md Sec. 5.3
    corrected), exact per-unit keep probabilities and unbiased scaling by default.

    Args:
        input: a floating point tensor of shape ``(N, C, H, W)``.
        p: drop probability, in [0, 1).
        block_size: block extent, an int or ``(h, w)``.
        placement, gamma, scale, shared_channels, batchwise, training, inplace, generator:
            as in :func:`drop_block`.

    Returns:
        A tensor of the input's shape, dtype and device.
    """
    options = {
        "placement": placement,
        "gamma": gamma,
        "scale": scale,
        "shared_channels": shared_channels,
        "batchwise": batchwise,
        "training": training,
        "inplace": inplace,
        "generator": generator,
    }
    return _drop_block_nd(drop_block2d, 2, input, p, block_size, options)


def drop_block3d(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    *,
    placement: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliding DropBlock on ``(N, C, D, H, W)`` input (Ghiasi et al., 2018; NOTES.md Sec. 5.3
    corrected), exact per-unit keep probabilities and unbiased scaling by default.

    Args:
        input: a floating point tensor of shape ``(N, C, D, H, W)``.
        p: drop probability, in [0, 1).
        block_size: block extent, an int or ``(d, h, w)``.
        placement, gamma, scale, shared_channels, batchwise, training, inplace, generator:
            as in :func:`drop_block`.

    Returns:
        A tensor of the input's shape, dtype and device.
    """
    options = {
        "placement": placement,
        "gamma": gamma,
        "scale": scale,
        "shared_channels": shared_channels,
        "batchwise": batchwise,
        "training": training,
        "inplace": inplace,
        "generator": generator,
    }
    return _drop_block_nd(drop_block3d, 3, input, p, block_size, options)


# Leaf functions for torch.fx: their shapes depend on the random draws.
torch.fx.wrap("drop_block")
torch.fx.wrap("drop_block1d")
torch.fx.wrap("drop_block2d")
torch.fx.wrap("drop_block3d")
