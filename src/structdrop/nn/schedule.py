"""A linear warm-up of the drop probability, shared by several layers."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .. import _validation as check

__all__ = ["DropRateSchedule"]


def _has_rate(layer: Any) -> bool:
    rate = getattr(layer, "p", None)
    return isinstance(rate, numbers.Real) and not isinstance(rate, bool)


def _collect(layers: Any) -> list[Any]:
    """The layers a schedule drives: a module with ``p``, every submodule with a numeric ``p``
    of a module without one, or each element of an iterable (each must have ``p``)."""
    if isinstance(layers, nn.Module):
        if hasattr(layers, "p"):
            found = [layers]
        else:
            found = [module for module in layers.modules() if _has_rate(module)]
            if not found:
                raise ValueError(
                    f"layers must contain a module with a drop probability p, got none in "
                    f"{type(layers).__name__}"
                )
        return found
    if not isinstance(layers, Iterable) or isinstance(layers, str | bytes):
        raise TypeError(f"layers must be a module or an iterable of layers, got {layers!r}")
    found = list(layers)
    if not found:
        raise ValueError("layers must not be empty")
    for index, layer in enumerate(found):
        if not hasattr(layer, "p"):
            raise TypeError(
                f"layers[{index}] must have a drop probability attribute p, "
                f"got {type(layer).__name__}"
            )
    return found


class DropRateSchedule:
    """Linear warm-up of the drop probability ``p`` of several layers over ``steps`` steps.

    After ``t`` calls of :meth:`step`, every layer has
    ``p = start + (stop - start) * min(t / steps, 1)``: the rate grows linearly and then holds
    at ``stop``, as DropBlock is usually trained (Ghiasi et al., Sec. 4.1). Like a learning-rate
    scheduler, the schedule sets ``p = start`` on every layer when it is created (step 0); call
    :meth:`step` once per training step (or epoch). Any object with an attribute ``p`` can be
    driven: this library's layers, ``torch.nn.Dropout``, ...

    Args:
        layers: a module with ``p``; a module without one, meaning every submodule with a
            numeric ``p``; or an iterable of layers, each with ``p``.
        stop: the final drop probability, in [0, 1); or None: every layer warms up to the
            rate it has when the schedule is created (e.g. the per-stage rates of a timm
            model converted by :func:`structdrop.nn.convert_dropblock`).
        steps: the number of steps of the warm-up, >= 1.
        start: the initial drop probability, in [0, 1).

    Examples:
        >>> from structdrop import nn as sdnn
        >>> blocks = [sdnn.BlockDropout(0.0, 4), sdnn.BlockDropout(0.0, 2)]
        >>> schedule = sdnn.DropRateSchedule(blocks, stop=0.2, steps=4)
        >>> for _ in range(2):
        ...     _ = schedule.step()
        >>> [layer.p for layer in blocks]
        [0.1, 0.1]
    """

    def __init__(self, layers: Any, stop: float | None, steps: int, start: float = 0.0) -> None:
        self.layers = _collect(layers)
        self.start = check.check_probability(start, "start")
        self.stop = None if stop is None else check.check_probability(stop, "stop")
        self.stops = self._stops()
        self.steps = check.check_positive_int(steps, "steps")
        self.last_step = 0
        self._apply()

    def _stops(self) -> list[float]:
        """Each layer's final rate: ``stop``, or the layer's own rate when ``stop`` is None."""
        if self.stop is not None:
            return [self.stop] * len(self.layers)
        return [
            check.check_probability(layer.p, f"layers[{index}].p")
            for index, layer in enumerate(self.layers)
        ]

    def _rate(self, stop: float) -> float:
        fraction = min(self.last_step / self.steps, 1.0)
        return self.start + (stop - self.start) * fraction

    @property
    def p(self) -> float:
        """The drop probability of the current step (the largest, when each layer warms up to
        its own rate)."""
        return self._rate(max(self.stops))

    def _apply(self) -> None:
        for layer, stop in zip(self.layers, self.stops, strict=True):
            layer.p = check.check_probability(self._rate(stop))  # in [start, stop] up to rounding

    def step(self) -> float:
        """Advance one step, set ``p`` on every layer and return it."""
        self.last_step += 1
        self._apply()
        return self.p

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state (not the layers'), for checkpoints."""
        state: dict[str, Any] = {
            "last_step": self.last_step,
            "start": self.start,
            "stop": self.stop,
            "steps": self.steps,
        }
        if self.stop is None:
            state["stops"] = list(self.stops)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` and set ``p`` on every layer accordingly.

        Every entry is checked before anything changes: a state that is refused leaves the
        schedule and its layers as they were."""
        missing = {"last_step", "start", "stop", "steps"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict misses the keys {sorted(missing)}")
        last_step = state_dict["last_step"]
        if isinstance(last_step, bool) or not isinstance(last_step, numbers.Integral):
            raise TypeError(f"last_step must be an integer, got {last_step!r}")
        if last_step < 0:
            raise ValueError(f"last_step must be >= 0, got {last_step}")
        start = check.check_probability(state_dict["start"], "start")
        stop = state_dict["stop"]
        stop = None if stop is None else check.check_probability(stop, "stop")
        if stop is None:
            stops = state_dict.get("stops")
            if not isinstance(stops, list | tuple) or len(stops) != len(self.layers):
                raise ValueError(
                    f"state_dict must hold 'stops', one rate per layer ({len(self.layers)}), "
                    f"when stop is None, got {stops!r}"
                )
            stops = [check.check_probability(rate, "stops") for rate in stops]
        else:
            stops = [stop] * len(self.layers)
        steps = check.check_positive_int(state_dict["steps"], "steps")
        self.start, self.stop, self.stops = start, stop, stops
        self.steps, self.last_step = steps, int(last_step)
        self._apply()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={len(self.layers)}, start={self.start}, "
            f"stop={self.stop}, steps={self.steps}, last_step={self.last_step})"
        )
