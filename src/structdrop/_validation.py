"""Every input check of the public API and its error message, in one place.

Public functions validate once, at the boundary, through these helpers; the numerical code
behind them trusts its inputs. Messages name the argument and show the offending value, as in
``ValueError: p must be in [0, 1), got 1.3``.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

Seed = np.random.Generator | int | None


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch (no tensor can exist before
    torch is imported, so the NumPy-only core never loads it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)

__all__ = [
    "Seed",
    "as_generator",
    "check_array",
    "check_block_divides",
    "check_block_size",
    "check_block_sizes",
    "check_choice",
    "check_finite",
    "check_float_tensor",
    "check_gamma_rule",
    "check_generator",
    "check_matrix",
    "check_nonnegative",
    "check_not_meta",
    "check_positive_int",
    "check_probability",
    "check_representable",
    "check_result",
    "check_same",
]


def check_probability(value: Any, name: str = "p") -> float:
    """A drop probability: a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:  # False for NaN as well
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (bools and non-integral floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_block_size(value: Any) -> int:
    return check_positive_int(value, "block_size")


def check_nonnegative(value: Any, name: str) -> float:
    """A finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_block_divides(block_size: int, d: int, name: str = "d") -> None:
    if d % block_size:
        raise ValueError(
            f"block_size must divide the number of hidden units {name}, "
            f"got block_size={block_size} and {name}={d}"
        )


def check_not_meta(array: Any, name: str) -> None:
    """Refuse a meta tensor (``device="meta"``): it has a shape and a dtype but no values, so
    nothing numerical can be computed from it (the layers of :mod:`structdrop.nn` do accept
    meta inputs, for shape propagation; the maths functions cannot)."""
    if _is_tensor(array) and array.is_meta:
        raise ValueError(
            f"{name} is a meta tensor (it has a shape but no values); pass a tensor on a real "
            f"device, got shape {tuple(array.shape)} on device 'meta'"
        )


def check_finite(array: np.ndarray | torch.Tensor, name: str) -> None:
    """Refuse NaN and infinities, saying where the first one is (and meta tensors, which have
    no values to check)."""
    if _is_tensor(array):
        check_not_meta(array, name)
        torch = sys.modules["torch"]
        bad = ~torch.isfinite(array.detach())
        if bool(bad.any()):
            index = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{name} must be finite, got {array[index].item()} at index {index}")
    else:
        bad = ~np.isfinite(array)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must be finite, got {array[index]} at index {index}")


def _is_real(array: np.ndarray | torch.Tensor) -> bool:
    if _is_tensor(array):
        return array.dtype != sys.modules["torch"].bool and not array.is_complex()
    return array.dtype.kind in "iuf"


def check_array(
    array: Any, name: str, ndim: int = 2, *, finite: bool = True, meta: bool = False
) -> np.ndarray | torch.Tensor:
    """A non-empty, finite, real NumPy array or torch tensor with ``ndim`` axes.

    Array-likes (lists, tuples) become float64 NumPy arrays. ``finite=False`` defers the scan for
    NaN and infinities to :func:`check_result`, for hot paths that check their output instead.
    Meta tensors are refused (see :func:`check_not_meta`) unless ``meta=True``, which the layers
    use for shape propagation: a meta tensor then gets the shape and dtype checks only.
    """
    if not (_is_tensor(array) or isinstance(array, np.ndarray)):
        try:
            array = np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"{name} must be a NumPy array or torch tensor, got {type(array).__name__}"
            ) from error
    is_meta = _is_tensor(array) and array.is_meta
    if not (meta and is_meta):
        check_not_meta(array, name)
    if not _is_real(array):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        what = "vector" if ndim == 1 else f"{ndim}-D matrix"
        raise ValueError(f"{name} must be a {what}, got shape {tuple(array.shape)}")
    if 0 in tuple(array.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")
    if finite and not is_meta:
        check_finite(array, name)
    return array


def check_matrix(
    array: Any, name: str, *, finite: bool = True, meta: bool = False
) -> np.ndarray | torch.Tensor:
    """A non-empty, finite, real 2-D NumPy array or torch tensor (see :func:`check_array`)."""
    return check_array(array, name, ndim=2, finite=finite, meta=meta)


def check_result(value: Any, **inputs: np.ndarray | torch.Tensor) -> None:
    """Raise if a computed ``value`` is not finite: name the first non-finite input, or say that
    the computation overflowed. One scalar test instead of a scan of every input."""
    if _is_tensor(value):
        finite = bool(sys.modules["torch"].isfinite(value.detach()).all())
    else:
        finite = bool(np.isfinite(value).all())
    if finite:
        return
    for name, array in inputs.items():
        check_finite(array, name)
    raise ValueError(f"the result overflowed to {value} although every input is finite")


def check_representable(
    value: np.ndarray | torch.Tensor,
    what: str,
    *,
    log10_magnitude: Callable[[], float],
    rescale: str,
) -> None:
    """Raise if a result that exists mathematically does not fit its floating type.

    The computations behind the public functions are scale-safe (they normalize by the largest
    entry and scale back exactly), so a non-finite result here means that the true value itself
    is out of range, e.g. the squared norm of entries of size 1e200. The message names the
    quantity, the type, the order of magnitude (``log10_magnitude()``, computed only then) and
    which input to rescale.
    """
    if _is_tensor(value):
        torch = sys.modules["torch"]
        finite, dtype = bool(torch.isfinite(value.detach()).all()), str(value.dtype)
    else:
        finite, dtype = bool(np.isfinite(value).all()), str(np.asarray(value).dtype)
    if not finite:
        dtype = dtype.removeprefix("torch.")
        raise ValueError(
            f"{what} overflows {dtype} (about 1e{math.floor(log10_magnitude())}): rescale {rescale}"
        )


def check_same(actual: int, expected: int, what: str) -> None:
    """Two dimensions that must agree, e.g. ``check_same(U.shape[1], V.shape[1], ...)``."""
    if actual != expected:
        raise ValueError(f"{what}: got {actual} and {expected}")


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """One of a fixed set of option names."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def as_generator(generator: Seed) -> np.random.Generator:
    """A NumPy generator from a generator, an integer seed, or None (fresh entropy).

    The global NumPy random state is never touched.
    """
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is None or (
        isinstance(generator, int | np.integer) and not isinstance(generator, bool)
    ):
        if generator is not None and generator < 0:
            raise ValueError(f"seed must be >= 0, got {generator}")
        return np.random.default_rng(generator)
    raise TypeError(
        f"generator must be a numpy.random.Generator, an int seed or None, got {generator!r}"
    )


def check_generator(generator: Any) -> torch.Generator | None:
    """A ``torch.Generator`` or None."""
    import torch

    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    return generator


def check_float_tensor(value: Any, name: str) -> torch.Tensor:
    """A floating-point torch tensor."""
    if not _is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_block_sizes(value: Any, ndim: int) -> tuple[int, ...]:
    """``block_size`` as one integer >= 1 per spatial axis (an int applies to every axis)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != ndim:
            raise ValueError(
                f"block_size must be an int or a sequence of {ndim} ints (one per spatial "
                f"axis), got {tuple(value)!r}"
            )
        return tuple(check_block_size(v) for v in value)
    return (check_block_size(value),) * ndim


def check_gamma_rule(value: Any, rules: tuple[str, ...]) -> str | float:
    """A window-drop rule name or a window drop probability in [0, 1)."""
    if isinstance(value, str):
        return check_choice(value, "gamma", rules)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"gamma must be one of {rules} or a real number, got {value!r}")
    return check_probability(value, "gamma")
