"""structdrop: structured dropout, the regularizers it induces, and their global optimum.

Pal, Lane, Vidal, Haeffele. On the Regularization Properties of Structured Dropout. CVPR 2020.

``import structdrop`` loads NumPy and SciPy only. The rooms that need more are submodules loaded
on first use, as attributes or by import: :mod:`structdrop.nn` and :mod:`structdrop.head`
(torch), :mod:`structdrop.linear` (numba, when a run starts) and :mod:`structdrop.experiments`
(matplotlib). ``structdrop.HeadStats``, ``head_report`` and ``HeadMonitor`` load with
:mod:`structdrop.head`.
"""

import importlib
from typing import Any

from .ksupport import (
    ksupport_norm,
    prox_ksupport_sq,
    prox_spectral_ksupport_sq,
    spectral_ksupport_norm,
)
from .objectives import (
    Gram,
    MonteCarloEstimate,
    expected_loss,
    linear_penalty,
    penalty,
    sampled_loss,
)
from .optimum import (
    GlobalMinimum,
    block_norms,
    global_minimum,
    keep_prob_for_width,
    regularization_strength,
)
from .schemes import Bernoulli, Discrete, DropConnect, GridBlock, Scheme, SlidingBlock

__all__ = [
    "Bernoulli",
    "CheckpointError",
    "Discrete",
    "DropConnect",
    "GlobalMinimum",
    "Gram",
    "GridBlock",
    "HeadMonitor",
    "HeadReport",
    "HeadStats",
    "MonteCarloEstimate",
    "Scheme",
    "SlidingBlock",
    "block_norms",
    "expected_loss",
    "global_minimum",
    "head_report",
    "keep_prob_for_width",
    "ksupport_norm",
    "linear_penalty",
    "penalty",
    "prox_ksupport_sq",
    "prox_spectral_ksupport_sq",
    "regularization_strength",
    "sampled_loss",
    "spectral_ksupport_norm",
]

__version__ = "0.1.0"

#: Submodules loaded on first access as ``structdrop.<name>`` (PEP 562).
_SUBMODULES = ("experiments", "head", "linear", "nn")
#: Public names loaded with their module on first access: checkpoints need zipfile and json,
#: the head's statistics torch.
_LAZY_NAMES = {
    "CheckpointError": "_checkpoint",
    "HeadMonitor": "head",
    "HeadReport": "head",
    "HeadStats": "head",
    "head_report": "head",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # also sets it as an attribute
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, *_LAZY_NAMES})
