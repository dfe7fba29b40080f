"""The windows of a sliding DropBlock, how many cover each unit, and the drop rates they give.

Windows are products of 1-D windows, one per spatial axis of length ``L`` with block ``r``:

* ``"valid"`` (torchvision, TensorFlow): starts ``s = 0 .. L - w`` with ``w = min(r, L)``, i.e.
  the window fits inside the map (a single window covering the axis when ``r >= L``);
* ``"clipped"`` (timm): one window per centre ``c = 0 .. L - 1`` covering
  ``[c - (r - 1) // 2, c + r // 2]`` clipped to ``[0, L)``.

In 1-D these are the windows of :func:`structdrop.schemes.window_incidence`. Every candidate
window is dropped with probability ``gamma``; unit ``i``, covered by ``n_i`` windows, is kept
with probability ``mu_i = (1 - gamma)^{n_i}`` (docs/theory.md#sliding-dropblock). The rules
that turn a drop rate ``p`` into ``gamma`` are described in
:func:`structdrop.nn.functional.window_drop_prob`.

The windows, their counts and gamma are computed on the host, in float64 with NumPy, once per
configuration (cached); ``1 / mu`` is computed on the input's device from the uploaded counts
(no upload for a new ``gamma``). :func:`plan` gathers what a sampler needs for one input,
cached per options, map, rate, device and dtype. The mask operator (:mod:`.op`) calls all of it
outside any traced graph, from validated arguments.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._masking import exact_dtype, work_dtype
from .options import DropBlockOptions

__all__ = [
    "Draw",
    "Geometry",
    "count_histogram",
    "gamma_for",
    "geometry",
    "inverse_keep_prob",
    "keep_prob",
    "plan",
    "window_counts",
]


class Geometry(NamedTuple):
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


def geometry(spatial: tuple[int, ...], block: tuple[int, ...], boundary: str) -> Geometry:
    """The windows of blocks ``block`` on a map of shape ``spatial`` (validated arguments)."""
    if boundary == "valid":
        extents = tuple(min(r, n) for r, n in zip(block, spatial, strict=True))
        candidates = tuple(n - w + 1 for n, w in zip(spatial, extents, strict=True))
        return Geometry(spatial, candidates, (0,) * len(spatial), extents, False)
    starts = tuple(-((r - 1) // 2) for r in block)
    return Geometry(spatial, spatial, starts, block, True)


def _axis_counts(length: int, block: int, boundary: str) -> np.ndarray:
    """Number of windows covering each unit of one axis."""
    i = np.arange(length)
    if boundary == "valid":
        w = min(block, length)
        return np.minimum(i, length - w) - np.maximum(0, i - w + 1) + 1
    return np.minimum(i + (block - 1) // 2, length - 1) - np.maximum(i - block // 2, 0) + 1


@functools.lru_cache(maxsize=128)
def window_counts(spatial: tuple[int, ...], block: tuple[int, ...], boundary: str) -> np.ndarray:
    """``n_i``: the number of candidate windows covering each unit, shape ``spatial`` (cached,
    read-only)."""
    counts = np.ones((), dtype=np.int64)
    for length, r in zip(spatial, block, strict=True):
        counts = np.multiply.outer(counts, _axis_counts(length, r, boundary))
    counts.setflags(write=False)
    return counts


@functools.lru_cache(maxsize=128)
def count_histogram(
    spatial: tuple[int, ...], block: tuple[int, ...], boundary: str
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct window counts ``n_j`` (float64) and the fraction ``w_j`` of units with each
    (cached)."""
    values, multiplicity = np.unique(window_counts(spatial, block, boundary), return_counts=True)
    return values.astype(np.float64), multiplicity / multiplicity.sum()


# Bisection steps for the "mean" rule: enough to reach float64 resolution for any root in
# (0, 1), even a subnormal one (the loop stops as soon as the bracket cannot be split).
_BISECTION_STEPS = 1100


def _mean_rate_below(gamma: float, p: float, values: np.ndarray, weights: np.ndarray) -> bool:
    """Whether the mean drop rate ``mean_i 1 - (1 - gamma)^{n_i}`` at ``gamma`` is below ``p``,
    compared in drop rates for ``p <= 1/2`` (accurate for tiny rates) and in keep rates above
    (``1 - p`` is exact there, and tiny keep rates stay accurate)."""
    log_keep = values * math.log1p(-gamma)
    if p <= 0.5:
        return -float(weights @ np.expm1(log_keep)) < p
    return float(weights @ np.exp(log_keep)) > 1.0 - p


def _mean_rule(p: float, spatial: tuple[int, ...], block: tuple[int, ...], boundary: str) -> float:
    """The gamma with mean drop rate exactly ``p``, by bisection (the rate is 0 at gamma = 0,
    increasing, 1 at gamma = 1)."""
    values, weights = count_histogram(spatial, block, boundary)
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _mean_rate_below(mid, p, values, weights):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi) if hi < 1.0 else lo


def _ghiasi_rule(p: float, spatial: tuple[int, ...], block: tuple[int, ...]) -> float:
    """Ghiasi et al.'s ``p / prod(w_k) * prod(L_k / (L_k - w_k + 1))`` with ``w = min(r, L)``,
    as torchvision, capped below 1."""
    gamma = p
    for length, r in zip(spatial, block, strict=True):
        w = min(r, length)
        gamma *= length / (w * (length - w + 1))
    return min(gamma, math.nextafter(1.0, 0.0))


@functools.lru_cache(maxsize=256)
def gamma_for(
    p: float, spatial: tuple[int, ...], block: tuple[int, ...], boundary: str, rule: str
) -> float:
    """The window drop probability of a rule (validated arguments, ``p < 1``)."""
    if p == 0.0:
        return 0.0
    if rule == "mean":
        return _mean_rule(p, spatial, block, boundary)
    if rule == "interior":
        volume = int(window_counts(spatial, block, boundary).max())
        return -math.expm1(math.log1p(-p) / volume)
    return _ghiasi_rule(p, spatial, block)


@functools.lru_cache(maxsize=128)
def keep_prob(
    spatial: tuple[int, ...], block: tuple[int, ...], boundary: str, gamma: float
) -> Tensor:
    """``mu = (1 - gamma)^n`` as a float64 CPU tensor (cached: never modify it)."""
    counts = window_counts(spatial, block, boundary)
    return torch.from_numpy(np.exp(counts * math.log1p(-gamma)))


@functools.lru_cache(maxsize=64)
def _device_counts(
    spatial: tuple[int, ...], block: tuple[int, ...], boundary: str, device: torch.device
) -> Tensor:
    """``n_i`` on a device (one upload per configuration; cached: never modify it)."""
    counts = torch.from_numpy(window_counts(spatial, block, boundary).astype(np.float64))
    return counts.to(device=device, dtype=exact_dtype(device))


@functools.lru_cache(maxsize=128)
def inverse_keep_prob(
    spatial: tuple[int, ...],
    block: tuple[int, ...],
    boundary: str,
    gamma: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """``1 / mu`` on a device for inputs of ``dtype``; 0 where mu underflows, capped at the
    dtype's largest finite value, so that no scale is infinite; in float32 for the half types
    (rounded once, with the product), else in ``dtype`` (cached: never modify it).

    A new ``gamma`` (e.g. under :class:`structdrop.nn.DropRateSchedule`) is computed on the
    device from the cached window counts, so it costs no host-to-device copy.
    """
    counts = _device_counts(spatial, block, boundary, device)
    mu = torch.exp(counts * math.log1p(-gamma))  # on the device: no upload for a new gamma
    inverse = torch.where(mu > 0, 1.0 / mu.clamp_min(torch.finfo(mu.dtype).tiny), 0.0)
    return inverse.clamp_max(torch.finfo(dtype).max).to(work_dtype(dtype))


class Draw(NamedTuple):
    """What a sampler needs to draw the masks of one input (see :func:`plan`).

    Attributes:
        geometry: the candidate windows.
        gamma: the probability with which each window is dropped.
        inverse: ``1 / mu`` on the input's device (see :func:`inverse_keep_prob`).
        options: the layer's options (the scale, the masks shared by channels or batch).
    """

    geometry: Geometry
    gamma: float
    inverse: Tensor
    options: DropBlockOptions

    def mask_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(B0, B1, *spatial)``: one mask per sample and channel, or 1 where it is shared."""
        n, c, *spatial = input_shape
        options = self.options
        return (1 if options.batchwise else n, 1 if options.shared_channels else c, *spatial)


@functools.lru_cache(maxsize=256)
def plan(
    options: DropBlockOptions,
    spatial: tuple[int, ...],
    p: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Draw:
    """The :class:`Draw` of inputs of spatial shape ``spatial``, device and dtype at drop rate
    ``p`` in (0, 1) (cached: a call with a configuration seen before runs no Python)."""
    block = options.blocks(len(spatial))
    rule = options.gamma
    gamma = (
        rule if not isinstance(rule, str) else gamma_for(p, spatial, block, options.boundary, rule)
    )
    inverse = inverse_keep_prob(spatial, block, options.boundary, gamma, device, dtype)
    return Draw(geometry(spatial, block, options.boundary), gamma, inverse, options)
