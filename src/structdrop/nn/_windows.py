"""The candidate windows of a sliding DropBlock on an N-d map, and how many cover each unit.

Windows are products of 1-D windows, one per spatial axis of length ``L`` with block ``r``:

* ``"valid"`` (torchvision, TensorFlow): starts ``s = 0 .. L - w`` with ``w = min(r, L)``, i.e.
  the window fits inside the map (a single window covering the axis when ``r >= L``);
* ``"clipped"`` (timm): one window per centre ``c = 0 .. L - 1`` covering
  ``[c - (r - 1) // 2, c + r // 2]`` clipped to ``[0, L)``.

In 1-D these are the windows of :func:`structdrop.schemes.window_incidence`. The number ``n_i``
of windows covering unit ``i`` fixes its keep probability ``(1 - gamma)^{n_i}`` (docs/theory.md,
"Sec. 5.3 ... corrected").
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

__all__ = ["Geometry", "count_histogram", "geometry", "window_counts"]


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
