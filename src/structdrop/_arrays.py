"""NumPy or torch in, the same kind out.

The objectives run natively on whichever kind they are given (so torch inputs keep autograd and
their device); the spectral routines compute in float64 NumPy and hand the result back in the
caller's kind. The working precision is float64 unless every floating input is float32 (or a
narrower float, which is promoted to float32). torch is never imported here: a value is a tensor
only if torch is loaded already (:mod:`structdrop._backend`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from ._backend import is_tensor
from ._validation import check_not_meta, check_representable

if TYPE_CHECKING:
    import torch

    #: A NumPy array or a torch tensor (annotations only: torch is not imported at run time).
    Array: TypeAlias = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Kind:
    """Where and in which precision a computation runs, and what it returns."""

    is_torch: bool
    double: bool
    device: torch.device | None = None

    @property
    def numpy_dtype(self) -> type:
        return np.float64 if self.double else np.float32

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch  # loaded: a torch kind comes from a tensor

        return torch.float64 if self.double else torch.float32


def _is_float64(array: Array) -> bool:
    if is_tensor(array):
        import torch  # loaded: array is a tensor

        return array.dtype == torch.float64
    return array.dtype == np.float64


def _is_float(array: Array) -> bool:
    if is_tensor(array):
        return array.is_floating_point()
    return array.dtype.kind == "f"


def common_kind(*arrays: Array) -> Kind:
    """The kind of a computation over ``arrays``: torch if any is a tensor, float64 unless all
    floating inputs are float32 or narrower."""
    tensors = [a for a in arrays if is_tensor(a)]
    floats = [a for a in arrays if _is_float(a)]
    double = not floats or any(_is_float64(a) for a in floats)
    if tensors:
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise ValueError(f"tensors must be on one device, got {sorted(map(str, devices))}")
        return Kind(is_torch=True, double=double, device=tensors[0].device)
    return Kind(is_torch=False, double=double)


def convert(array: Array | np.generic | float, kind: Kind) -> Array:
    """``array`` in the library, precision and device of ``kind`` (no copy when already there).

    Anything NumPy holds converts: arrays, 0-d arrays and NumPy scalars (such as the cached
    ``||Y||^2`` of a :class:`structdrop.Gram` built from NumPy data, evaluated at torch factors).
    A 0-d input gives a 0-d result.
    """
    if kind.is_torch:
        import torch  # loaded: a torch kind comes from a tensor

        if not isinstance(array, torch.Tensor):
            array = np.asarray(array)
            # torch shares neither read-only nor non-contiguous memory; 0-d stays 0-d (unlike
            # np.ascontiguousarray, which makes it 1-d)
            if not (array.flags.writeable and array.flags.c_contiguous):
                array = np.array(array, order="C")
            array = torch.from_numpy(array)
        return array.to(device=kind.device, dtype=kind.torch_dtype)
    if is_tensor(array):
        array = to_numpy(array)
    dtype = np.float64 if kind.double else np.float32
    if isinstance(array, np.ndarray) and array.dtype == dtype:
        return array
    return np.asarray(array, dtype=dtype)


def to_numpy(array: Array, name: str = "array") -> np.ndarray:
    """A float64 NumPy copy of ``array`` (detached from autograd, on the CPU).

    Raises:
        ValueError: ``array`` is a meta tensor (it has no values to copy); the message names it
            as ``name``.
    """
    if is_tensor(array):
        import torch  # loaded: array is a tensor

        check_not_meta(array, name)
        return array.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def scalar(value: Array, kind: Kind) -> Array:
    """A 0-d result: a tensor for torch (keeps autograd), a NumPy float otherwise."""
    if kind.is_torch:
        return value
    return kind.numpy_dtype(value)


def binary_exponent(array: np.ndarray | float) -> int:
    """The ``e`` with ``max |array|`` in ``[2**(e-1), 2**e)`` (0 when every entry is 0).

    ``np.ldexp(array, -e)`` brings the largest entry into ``[0.5, 1)`` exactly (a power of two
    changes no digit), which is how the spectral routines stay exact at any scale: they work on
    normalized values and scale their results back with :func:`scale_back`.
    """
    largest = float(np.max(np.abs(array), initial=0.0))
    if largest == 0.0 or not math.isfinite(largest):
        return 0
    return int(np.frexp(largest)[1])


def log10_magnitude(array: np.ndarray | float, exponent: int = 0) -> float:
    """``log10(max |array| * 2**exponent)``, computed without forming the product."""
    largest = float(np.max(np.abs(array), initial=0.0))
    if largest == 0.0:
        return -math.inf
    return math.log10(largest) + exponent * math.log10(2.0)


def scale_back(
    array: np.ndarray | float, exponent: int, kind: Kind, what: str, rescale: str
) -> Array:
    """``array * 2**exponent`` in ``kind``: exact (up to gradual underflow below the smallest
    normal number); a ValueError naming ``what`` when it overflows the kind's dtype."""
    with np.errstate(over="ignore", under="ignore"):  # an overflow is reported below
        value = np.asarray(array, dtype=np.float64)
        if exponent:
            value = np.ldexp(value, exponent)
        result = convert(value, kind)
    check_representable(
        result, what, log10_magnitude=lambda: log10_magnitude(array, exponent), rescale=rescale
    )
    return result
