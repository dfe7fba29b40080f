"""NumPy or torch in, the same kind out.

The objectives run natively on whichever kind they are given (so torch inputs keep autograd and
their device); the spectral routines compute in float64 NumPy and hand the result back in the
caller's kind. The working precision is float64 unless every floating input is float32 (or a
narrower float, which is promoted to float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


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
        return torch.float64 if self.double else torch.float32


def _is_float64(array: Array) -> bool:
    if isinstance(array, torch.Tensor):
        return array.dtype == torch.float64
    return array.dtype == np.float64


def _is_float(array: Array) -> bool:
    if isinstance(array, torch.Tensor):
        return array.is_floating_point()
    return array.dtype.kind == "f"


def common_kind(*arrays: Array) -> Kind:
    """The kind of a computation over ``arrays``: torch if any is a tensor, float64 unless all
    floating inputs are float32 or narrower."""
    tensors = [a for a in arrays if isinstance(a, torch.Tensor)]
    floats = [a for a in arrays if _is_float(a)]
    double = not floats or any(_is_float64(a) for a in floats)
    if tensors:
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise ValueError(f"tensors must be on one device, got {sorted(map(str, devices))}")
        return Kind(is_torch=True, double=double, device=tensors[0].device)
    return Kind(is_torch=False, double=double)


def convert(array: Array, kind: Kind) -> Array:
    """``array`` in the library, precision and device of ``kind`` (no copy when already there)."""
    if kind.is_torch:
        if isinstance(array, np.ndarray):
            if not array.flags.writeable:  # torch may not share read-only memory
                array = array.copy()
            array = torch.from_numpy(np.ascontiguousarray(array))
        return array.to(device=kind.device, dtype=kind.torch_dtype)
    dtype = np.float64 if kind.double else np.float32
    if isinstance(array, np.ndarray) and array.dtype == dtype:
        return array
    return np.asarray(array, dtype=dtype)


def to_numpy(array: Array) -> np.ndarray:
    """A float64 NumPy copy of ``array`` (detached from autograd, on the CPU)."""
    if isinstance(array, torch.Tensor):
        return array.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def scalar(value: Array, kind: Kind) -> Array:
    """A 0-d result: a tensor for torch (keeps autograd), a NumPy float otherwise."""
    if kind.is_torch:
        return value
    return kind.numpy_dtype(value)
