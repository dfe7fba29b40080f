"""The dense DropBlock sampler (accelerators, ``torch.compile``, ``torch.export``, CUDA graphs).

Bernoulli(``gamma``) on the whole candidate grid, expanded to windows by a stride-1 max-pool
(or, when traced, by shifted maxima that the compiler fuses), times the cached device copy of
``1 / mu``. Only tensor operators with static shapes: no value is read back to the host. It
draws the same law as the sparse sampler (:mod:`._sparse`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as torch_functional
from torch import Tensor

from ._masking import apply_mask, batch_scaled, work_dtype
from ._traced_rates import traced_scales
from ._tracing import check_traceable_generator, is_compiling
from ._window_rates import inverse_keep_prob, window_gamma
from ._windows import Geometry, geometry

__all__ = ["drop_block_dense", "hits_by_pooling", "hits_by_shifts"]

# The eager path max-pools all axes at once up to this block volume, else axis by axis.
_JOINT_POOL_LIMIT = 64

_POOLS = {1: torch_functional.max_pool1d, 2: torch_functional.max_pool2d}
_POOLS[3] = torch_functional.max_pool3d


def _flat_pads(pads: Sequence[tuple[int, int]]) -> list[int]:
    """Per-axis (before, after) pads in the last-axis-first order of ``F.pad``."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return flat


def hits_by_pooling(drops: Tensor, geometry: Geometry) -> Tensor:
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


def hits_by_shifts(drops: Tensor, geometry: Geometry) -> Tensor:
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
        gamma = gamma.to(work_dtype(dtype))
    if generator is None:  # (a generator=None keyword breaks symbolic batch sizes)
        return draws.bernoulli_(gamma)
    return draws.bernoulli_(gamma, generator=generator)


def _dense_output(
    input: Tensor,
    shape: tuple[int, ...],
    geometry: Geometry,
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
        keep = hits_by_shifts(_drop_bytes(grid, gamma, dtype, device, generator), geometry) == 0
        if scale == "expected":  # input first: the product keeps its memory format
            if inplace:
                return input.mul_(inverse).mul_(keep)
            return input * inverse * keep
        mask = batch_scaled(keep.to(dtype), eps, dtype)
    else:
        drops = torch.empty(grid, dtype=dtype, device=device).bernoulli_(gamma, generator=generator)
        hits = hits_by_pooling(drops, geometry)
        if scale == "expected":
            mask = torch.addcmul(inverse, hits, inverse, value=-1.0)  # (1 - hits) / mu
        else:
            mask = batch_scaled(hits.neg_().add_(1.0), eps, dtype)
    return apply_mask(input, mask, inplace)


def drop_block_dense(
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
    """The dense sampler (validated arguments): no host sync, no data-dependent shape.

    Eager calls take gamma and ``1 / mu`` from the host caches; traced calls compute them in
    the graph from ``p`` (see :func:`._traced_rates.traced_scales`), so that a new ``p`` (a
    :class:`structdrop.nn.DropRateSchedule`, which Dynamo then treats as a symbolic float)
    needs no recompilation.
    """
    check_traceable_generator(generator)
    spatial = shape[2:]
    windows = geometry(spatial, block, boundary)
    traced = is_compiling()
    if traced:
        gamma, inverse = traced_scales(p, spatial, block, boundary, rule, input)
    else:
        gamma = window_gamma(p, spatial, block, boundary, rule)
        inverse = inverse_keep_prob(spatial, block, boundary, gamma, input.device, input.dtype)
    return _dense_output(
        input, shape, windows, gamma, scale, eps, inverse, inplace, generator, traced
    )
