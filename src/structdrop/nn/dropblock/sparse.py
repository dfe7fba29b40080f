"""The sparse DropBlock sampler (CPUs): only the dropped windows are drawn.

The dropped windows form a Bernoulli(``gamma``) process over the flattened candidate positions,
drawn through its geometric gaps, and the units of each dropped window are set to zero by index
arithmetic, in the output itself when every unit has its own mask. Its work is proportional to
the number of dropped windows, about ``gamma`` of the candidates. It reads the number of dropped
windows back to the host, which costs nothing on a CPU; the mask operator (:mod:`.op`) runs it
outside any traced graph, so a compiled model on a CPU runs it too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._masking import batch_scaled, work_dtype
from .rates import Geometry

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
    spatial_strides = None if contiguous or strides is None else strides[2:]
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
        assert strides is not None  # None is contiguous
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


def drop_block_sparse(
    input: Tensor,
    shape: tuple[int, ...],
    geometry: Geometry,
    gamma: float,
    inverse: Tensor,
    scale: str,
    eps: float,
    generator: torch.Generator | None,
) -> Tensor:
    """``input`` times a sparse-drawn mask of ``shape = (B0, B1, *spatial)`` (broadcast over
    the batch and channel axes where they are 1), scaled by ``inverse`` (``1 / mu``,
    ``scale="expected"``) or by the mask's size over its kept units plus ``eps``; the output is
    laid out as ``torch.empty_like(input)``."""
    strides = _output_strides(input)
    if scale == "expected" and shape == tuple(input.shape):
        # one mask per unit: scale and zero the output directly, no full-size mask
        index = _dropped_units(shape, geometry, gamma, input.device, generator, strides)
        return _scale_and_fill(input, inverse, index, strides)
    init = inverse if scale == "expected" else None
    dtype = work_dtype(input.dtype)  # a half-precision output is rounded once, in the product
    mask = _block_mask(shape, geometry, gamma, init, dtype, input.device, generator)
    if scale == "batch":
        mask = batch_scaled(mask, eps, input.dtype)
    output = torch.empty_strided(input.shape, strides, dtype=input.dtype, device=input.device)
    return torch.mul(input, mask, out=output)
