"""Sec. 5.3: the four ways of dropping blocks that Fig. 4 compares, defined once.

Grid DropBlock, and sliding DropBlock with three window-drop rates gamma: ``same_theta``
gamma = p (the paper's "same theta"); ``paper`` gamma = 1 - p^(1/r), the paper's
theta' = 1 - (1-theta)^(1/(2k-1)) with 2k-1 = r; ``exact`` gamma = 1 - (1-p)^(1/r), which drops
every interior unit with probability p (docs/theory.md). paper = exact iff p = 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..schemes import DroppedWindows, GridBlock, Scheme, SlidingBlock

__all__ = ["VARIANTS", "Variant", "sliding_variants", "window_drop_rate"]


@dataclass(frozen=True)
class Variant:
    """One law of Fig. 4: its name in the figure data, its legend and line style, and the law
    at drop rate ``p`` and block size ``r``."""

    name: str
    label: str
    style: str
    law: Callable[[float, int], Scheme]


def _grid(p: float, r: int) -> Scheme:
    return GridBlock(p, r)


def _same_theta(p: float, r: int) -> Scheme:
    return SlidingBlock(p, r, gamma=p)


def _paper(p: float, r: int) -> Scheme:
    return SlidingBlock(p, r, gamma=1.0 - p ** (1.0 / r))


def _exact(p: float, r: int) -> Scheme:
    return SlidingBlock(p, r)


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("grid", "grid DropBlock (ours, eq. 3)", "-", _grid),
        Variant("same_theta", "sliding, gamma = p (same theta)", "-.", _same_theta),
        Variant("paper", "sliding, paper's theta' (Sec. 5.3)", "--", _paper),
        Variant("exact", "sliding, exact gamma = 1-(1-p)^(1/r)", ":", _exact),
    )
}


def sliding_variants(p: float, block_size: int) -> dict[str, Scheme]:
    """Every law of :data:`VARIANTS` at drop rate ``p`` and block size ``block_size``."""
    return {name: variant.law(p, block_size) for name, variant in VARIANTS.items()}


def window_drop_rate(scheme: Scheme) -> float | None:
    """``gamma``, the probability that a law drops each window of units, or None for a law
    that does not drop windows (e.g. grid DropBlock)."""
    sampler = scheme.sampler
    return sampler.gamma if isinstance(sampler, DroppedWindows) else None
