"""Multiplying an input by a mask, and the floating types that masks and scales are made in."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_scaled", "exact_dtype", "work_dtype", "zero_output"]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float computes (and draws uniforms) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS has not), for exact probabilities."""
    return torch.float32 if device.type == "mps" else torch.float64


def zero_output(input: Tensor, inplace: bool) -> Tensor:
    """``p = 1``: everything dropped, as ``F.dropout(input, 1.0)`` (``input * 0``)."""
    return input.mul_(0.0) if inplace else input * 0.0


def batch_scaled(keep: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """``keep`` times its size over its number of kept units plus ``eps`` (summed in float32,
    as torchvision and timm), in ``keep``'s own dtype (float32 for a half-precision output, so
    that the product with the input is rounded once), the factor capped at the largest finite
    value of ``dtype`` (the output's) so that an all-dropped mask gives zeros, not NaN."""
    kept = keep.sum(dtype=torch.float32)
    largest = min(torch.finfo(torch.float32).max, torch.finfo(dtype).max)
    factor = (keep.numel() / (kept + eps)).clamp_max(largest)
    return keep.mul_(factor.to(keep.dtype))
