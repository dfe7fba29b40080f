"""PyTorch layers for structured dropout: exact drop rates, unbiased scaling.

``from structdrop import nn as sdnn``; the pure functions are in ``sdnn.functional``.
"""

from . import functional
from .convert import convert_dropblock
from .modules import (
    BlockDropout,
    DropBlock1d,
    DropBlock2d,
    DropBlock3d,
    DropConnectLinear,
    DropoutPenalty,
    StructuredDropout,
)
from .schedule import DropRateSchedule

__all__ = [
    "BlockDropout",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnectLinear",
    "DropRateSchedule",
    "DropoutPenalty",
    "StructuredDropout",
    "convert_dropblock",
    "functional",
]
