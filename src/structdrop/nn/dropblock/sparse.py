"""The sparse DropBlock sampler (CPUs): only the dropped windows are drawn.

The dropped windows form a Bernoulli(``gamma``) process over the flattened candidate positions,
drawn through its geometric gaps (:func:`dropped_positions`), and the units of each dropped
window are set to zero by index arithmetic, in the output itself when every unit has its own
mask (:func:`multiply`). Its work is proportional to the number of dropped windows, about
``gamma`` of the candidates. It reads the number of dropped windows back to the host, which
costs nothing on a CPU; the mask operator (:mod:`.op`) runs it outside any traced graph, so a
compiled model on a CPU runs it too.

The positions of the dropped windows are the whole draw: a few per cent of the candidates
(8 bytes each), never an input-sized mask. An eager call keeps them for its backward pass,
which applies the same mask to the gradient without drawing again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._masking import batch_scaled, work_dtype
from .rates import Draw, Geometry

__all__ = ["TABLE_LIMIT", "drop_block_sparse", "dropped_positions", "multiply", "window_units"]

#: Windows of a configuration are looked up in a table of (candidates x block volume) int32
#: unit indices when it holds at most this many entries, else computed per draw.
TABLE_LIMIT = 1 << 22


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, stride = [], 1
    for n in reversed(shape):
        strides.append(stride)
        stride *= n
    return tuple(reversed(strides))


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


def dropped_positions(
    total: int,
    gamma: float,
    device: torch.device,
    generator: torch.Generator | None,
    chunk: int | None = None,
) -> Tensor:
    """Sorted positions in ``range(total)``, each present independently with probability gamma.

    Draws the Bernoulli process exactly through its gaps: ``gap - 1`` is geometric with
    ``P(gap - 1 >= k) = (1 - gamma)^k``, i.e. ``floor(log(U) / log(1 - gamma))`` for ``U``
    uniform on (0, 1). ``chunk`` gaps are drawn per round (by default the expected number of
    windows plus six standard deviations, so that one round almost always passes ``total``);
    as many rounds follow as it takes.
    """
    if gamma <= 0.0 or total == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    log_q = math.log1p(-gamma)
    if chunk is None:
        mean = total * gamma
        chunk = int(mean + 6.0 * math.sqrt(mean * (1.0 - gamma)) + 16.0)
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
    positions: Tensor,
    strides: tuple[int, ...] | None = None,
) -> Tensor:
    """Storage offsets (into a dense tensor of ``shape = (B0, B1, *spatial)`` with ``strides``,
    or contiguous when None) of the units covered by the dropped windows at ``positions`` (flat
    indices over the planes' candidates), with repeats, int64."""
    per_plane = math.prod(geometry.candidates)
    contiguous = strides is None
    spatial_strides = None if strides is None else strides[2:]
    plane = positions.div(per_plane, rounding_mode="floor")
    rem = positions - plane * per_plane
    if per_plane * math.prod(geometry.extents) <= TABLE_LIMIT:
        units = _window_table(geometry, positions.device, spatial_strides).index_select(0, rem)
    else:
        units = window_units(rem, geometry, spatial_strides)
    if contiguous:
        base = plane * math.prod(geometry.spatial)
    else:
        assert strides is not None  # None is contiguous
        base = plane.div(shape[1], rounding_mode="floor") * strides[0]
        base += (plane % shape[1]) * strides[1]
    return (units + base[:, None]).view(-1)


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


def multiply(input: Tensor, draw: Draw, positions: Tensor) -> Tensor:
    """``input`` times the mask whose dropped windows are at ``positions``: zero where a
    dropped window covers a unit, else ``1 / mu`` (``scale="expected"``) or the mask's size over
    its kept units plus ``eps``; the mask is broadcast over the batch and channel axes where it
    is shared, and the output laid out as ``torch.empty_like(input)``. The forward pass and the
    backward pass (on the gradient) of one draw."""
    options = draw.options
    n, c, *spatial = input.shape
    shape = (1 if options.batchwise else n, 1 if options.shared_channels else c, *spatial)
    contiguous = input.is_contiguous()  # else: laid out as empty_like (channels_last, ...)
    strides = (
        _contiguous_strides(input.shape)
        if contiguous
        else tuple(torch.empty_like(input, device="meta").stride())
    )
    if options.scale == "expected" and shape == tuple(input.shape):
        # one mask per unit: scale and zero the output directly, no full-size mask
        layout = None if contiguous else strides
        index = _dropped_units(shape, draw.geometry, positions, layout)
        return _scale_and_fill(input, draw.inverse, index, strides)
    dtype = work_dtype(input.dtype)  # a half-precision output is rounded once, in the product
    if options.scale == "expected":
        mask = draw.inverse.expand(shape).contiguous()
    else:
        mask = torch.ones(shape, dtype=dtype, device=input.device)
    index = _dropped_units(shape, draw.geometry, positions)
    mask.view(-1).index_fill_(0, index, 0)
    if options.scale == "batch":
        mask = batch_scaled(mask, options.eps, input.dtype)
    output = torch.empty_strided(input.shape, strides, dtype=input.dtype, device=input.device)
    return torch.mul(input, mask, out=output)


def drop_block_sparse(
    input: Tensor, draw: Draw, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``(output, positions)``: the dropped windows drawn from ``generator`` (their flat
    positions over the mask planes' candidates) and ``input`` times their mask
    (:func:`multiply`)."""
    options = draw.options
    planes = (1 if options.batchwise else input.shape[0]) * (
        1 if options.shared_channels else input.shape[1]
    )
    total = planes * math.prod(draw.geometry.candidates)
    positions = dropped_positions(total, draw.gamma, input.device, generator)
    return multiply(input, draw, positions), positions
