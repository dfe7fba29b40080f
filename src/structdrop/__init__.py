"""structdrop: structured dropout, the regularizers it induces, and their global optimum.

Pal, Lane, Vidal, Haeffele. On the Regularization Properties of Structured Dropout. CVPR 2020.
"""

from ._checkpoint import CheckpointError
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
    "MonteCarloEstimate",
    "Scheme",
    "SlidingBlock",
    "block_norms",
    "expected_loss",
    "global_minimum",
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
