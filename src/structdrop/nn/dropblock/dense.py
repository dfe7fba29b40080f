"""The dense DropBlock sampler (accelerators, and ``method="dense"`` anywhere).

Bernoulli(``gamma``) on the whole candidate grid, expanded to windows by a stride-1 max-pool
(up to 3 spatial axes) or by shifted ORs (any number), times the cached device copy of
``1 / mu``. Only tensor operators with static shapes: no value is read back to the host. It
draws the same law as the sparse sampler (:mod:`.sparse`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as torch_functional
from torch import Tensor

from .._masking import batch_scaled, work_dtype
from .rates import Draw, Geometry

__all__ = ["JOINT_POOL_LIMIT", "drop_block_dense", "hits_by_pooling", "hits_by_shifts"]

#: The eager path max-pools all axes at once up to this block volume, else axis by axis.
JOINT_POOL_LIMIT = 64

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
    if math.prod(kernels) <= JOINT_POOL_LIMIT:
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


def drop_block_dense(input: Tensor, draw: Draw, generator: torch.Generator | None) -> Tensor:
    """``input`` times a dense-drawn mask: Bernoulli(gamma) on the ``(B0, B1, *candidates)``
    grid (one mask per sample and channel, or 1 where it is shared), expanded to the units its
    windows cover; then ``z / mu`` (``scale="expected"``) or ``z`` times its size over its sum
    plus ``eps``. The draws and the mask are in the input's dtype (float32 for half types); the
    product is computed in the mask's dtype and rounded once into the output."""
    geometry, options = draw.geometry, draw.options
    shape = draw.mask_shape(tuple(input.shape))
    grid = (shape[0], shape[1], *geometry.candidates)
    dtype = work_dtype(input.dtype)
    drops = torch.empty(grid, dtype=dtype, device=input.device)
    drops.bernoulli_(draw.gamma, generator=generator)
    if len(geometry.spatial) > 3:
        hits = hits_by_shifts(drops.to(torch.uint8), geometry).to(dtype)
    else:
        hits = hits_by_pooling(drops, geometry)
    keep = hits.neg_().add_(1.0)
    if options.scale == "expected":
        mask = keep.mul_(draw.inverse)
    else:
        mask = batch_scaled(keep, options.eps, input.dtype)
    # a float32 mask times a half-precision input, rounded once (as on the sparse sampler)
    return torch.mul(input, mask, out=torch.empty_like(input))
