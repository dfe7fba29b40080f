"""The options of the DropBlock layers: window boundaries, gamma rules, scales, their names.

The window boundaries are the mask laws' (:data:`structdrop.schemes.BOUNDARIES`) that have a
border: ``"valid"`` and ``"clipped"`` (a feature map has edges, not the circle of ``"ring"``).
``placement`` is a deprecated name of ``boundary`` (keyword and layer attribute): it is accepted,
with a ``DeprecationWarning``, until the next release.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

from .. import schemes

__all__ = [
    "BOUNDARIES",
    "GAMMA_RULES",
    "OPTION_NAMES",
    "SCALES",
    "accepts_placement",
    "take_placement",
    "warn_placement",
]

#: Window boundaries of the layers: the mask laws' that have a border.
BOUNDARIES: tuple[str, ...] = tuple(b for b in schemes.BOUNDARIES if b != "ring")
#: How the window drop probability follows from ``p`` (see ``window_drop_prob``).
GAMMA_RULES: tuple[str, ...] = ("mean", "interior", "ghiasi")
#: How kept units are scaled: by ``1 / mu`` (exact) or by the batch's kept fraction.
SCALES: tuple[str, ...] = ("expected", "batch")
#: The options of ``drop_block`` (every argument after ``block_size``), in order.
OPTION_NAMES: tuple[str, ...] = (
    "inplace",
    "eps",
    "training",
    "boundary",
    "gamma",
    "scale",
    "shared_channels",
    "batchwise",
    "method",
    "generator",
)

Function = TypeVar("Function", bound=Callable[..., Any])


def warn_placement(stacklevel: int = 3) -> None:
    """The ``DeprecationWarning`` of the name ``placement`` (it points ``stacklevel`` frames up)."""
    warnings.warn(
        "placement is deprecated and will be removed in the next release; use boundary (the "
        f"same values, {BOUNDARIES})",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def take_placement(
    options: MutableMapping[str, Any], caller: str, boundary_given: bool = False
) -> None:
    """Rename a ``placement`` keyword in ``options`` to ``boundary``, in place, with a
    ``DeprecationWarning``. Both names at once (``boundary`` in ``options``, or given by
    position: ``boundary_given``) are a TypeError naming ``caller``."""
    if "placement" not in options:
        return
    if boundary_given or "boundary" in options:
        boundary = f"={options['boundary']!r}" if "boundary" in options else " (by position)"
        raise TypeError(
            f"{caller} got both boundary{boundary} and placement={options['placement']!r}; "
            f"pass boundary only (placement is its deprecated name)"
        )
    warn_placement(stacklevel=4)
    options["boundary"] = options.pop("placement")


def accepts_placement(function: Function) -> Function:
    """``function``, also accepting the deprecated keyword ``placement`` for ``boundary``."""
    parameters = list(inspect.signature(function).parameters.values())
    position = next(
        (
            index
            for index, parameter in enumerate(parameters)
            if parameter.name == "boundary" and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
        ),
        len(parameters),  # keyword-only: never given by position
    )
    caller = function.__name__

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "placement" in kwargs:
            name = type(args[0]).__name__ if caller == "__init__" and args else caller
            take_placement(kwargs, name, boundary_given=len(args) > position)
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
