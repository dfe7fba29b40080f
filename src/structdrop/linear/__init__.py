"""Training the single hidden layer linear network ``U V^T x`` with dropout masks.

:func:`fit_sgd` is Algorithm 1 (compiled), :func:`fit_gd` full-batch L-BFGS on the exact expected
objective, :func:`run_sweep` runs many of them over the machine's cores.
"""

from .gd import GDResult, fit_gd
from .sgd import DivergenceError, Trajectory, fit_sgd, record_points, safe_learning_rate
from .sweep import run_sweep

__all__ = [
    "DivergenceError",
    "GDResult",
    "Trajectory",
    "fit_gd",
    "fit_sgd",
    "record_points",
    "run_sweep",
    "safe_learning_rate",
]
