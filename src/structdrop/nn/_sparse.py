"""The sparse DropBlock sampler (CPU eager): only the dropped windows are drawn.

The dropped windows form a Bernoulli(``gamma``) process over the flattened candidate positions,
drawn through its geometric gaps, and the units of each dropped window are set to zero by index
arithmetic, in the output itself when every unit has its own mask. Its work is proportional to
the number of dropped windows, about ``gamma`` of the candidates. The number of dropped windows
is random, so under ``torch.compile`` the mask making runs eagerly (a graph break); the dense
sampler (:mod:`._dense`) draws the same law with static shapes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._masking import apply_mask, batch_scaled
from ._tracing import is_compiling
from ._window_rates import inverse_keep_prob, window_gamma
from ._windows import Geometry, geometry

__all__ = ["drop_block_sparse", "dropped_positions", "window_units"]

# Windows of a configuration are looked up in a table of (candidates x block volume) int32
# unit indices when it holds at most this many entries, else computed per draw.
_TABLE_LIMIT = 1 << 22


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


def window_units(rem: Tensor, geometry: Geometry, strides: tuple[int, ...] | None = None) -> Tensor:
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
    geometry: Geometry, device: torch.device, strides: tuple[int, ...] | None = None
) -> Tensor:
    """The unit offsets of every candidate window, int32 (int64 if needed), shape
    (candidates, volume)."""
    count = math.prod(geometry.candidates)
    rem = torch.arange(count, dtype=torch.int64, device=device)
    table = window_units(rem, geometry, strides)
    fits = table.numel() == 0 or int(table.max()) < 2**31
    return table.to(torch.int32) if fits else table


def _chunk_size(total: int, gamma: float) -> int:
    """Gaps drawn per round: the expected number of windows plus six standard deviations."""
    mean = total * gamma
    return int(mean + 6.0 * math.sqrt(mean * (1.0 - gamma)) + 16.0)


def dropped_positions(
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
    geometry: Geometry,
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
    positions = dropped_positions(planes * per_plane, gamma, device, generator)
    plane = positions // per_plane
    rem = positions % per_plane
    if per_plane * math.prod(geometry.extents) <= _TABLE_LIMIT:
        units = _window_table(geometry, device, spatial_strides)[rem]
    else:
        units = window_units(rem, geometry, spatial_strides)
    if contiguous:
        base = plane * math.prod(geometry.spatial)
    else:
        base = plane.div(shape[1], rounding_mode="floor") * strides[0]
        base += (plane % shape[1]) * strides[1]
    return (units + base[:, None]).view(-1)


def _block_mask(
    shape: tuple[int, ...],
    geometry: Geometry,
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
    """``input * scale`` in a new tensor of the given (dense) strides, ``input * 0`` at storage
    ``index``: a dropped unit is the input times the mask's zero, as on the dense sampler (and
    in ``torch.nn.Dropout``), so that a NaN or an infinity there gives NaN, not zero."""
    output = torch.empty_strided(input.shape, strides, dtype=input.dtype, device=input.device)
    torch.mul(input, scale, out=output)
    if tuple(input.stride()) == tuple(strides):
        source = input.as_strided((input.numel(),), (1,))
    else:
        source = torch.empty_strided(
            input.shape, strides, dtype=input.dtype, device=input.device
        ).copy_(input)
        source = source.as_strided((source.numel(),), (1,))
    dropped = source.index_select(0, index).mul_(0)
    output.as_strided((output.numel(),), (1,)).index_copy_(0, index, dropped)
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


def _scaled_mask(
    shape: tuple[int, ...],
    block: tuple[int, ...],
    boundary: str,
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
    gamma = window_gamma(p, spatial, block, boundary, rule)
    windows = geometry(spatial, block, boundary)
    if scale == "expected":
        init = inverse_keep_prob(spatial, block, boundary, gamma, device, dtype)
        return _block_mask(shape, windows, gamma, init, dtype, device, generator)
    mask = _block_mask(shape, windows, gamma, None, dtype, device, generator)
    return batch_scaled(mask, eps, dtype)


def _scale_and_index(
    shape: tuple[int, ...],
    block: tuple[int, ...],
    boundary: str,
    p: float,
    rule: str | float,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
    strides: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """``1 / mu`` and the storage offsets of the dropped units (sparse sampler)."""
    spatial = shape[2:]
    gamma = window_gamma(p, spatial, block, boundary, rule)
    windows = geometry(spatial, block, boundary)
    inverse = inverse_keep_prob(spatial, block, boundary, gamma, device, dtype)
    return inverse, _dropped_units(shape, windows, gamma, device, generator, strides)


# The number of dropped windows is random: under torch.compile, method="sparse" runs the mask
# making eagerly (a graph break); method="auto" takes the dense sampler there instead.
_scaled_mask_eager = torch.compiler.disable(_scaled_mask)
_scale_and_index_eager = torch.compiler.disable(_scale_and_index)


def drop_block_sparse(
    input: Tensor,
    shape: tuple[int, ...],
    block: tuple[int, ...],
    boundary: str,
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
            shape, block, boundary, p, rule, input.dtype, input.device, generator, strides
        )
        return _ScaleAndZero.apply(input, inverse, index, strides)
    make_mask = _scaled_mask_eager if traced else _scaled_mask
    mask = make_mask(
        shape, block, boundary, p, rule, scale, eps, input.dtype, input.device, generator
    )
    return apply_mask(input, mask, inplace)
