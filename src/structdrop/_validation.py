"""Every input check of the public API and its error message, in one place.

Public functions validate once, at the boundary, through these checks; the numerical code
behind them trusts its inputs. Messages name the argument and show the offending value, as in
``ValueError: p must be in [0, 1), got 1.3``.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from ._backend import is_tensor

if TYPE_CHECKING:
    import torch

Seed = np.random.Generator | int | None


def _layer_torch() -> Any:
    """torch, for the checks of the layers (:mod:`structdrop.nn`), which run only where torch is
    loaded: the import costs nothing there and, unlike a look-up in ``sys.modules``, nothing to
    trace under ``torch.compile``."""
    import torch

    return torch


__all__ = [
    "Seed",
    "as_generator",
    "check_array",
    "check_at_most",
    "check_batch_shape",
    "check_block_divides",
    "check_block_divides_axis",
    "check_block_size",
    "check_block_sizes",
    "check_choice",
    "check_cpu_scalar",
    "check_dim",
    "check_drop_rate",
    "check_feature_maps",
    "check_features",
    "check_finite",
    "check_float_dtype",
    "check_float_tensor",
    "check_gamma_rule",
    "check_generator",
    "check_inplace",
    "check_integer",
    "check_law_on_units",
    "check_law_on_weights",
    "check_linear_input",
    "check_linear_operands",
    "check_matrix",
    "check_nonnegative",
    "check_not_meta",
    "check_positive",
    "check_positive_int",
    "check_probability",
    "check_representable",
    "check_result",
    "check_same",
    "check_seed",
    "check_spatial_ndim",
    "check_spatial_shape",
    "check_units_axis",
    "check_weight_and_features",
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
    if isinstance(value, bool):  # True is an Integral equal to 1, never a size
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = math.trunc(value)
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
    if not 0.0 <= value < math.inf:  # False for NaN as well (and symbolic under torch.compile)
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_positive(value: Any, name: str) -> float:
    """A finite real number > 0 (a NaN, an infinity or a negative number gets
    :func:`check_nonnegative`'s message)."""
    value = check_nonnegative(value, name)
    if value == 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_at_most(value: Any, limit: float, name: str) -> Any:
    """A number <= ``limit`` (its type checked elsewhere); the message states the bound."""
    if not value <= limit:
        raise ValueError(f"{name} must be at most {limit}, got {value}")
    return value


#: Seeds are below 2**63: what NumPy's and torch's generators both take.
SEED_LIMIT = 2**63


def check_seed(value: Any, name: str = "seed") -> int:
    """An integer seed in [0, 2**63)."""
    value = check_integer(value, name)
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**63), got {value}")
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
    if is_tensor(array) and array.is_meta:
        raise ValueError(
            f"{name} is a meta tensor (it has a shape but no values); pass a tensor on a real "
            f"device, got shape {tuple(array.shape)} on device 'meta'"
        )


def check_finite(array: np.ndarray | torch.Tensor, name: str) -> None:
    """Refuse NaN and infinities, saying where the first one is (and meta tensors, which have
    no values to check)."""
    if is_tensor(array):
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
    if is_tensor(array):
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
    if not (is_tensor(array) or isinstance(array, np.ndarray)):
        try:
            array = np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"{name} must be a NumPy array or torch tensor, got {type(array).__name__}"
            ) from error
    is_meta = is_tensor(array) and array.is_meta
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


@overload
def check_matrix(
    array: torch.Tensor, name: str, *, finite: bool = True, meta: bool = False
) -> torch.Tensor: ...
@overload
def check_matrix(
    array: Any, name: str, *, finite: bool = True, meta: bool = False
) -> np.ndarray | torch.Tensor: ...
def check_matrix(
    array: Any, name: str, *, finite: bool = True, meta: bool = False
) -> np.ndarray | torch.Tensor:
    """A non-empty, finite, real 2-D NumPy array or torch tensor (see :func:`check_array`)."""
    return check_array(array, name, ndim=2, finite=finite, meta=meta)


def check_result(value: Any, **inputs: np.ndarray | torch.Tensor) -> None:
    """Raise if a computed ``value`` is not finite: name the first non-finite input, or say that
    the computation overflowed. One scalar test instead of a scan of every input."""
    if is_tensor(value):
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
    if is_tensor(value):
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
    if generator is not None and not isinstance(generator, _layer_torch().Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    return generator


def check_float_tensor(value: Any, name: str) -> torch.Tensor:
    """A floating-point torch tensor (a check of the layers)."""
    if not isinstance(value, _layer_torch().Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_cpu_scalar(
    value: Any, name: str, dtype: torch.dtype, *, zero_dim: bool = False
) -> torch.Tensor:
    """A one-element CPU tensor of ``dtype`` (0-d when ``zero_dim``), e.g. the seed and the rate
    that a mask operator reads on the host."""
    torch = _layer_torch()
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must be a {dtype} tensor, got dtype {value.dtype}")
    if value.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got device {str(value.device)!r}")
    one = value.ndim == 0 if zero_dim else value.numel() == 1
    if not one:
        what = "a 0-d tensor" if zero_dim else "a tensor of one element"
        raise ValueError(f"{name} must be {what}, got shape {tuple(value.shape)}")
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


# ----------------------------------------------------------------------------------------------
# The layers (structdrop.nn): drop rates, options and tensor inputs. They run only where torch
# is loaded (see _layer_torch).


def check_drop_rate(value: Any, name: str = "p") -> float:
    """A drop probability of a layer: a real number in [0, 1]; ``p = 1`` drops everything, as
    in ``torch.nn.functional.dropout``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # False for NaN as well
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_inplace(value: Any) -> bool:
    """``inplace``, the third positional argument of the DropBlock layers as in torchvision: a
    bool. A string there is a window boundary, which is keyword-only."""
    if not isinstance(value, bool | np.bool_):
        hint = (
            "; boundary, gamma, scale, ... are keyword-only (e.g. boundary='clipped')"
            if isinstance(value, str)
            else ""
        )
        raise TypeError(f"inplace must be a bool, got {value!r}{hint}")
    return bool(value)


def check_integer(value: Any, name: str) -> int:
    """An integer (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_dim(dim: Any, ndim: int) -> int:
    """An axis of a tensor with ``ndim`` axes, as an index in ``[0, ndim)``."""
    dim = check_integer(dim, "dim")
    if ndim == 0 or not -ndim <= dim < ndim:
        raise ValueError(
            f"dim must be in [-{ndim}, {ndim}) for an input with {ndim} dimensions, got {dim}"
        )
    return dim % ndim


def check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    """A leading shape: an integer or a sequence of integers >= 0."""
    if isinstance(batch_shape, numbers.Integral) and not isinstance(batch_shape, bool):
        batch_shape = (batch_shape,)
    if (
        not isinstance(batch_shape, Sequence)
        or isinstance(batch_shape, str)
        or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in batch_shape)
    ):
        raise TypeError(f"batch_shape must be a tuple of integers, got {batch_shape!r}")
    shape = tuple(int(n) for n in batch_shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"batch_shape must hold sizes >= 0, got {shape}")
    return shape


def check_spatial_shape(value: Any) -> tuple[int, ...]:
    """The lengths of the spatial axes of a feature map: a non-empty sequence of ints >= 1."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value):
        if all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1
            for v in value
        ):
            return tuple(int(v) for v in value)
    raise ValueError(f"spatial_shape must be a non-empty sequence of ints >= 1, got {value!r}")


def check_float_dtype(dtype: Any) -> torch.dtype:
    """A floating-point ``torch.dtype``."""
    if not isinstance(dtype, _layer_torch().dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def check_feature_maps(input: Any, name: str) -> torch.Tensor:
    """A floating point tensor of shape ``(N, C, *spatial)``, at least one spatial axis, for
    the function ``name``."""
    if not isinstance(input, _layer_torch().Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating point tensor, got dtype {input.dtype}")
    if input.ndim < 3:
        raise ValueError(
            f"input must have shape (N, C, *spatial) with at least one spatial axis for "
            f"{name}, got shape {tuple(input.shape)}"
        )
    return input


def check_spatial_ndim(input: Any, ndim: int, name: str) -> None:
    """A tensor ``input`` has ``ndim`` spatial axes after ``(N, C)`` (1, 2 or 3) for the
    function ``name``; anything else than a tensor is left to :func:`check_feature_maps`."""
    if isinstance(input, _layer_torch().Tensor) and input.ndim != ndim + 2:
        axes = ("N, C, L", "N, C, H, W", "N, C, D, H, W")[ndim - 1]
        raise ValueError(
            f"input must be a {ndim + 2}-D tensor ({axes}) for {name}, "
            f"got shape {tuple(input.shape)}"
        )


def check_units_axis(input: torch.Tensor) -> None:
    """A tensor with at least one axis, the last one holding the units."""
    if input.ndim == 0:
        raise ValueError("input must have at least one dimension (the units), got a 0-d tensor")


def check_block_divides_axis(block_size: int, input: torch.Tensor, dim: int) -> None:
    """``block_size`` divides the size of the axis ``dim`` of ``input``."""
    size = input.shape[dim]
    if size % block_size:
        raise ValueError(
            f"block_size must divide input.shape[dim], got block_size={block_size} and "
            f"input.shape[{dim}]={size}"
        )


def check_linear_input(input: Any, weight: torch.Tensor) -> torch.Tensor:
    """The input of a linear map of ``weight`` (out, in): a floating-point (..., in) tensor."""
    input = check_float_tensor(input, "input")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input's last dimension must equal in_features={weight.shape[1]}, "
            f"got input of shape {tuple(input.shape)}"
        )
    return input


def check_linear_operands(
    input: Any, weight: Any, bias: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The operands of a linear map ``input @ weight^T + bias``: (..., in), (out, in) and (out,)
    floating-point tensors, the bias optional."""
    weight = check_float_tensor(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D (out, in) matrix, got shape {tuple(weight.shape)}")
    input = check_linear_input(input, weight)
    if bias is not None:
        bias = check_float_tensor(bias, "bias")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return input, weight, bias


def check_features(features: Any) -> torch.Tensor:
    """Features of a layer as a torch tensor of shape ``(N, d)``, one row per sample."""
    if not isinstance(features, _layer_torch().Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, d) matrix, got shape {tuple(features.shape)}")
    return features


def check_weight_and_features(
    weight: Any, features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A non-empty (a, d) weight and non-empty (N, d) features, by shapes and dtypes only (no look
    at the values: no host sync, no data-dependent branch under ``torch.compile``)."""
    weight = check_float_tensor(weight, "weight")
    if weight.ndim != 2 or 0 in tuple(weight.shape):
        raise ValueError(f"weight must be a non-empty 2-D matrix, got shape {tuple(weight.shape)}")
    if 0 in tuple(features.shape):
        raise ValueError(f"features must not be empty, got shape {tuple(features.shape)}")
    check_same(weight.shape[1], features.shape[1], "weight's columns must match d")
    return weight, features


def check_law_on_weights(scheme: Any) -> Any:
    """``scheme`` if its masks fall on the entries of a weight matrix (``acts_on ==
    "weights"``, DropConnect), else a ValueError naming it."""
    if scheme.acts_on != "weights":
        raise ValueError(
            f"scheme must be a law whose masks fall on weights (acts_on == 'weights', e.g. "
            f"DropConnect), got {scheme!r}, whose masks fall on {scheme.acts_on}"
        )
    return scheme


def check_law_on_units(scheme: Any, layer: str) -> None:
    """Refuse, for a layer that multiplies units by masks, a law whose masks fall on the entries
    of a weight matrix (``scheme.acts_on == "weights"``, i.e. DropConnect)."""
    if scheme.acts_on == "weights":
        raise ValueError(
            f"{layer} applies masks to units, but the masks of {scheme!r} fall on the entries "
            f"of a weight matrix (acts_on={scheme.acts_on!r}); use DropConnectLinear or "
            f"dropconnect_linear for DropConnect, or scheme.on_units() for the law on units "
            f"with the same regularizer"
        )
