"""The options of a sliding DropBlock: the one place they live, each documented once.

A layer validates its options once, into a frozen :class:`DropBlockOptions`, when it is made
(setting an option validates a new spec); a function does when it is called; ``forward`` and
the mask operator trust them. The drop rate ``p`` is not an option: a
:class:`structdrop.nn.DropRateSchedule` changes it from step to step.

The mask operator ``structdrop::drop_block`` takes the options as arguments of its schema:
:meth:`DropBlockOptions.operator_arguments` builds them from a spec, and
:meth:`DropBlockOptions.from_operator` validates them back into one (what a direct call of the
operator is checked with).
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
#: Which sampler draws the masks.
METHODS: tuple[str, ...] = ("auto", "sparse", "dense")
#: The operator's name for a window drop probability given as a number (``gamma=0.01``).
GAMMA_VALUE = "value"


class DropBlockOptions(NamedTuple):
    """Every option of a sliding DropBlock except the drop rate, validated.

    Build it with :meth:`make`, which checks every value; the tuple is immutable. A NamedTuple,
    so that ``torch.fx`` can write it into generated code and Dynamo treats it as a constant.

    Attributes:
        block_size: block extent ``r >= 1``, an int or one int per spatial axis; even sizes
            and blocks larger than the map are allowed.
        inplace: multiply the input in place and return it.
        eps: added to the number of kept units by ``scale="batch"`` (torchvision's ``eps``);
            unused by the default ``scale="expected"``, which divides by exact keep
            probabilities.
        boundary: ``"valid"`` (candidate windows inside the map, as torchvision and TensorFlow)
            or ``"clipped"`` (a window centred at every unit, clipped at the borders, as timm);
            see :mod:`structdrop.nn.dropblock.rates`.
        gamma: how each window's drop probability follows from ``p``: ``"mean"`` (the mean drop
            rate over the map is exactly ``p``), ``"interior"`` (the most covered units drop
            with rate exactly ``p``), ``"ghiasi"`` (the published approximation, as
            torchvision, for parity), or a window drop probability in [0, 1); see
            :func:`~structdrop.nn.dropblock.window_drop_prob`.
        scale: ``"expected"`` (unit ``i`` divided by its exact keep probability ``mu_i``, so
            ``E[output] = input`` per unit, also at the borders) or ``"batch"`` (by the mask's
            size over its number of kept units plus ``eps``, summed in float32, as torchvision
            and timm; zeros when every unit is dropped).
        shared_channels: one mask per sample, shared by all channels.
        batchwise: one mask for the whole batch, shared by all samples.
        method: which sampler draws the masks (both draw the same law): ``"auto"`` (the sparse
            sampler on a CPU, where only the dropped windows are drawn; the dense one with
            static shapes elsewhere), ``"sparse"`` or ``"dense"``.
        spatial_dims: the number of spatial axes of the input (``DropBlock2d``: 2), or None
            for any (the function ``drop_block``).
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
        values = {**cls(block_size)._asdict(), **options}
        return cls(
            block_size=_block_size(block_size, spatial_dims),
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

    def replaced(self, **options: Any) -> DropBlockOptions:
        """A validated copy with ``options`` changed (a layer's option set)."""
        values = {**self._asdict(), **options}
        spatial_dims = values.pop("spatial_dims")
        return DropBlockOptions.make(spatial_dims=spatial_dims, **values)

    def blocks(self, spatial_dims: int) -> tuple[int, ...]:
        """The block extent on each of ``spatial_dims`` axes (a ValueError if a tuple of
        another length was given). The values were checked by :meth:`make`."""
        if isinstance(self.block_size, int):
            return (self.block_size,) * spatial_dims
        if len(self.block_size) != spatial_dims:
            check.check_block_sizes(self.block_size, spatial_dims)  # raises, naming both
        return self.block_size

    def operator_arguments(self, spatial_dims: int) -> tuple[Any, ...]:
        """The options as the operator's arguments after ``(input, seed, p)``: ``block_size,
        boundary, gamma_rule, gamma_value, scale, eps, shared_channels, batchwise, method``
        (a numeric ``gamma`` is the rule ``"value"`` with that value)."""
        numeric = not isinstance(self.gamma, str)
        return (
            list(self.blocks(spatial_dims)),
            self.boundary,
            GAMMA_VALUE if numeric else self.gamma,
            float(self.gamma) if numeric else 0.0,
            self.scale,
            self.eps,
            self.shared_channels,
            self.batchwise,
            self.method,
        )

    @classmethod
    def from_operator(
        cls,
        spatial_dims: int,
        block_size: Sequence[int],
        boundary: str,
        gamma_rule: str,
        gamma_value: float,
        scale: str,
        eps: float,
        shared_channels: bool,
        batchwise: bool,
        method: str,
    ) -> DropBlockOptions:
        """The validated options of the operator's arguments (the inverse of
        :meth:`operator_arguments`; a ValueError or TypeError names a bad one)."""
        rule = check.check_choice(gamma_rule, "gamma_rule", (*GAMMA_RULES, GAMMA_VALUE))
        gamma = check.check_probability(gamma_value, "gamma_value") if rule == GAMMA_VALUE else rule
        return cls.make(
            list(block_size),
            spatial_dims,
            boundary=boundary,
            gamma=gamma,
            scale=scale,
            eps=eps,
            shared_channels=shared_channels,
            batchwise=batchwise,
            method=method,
        )


#: The options that a call may set (every field but ``block_size`` and ``spatial_dims``).
OPTION_NAMES: tuple[str, ...] = DropBlockOptions._fields[1:-1]


def _block_size(value: Any, spatial_dims: int | None) -> int | tuple[int, ...]:
    """An int >= 1, or a tuple of them (of ``spatial_dims`` entries when that is given)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if spatial_dims is None:
            return tuple(check.check_block_size(v) for v in value)
        return check.check_block_sizes(value, spatial_dims)
    return check.check_block_size(value)
