"""Every setting of the synthetic reproduction, and the data sets they determine (Sec. 5.1).

Data (Sec. 5.1): N = 1000 samples x ~ N(0, I_100), y = U_true V_true^T x in R^80, a width-50
network started from U0 (80 x 50), V0 (100 x 50); every entry N(0, 1); a rank-50 truth. All of it
comes from one seed, through independent streams, so that changing the truth's rank keeps X, U0
and V0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import cholesky, toeplitz

__all__ = ["Config", "Data", "correlation_factor", "head_data", "make_data"]


# ------------------------------------------------------------------------------------------------
# Config (the paper's scale; ``quick_version()`` shrinks iterations for tests, not dimensions)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Every setting of the synthetic reproduction."""

    # data, Sec. 5.1
    n_samples: int = 1000  # N
    input_dim: int = 100  # b
    output_dim: int = 80  # a
    width: int = 50  # d
    truth_rank: int = 50  # rank of U_true V_true^T (docs/theory.md: 50 lets width 50 reach F*)
    correlation: float = 0.9  # AR(1) coefficient of the correlated inputs (fig3, fig6)
    seed: int = 0
    # Algorithm 1 (docs/theory.md step sizes)
    lr_factor: float = 3.0  # lr = lr_factor * safe_learning_rate (divergence at ~5-6x)
    lr_decay: float = 5e4  # eta_t = lr / (1 + t / lr_decay)
    record: int = 64  # ~log-spaced record points per run
    # fig1 / fig5
    p: float = 0.5
    block_size: int = 5
    iterations: int = 1_000_000
    sweep_p: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    mc_samples: int = 2000  # Monte Carlo masks for the exact-vs-sampled check at the end
    # fig3 / fig6 (DropConnect draws b*d uniforms per step: ~30x a unit-mask step)
    dropconnect_iterations: int = 100_000
    dropconnect_sweep_iterations: int = 25_000
    dropconnect_sweep_p: tuple[float, ...] = (0.1, 0.3, 0.7, 0.9)
    snapshots: int = 40  # record points at which Thm 4.1's formula is evaluated
    # fig4 (Sec. 5.3)
    sliding_iterations: int = 100_000
    sliding_p: tuple[float, ...] = (0.5, 0.3)
    ema_fraction: float = 0.1  # EMA time constant, as a fraction of the iteration count
    # head (beyond the paper)
    head_value: float = 10.0  # the dominant singular value of the true map; the rest are 1
    head_tail: int = 9
    head_p: float = 0.9
    head_width: int = 100
    head_init_scale: float = 0.1  # the target map is small (norm ~10): start near its scale
    head_block_sizes: tuple[int, ...] = (1, 2, 5)
    gd_max_iterations: int = 10_000
    # gap (beyond the paper)
    gap_truth_rank: int = 80
    gap_p: float = 0.1  # drop rate at the reference width; other widths keep beta (eq. 7)
    gap_widths: tuple[int, ...] = (50, 60, 70, 80, 100)
    # execution
    quick: bool = False
    n_jobs: int | None = None  # processes for independent runs (None: all cores)

    def quick_version(self) -> Config:
        """The same experiments with far fewer iterations (seconds instead of minutes)."""
        return dataclasses.replace(
            self,
            quick=True,
            record=24,
            iterations=20_000,
            mc_samples=200,
            dropconnect_iterations=3_000,
            dropconnect_sweep_iterations=1_500,
            snapshots=10,
            sliding_iterations=5_000,
            gd_max_iterations=60,
            gap_widths=(50, 70),
        )

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as a dict."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that determine the numbers (not how many processes compute them): a
        figure made with the same identity is reused, one made with another is recomputed."""
        fields = self.to_dict()
        fields.pop("n_jobs")
        return fields


# ------------------------------------------------------------------------------------------------
# Data (one seed; independent streams so that changing the truth's rank keeps X, U0, V0)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Data:
    """Inputs, targets and initial weights, column-wise as in the paper (X: b x N, Y: a x N)."""

    X: np.ndarray
    Y: np.ndarray
    U0: np.ndarray
    V0: np.ndarray


def _streams(seed: int) -> list[np.random.Generator]:
    """The generators of X, of the truth, of the initial weights and of the head's target."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def make_data(config: Config, truth_rank: int | None = None, correlated: bool = False) -> Data:
    """Sec. 5.1's data set: ``X`` with iid N(0, 1) entries (or, if ``correlated``, ``L X`` with
    ``L L^T`` the AR(1) covariance ``rho^|i-j|``), ``Y = U_true V_true^T X`` of the given rank, and
    the initial weights U0, V0 (all N(0, 1))."""
    rank = config.truth_rank if truth_rank is None else truth_rank
    x_rng, truth_rng, init_rng, _ = _streams(config.seed)
    b, a, d = config.input_dim, config.output_dim, config.width
    X = x_rng.standard_normal((b, config.n_samples))
    if correlated:
        X = correlation_factor(b, config.correlation) @ X
    U_true, V_true = truth_rng.standard_normal((a, rank)), truth_rng.standard_normal((b, rank))
    U0, V0 = init_rng.standard_normal((a, d)), init_rng.standard_normal((b, d))
    return Data(X=X, Y=U_true @ (V_true.T @ X), U0=U0, V0=V0)


def correlation_factor(dim: int, rho: float) -> np.ndarray:
    """Cholesky factor of the Toeplitz (AR(1)) covariance ``Sigma_ij = rho^|i-j|``."""
    return cholesky(toeplitz(rho ** np.arange(dim)), lower=True)


def head_data(config: Config) -> Data:
    """A true map with singular values ``(head_value, 1, ..., 1)`` (random singular vectors),
    inputs as in Sec. 5.1, and N(0, head_init_scale^2) initial weights at ``head_width``."""
    x_rng, _, init_rng, head_rng = _streams(config.seed)
    b, a, d = config.input_dim, config.output_dim, config.head_width
    X = x_rng.standard_normal((b, config.n_samples))
    spectrum = np.array([config.head_value] + [1.0] * config.head_tail)
    left = np.linalg.qr(head_rng.standard_normal((a, spectrum.size)))[0]
    right = np.linalg.qr(head_rng.standard_normal((b, spectrum.size)))[0]
    U0, V0 = (
        config.head_init_scale * init_rng.standard_normal(shape) for shape in ((a, d), (b, d))
    )
    return Data(X=X, Y=(left * spectrum) @ (right.T @ X), U0=U0, V0=V0)
