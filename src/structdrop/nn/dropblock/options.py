"""The options of a sliding DropBlock, validated once into a frozen spec.

A layer builds its :class:`DropBlockOptions` when it is made, a function when it is called;
``forward`` and the mask operator then trust them. The drop rate ``p`` is not an option: a
:class:`structdrop.nn.DropRateSchedule` changes it from step to step.

The window boundaries are the mask laws' (:data:`structdrop.schemes.BOUNDARIES`) that have a
border: ``"valid"`` and ``"clipped"`` (a feature map has edges, not the circle of ``"ring"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ... import _validation as check
from ... import schemes

__all__ = ["BOUNDARIES", "GAMMA_RULES", "METHODS", "OPTION_NAMES", "SCALES", "DropBlockOptions"]

#: Window boundaries of the layers: the mask laws' that have a border.
BOUNDARIES: tuple[str, ...] = tuple(b for b in schemes.BOUNDARIES if b != "ring")
#: How the window drop probability follows from ``p`` (see ``window_drop_prob``).
GAMMA_RULES: tuple[str, ...] = ("mean", "interior", "ghiasi")
#: How kept units are scaled: by ``1 / mu`` (exact) or by the batch's kept fraction.
SCALES: tuple[str, ...] = ("expected", "batch")
#: Which sampler draws the masks: the device's fastest (``"auto"``: sparse on a CPU, dense
#: elsewhere), or one of them.
METHODS: tuple[str, ...] = ("auto", "sparse", "dense")


class DropBlockOptions(NamedTuple):
    """Every option of a sliding DropBlock except the drop rate, validated (see
    :func:`structdrop.nn.functional.drop_block` for their meaning).

    Build it with :meth:`make`, which checks every value; the tuple is immutable. A NamedTuple,
    so that ``torch.fx`` can write it into generated code and Dynamo treats it as a constant.
    """

    block_size: int | tuple[int, ...]
    inplace: bool = False
    eps: float = 1e-6
    boundary: str = "valid"
    gamma: str | float = "mean"
    scale: str = "expected"
    shared_channels: bool = False
    batchwise: bool = False
    method: str = "auto"
    #: The number of spatial axes of the input (``DropBlock2d``: 2), or None for any.
    spatial_dims: int | None = None

    @classmethod
    def make(
        cls, block_size: Any, spatial_dims: int | None = None, **options: Any
    ) -> DropBlockOptions:
        """Validated options; ``block_size`` is checked against ``spatial_dims`` when given
        (an int stays an int, a sequence becomes a tuple). Unknown names are a TypeError."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown DropBlock options {unknown}; the options are {OPTION_NAMES}")
        defaults = cls(block_size)._asdict()
        values = {**defaults, **options}
        block = _block_size(block_size, spatial_dims)
        return cls(
            block_size=block,
            inplace=check.check_inplace(values["inplace"]),
            eps=check.check_nonnegative(values["eps"], "eps"),
            boundary=check.check_choice(values["boundary"], "boundary", BOUNDARIES),
            gamma=check.check_gamma_rule(values["gamma"], GAMMA_RULES),
            scale=check.check_choice(values["scale"], "scale", SCALES),
            shared_channels=bool(values["shared_channels"]),
            batchwise=bool(values["batchwise"]),
            method=check.check_choice(values["method"], "method", METHODS),
            spatial_dims=spatial_dims,
        )

    def blocks(self, spatial_dims: int) -> tuple[int, ...]:
        """The block extent on each of ``spatial_dims`` axes (a ValueError if a tuple of
        another length was given). The values were checked by :meth:`make`."""
        if isinstance(self.block_size, int):
            return (self.block_size,) * spatial_dims
        if len(self.block_size) != spatial_dims:
            check.check_block_sizes(self.block_size, spatial_dims)  # raises, naming both
        return self.block_size


#: The options that a call may set (every field but ``block_size`` and ``spatial_dims``).
OPTION_NAMES: tuple[str, ...] = DropBlockOptions._fields[1:-1]


def _block_size(value: Any, spatial_dims: int | None) -> int | tuple[int, ...]:
    """An int >= 1, or a tuple of them (of ``spatial_dims`` entries when that is given)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if spatial_dims is None:
            return tuple(check.check_block_size(v) for v in value)
        return check.check_block_sizes(value, spatial_dims)
    return check.check_block_size(value)
