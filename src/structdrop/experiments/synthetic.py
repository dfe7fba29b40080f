"""The paper's synthetic experiments (Sec. 5.1, 5.3, App. E) and two beyond it, at paper scale.

Data (Sec. 5.1): N = 1000 samples x ~ N(0, I_100), y = U_true V_true^T x in R^80, a width-50
network started from U0 (80 x 50), V0 (100 x 50); every entry N(0, 1); a rank-50 truth. All of it
comes from one seed. Every figure is a function below that returns a JSON-able dict (its config
included) and draws its PNG through :mod:`.plots`:

* ``fig1``: grid DropBlock (p = 0.5, r = 5): stochastic vs deterministic objective (Lemma 2.1,
  eq. 4-5) and convergence to the closed-form global minimum (Thm 2.7, corrected in NOTES.md).
* ``fig5``: fig1 for p in {0.1, 0.3, 0.5, 0.7, 0.9} (App. E).
* ``fig3`` / ``fig6``: DropConnect on V: its stochastic objective against the corrected expected
  objective and against Thm 4.1's formula as printed, on Gaussian and on correlated inputs, and
  Dropout training against DropConnect training (p = 0.5 in fig3, other p in fig6).
* ``fig4``: grid vs sliding DropBlock (Sec. 5.3): same theta, the paper's theta', the exact gamma.
* ``head``: a target with a dominant singular value, where DropBlock's optimum is not Dropout's.
* ``gap``: the fixed-width gap to F* when rank(A*) exceeds the width, and its closing.

Step sizes follow NOTES.md: ``lr = lr_factor * safe_learning_rate(...)`` (the bound is about 5x
below the divergence threshold), decayed as ``lr / (1 + t / lr_decay)``. Every SGD run
checkpoints under ``<out>/checkpoints/<figure>/`` and resumes with identical results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg import cholesky, toeplitz

from .. import (
    Bernoulli,
    DropConnect,
    Gram,
    GridBlock,
    Scheme,
    SlidingBlock,
    global_minimum,
    keep_prob_for_width,
    regularization_strength,
    sampled_loss,
)
from ..linear import DivergenceError, fit_gd, fit_sgd, record_points, run_sweep
from ..linear import safe_learning_rate as _safe_learning_rate
from . import _io, plots


# ------------------------------------------------------------------------------------------------
# Config (the paper's scale; ``quick()`` shrinks iterations for tests, not dimensions)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Every setting of the synthetic reproduction."""

    # data, Sec. 5.1
    n_samples: int = 1000  # N
    input_dim: int = 100  # b
    output_dim: int = 80  # a
    width: int = 50  # d
    truth_rank: int = 50  # rank of U_true V_true^T (NOTES.md: 50 lets width 50 reach F*)
    correlation: float = 0.9  # AR(1) coefficient of the correlated inputs (fig3, fig6)
    seed: int = 0
    # Algorithm 1 (NOTES.md step sizes)
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


# ------------------------------------------------------------------------------------------------
# Formulas compared in the figures
# ------------------------------------------------------------------------------------------------
def paper_dropconnect_objective(
    Y: np.ndarray, U: np.ndarray, V: np.ndarray, X: np.ndarray, p: float
) -> float:
    """Thm 4.1 / Cor. 4.2 (eq. 20) *as printed in the paper*:
    ``||Y - U V^T X||^2 + (1-theta)/theta sum_k ||u_k||^2 ||X^T v_k||^2``.

    This is Dropout's expected objective (Cor. 3.2), and it is the DropConnect expectation only
    when ``X X^T`` is diagonal; the exact one is ``expected_loss(Y, U, V, X, DropConnect(p))``
    (NOTES.md, "DropConnect on V").
    """
    theta = 1.0 - p
    hidden = V.T @ X
    fit = float(np.sum((Y - U @ hidden) ** 2))
    return fit + (1.0 - theta) / theta * float(np.sum(U * U, axis=0) @ np.sum(hidden**2, axis=1))


def late_relative_difference(
    iterations: Sequence[int], stochastic: Sequence[float], reference: Sequence[float]
) -> float:
    """``sum_k n_k s_k / sum_k n_k r_k - 1`` over the record intervals of the last decade of a
    run: ``s_k`` is the stochastic objective averaged over interval k (``n_k`` steps), ``r_k`` the
    mean of a deterministic objective at its two ends (Lemma 2.1 says they agree in expectation).
    """
    t = np.asarray(iterations, dtype=float)
    s, r = np.asarray(stochastic, dtype=float), np.asarray(reference, dtype=float)
    lengths = np.diff(t)
    late = t[:-1] >= 0.1 * t[-1]
    late[-1] = True
    mean_reference = 0.5 * (r[:-1] + r[1:])
    return float((lengths * s[1:])[late].sum() / (lengths * mean_reference)[late].sum() - 1.0)


def ema(iterations: Sequence[int], values: Sequence[float], fraction: float) -> np.ndarray:
    """Exponential moving average over irregular record points whose time constant is
    ``fraction`` of the current iteration count: even smoothing on a log axis, without lag."""
    t, v = np.asarray(iterations, dtype=float), np.asarray(values, dtype=float)
    out = np.empty_like(v)
    out[0] = v[0]
    for k in range(1, v.size):
        weight = 1.0 - np.exp(-(t[k] - t[k - 1]) / max(fraction * t[k], 1.0))
        out[k] = out[k - 1] + weight * (v[k] - out[k - 1])
    return out


def safe_lr(config: Config, X: np.ndarray, U0: np.ndarray, V0: np.ndarray, scheme: Scheme) -> float:
    """``lr_factor`` times the stability bound :func:`structdrop.linear.safe_learning_rate`."""
    return config.lr_factor * _safe_learning_rate(X, U0, V0, scheme)


def monte_carlo(
    data: Data, U: np.ndarray, V: np.ndarray, scheme: Scheme, samples: int, seed: int
) -> dict[str, float]:
    """Monte Carlo estimate of the masked loss at (U, V) against its exact expectation."""
    estimate = sampled_loss(data.Y, U, V, data.X, scheme, samples, seed=seed)
    exact = float(Gram.from_data(data.X, data.Y).expected_loss(U, V, scheme))
    return {
        "samples": samples,
        "mean": estimate.mean,
        "stderr": estimate.stderr,
        "expected": exact,
        "z": (estimate.mean - exact) / estimate.stderr,
    }


# ------------------------------------------------------------------------------------------------
# Runs (module-level functions, so that run_sweep can send them to other processes)
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One BLAS thread per process: the matrices are small and run_sweep already fills the
    cores; oversubscribed BLAS threads slow the Gram evaluations down by orders of magnitude."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it, runs are correct but may be slower
        yield
        return
    with threadpool_limits(limits=1):
        yield


def run_seed(seed: int, *labels: object) -> int:
    """A seed for one run, derived from the global seed and the run's labels (not the figure's:
    the same run in two figures, e.g. fig1 and fig5 at p = 0.5, gives the same trajectory)."""
    key = zlib.crc32(repr(labels).encode())
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0])


def sgd_run(
    data: Data,
    scheme: Scheme,
    lr: float,
    iterations: int,
    lr_decay: float,
    seed: int,
    record: int | Sequence[int],
    optimum: float | None = None,
    checkpoint: Path | None = None,
    progress: bool = False,
    mc_samples: int = 0,
    halvings: int = 0,
) -> dict[str, Any]:
    """Algorithm 1 through :func:`structdrop.linear.fit_sgd`: its trajectory as a dict, and a
    Monte Carlo check of the expected objective at the final weights (if ``mc_samples``).

    With ``halvings > 0`` a diverged run is restarted with half the learning rate, up to that
    many times (each attempt has its own checkpoint); ``result["lr"]`` is the rate that worked.
    """
    with single_thread():
        for attempt in range(halvings + 1):
            path = checkpoint
            if checkpoint is not None and attempt:
                path = checkpoint.with_name(f"{checkpoint.stem}-half{attempt}{checkpoint.suffix}")
            try:
                trajectory = fit_sgd(
                    data.X,
                    data.Y,
                    data.U0,
                    data.V0,
                    scheme,
                    lr=lr,
                    iterations=iterations,
                    lr_decay=lr_decay,
                    seed=seed,
                    record=record,
                    optimum=optimum,
                    checkpoint=path,
                    progress=progress,
                )
                break
            except DivergenceError:
                if attempt == halvings:
                    raise
                lr /= 2.0
        result = trajectory.to_dict()
        result["lr"] = lr
        result["halvings"] = attempt
        result["late_relative_difference"] = late_relative_difference(
            trajectory.iterations, trajectory.stochastic, trajectory.expected
        )
        if mc_samples:
            result["monte_carlo"] = monte_carlo(
                data, trajectory.U, trajectory.V, scheme, mc_samples, seed
            )
    return result


def dropconnect_run(
    data: Data,
    p: float,
    lr: float,
    iterations: int,
    lr_decay: float,
    seed: int,
    snapshots: int,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
    mc_samples: int = 0,
) -> dict[str, Any]:
    """Algorithm 1 with DropConnect on V (eq. 19), run as consecutive ``fit_sgd`` segments between
    record points so that the paper's Thm 4.1 formula can be evaluated on the same iterates.

    A segment starting at step t0 uses ``lr / (1 + t0/lr_decay)`` and decay ``lr_decay + t0``: the
    schedule of one long run. The segments share one generator and each checkpoints, so a killed
    run resumes exactly.
    """
    scheme = DropConnect(p)
    points = record_points(iterations, snapshots)
    rng = np.random.default_rng(seed)
    with single_thread():
        stats = Gram.from_data(data.X, data.Y)
        U, V = data.U0, data.V0
        corrected = [float(stats.expected_loss(U, V, scheme))]
        stochastic = [corrected[0]]
        paper = [paper_dropconnect_objective(data.Y, U, V, data.X, p)]
        bar = _bar(int(points[-1]), progress, f"DropConnect p={p}")
        for k, (start, stop) in enumerate(itertools.pairwise(points)):
            segment = fit_sgd(
                data.X,
                data.Y,
                U,
                V,
                scheme,
                lr=lr / (1.0 + start / lr_decay),
                iterations=int(stop - start),
                lr_decay=lr_decay + start,
                seed=rng,
                record=[int(stop - start)],
                checkpoint=None if checkpoint_dir is None else checkpoint_dir / f"step{k:03d}.npz",
            )
            U, V = segment.U, segment.V
            corrected.append(float(segment.expected[-1]))
            stochastic.append(float(segment.stochastic[-1]))
            paper.append(paper_dropconnect_objective(data.Y, U, V, data.X, p))
            if bar is not None:
                bar.update(int(stop - start))
        if bar is not None:
            bar.close()
        result: dict[str, Any] = {
            "iterations": points.tolist(),
            "stochastic": stochastic,
            "corrected": corrected,
            "paper": paper,
            "lr": lr,
            "late_relative_difference": {
                "stochastic_vs_corrected": late_relative_difference(points, stochastic, corrected),
                "stochastic_vs_paper": late_relative_difference(points, stochastic, paper),
            },
            "paper_vs_corrected_final": paper[-1] / corrected[-1] - 1.0,
            "paper_vs_corrected_max": float(
                np.max(np.abs(np.asarray(paper) / np.asarray(corrected) - 1.0))
            ),
        }
        if mc_samples:
            check = monte_carlo(data, U, V, scheme, mc_samples, seed)
            check["paper"] = paper[-1]
            check["z_paper"] = (check["mean"] - paper[-1]) / check["stderr"]
            result["monte_carlo"] = check
    return result


def gd_run(data: Data, scheme: Scheme, max_iterations: int) -> dict[str, Any]:
    """Full-batch L-BFGS on the exact expected objective at the width of U0 (fixed width)."""
    with single_thread():
        result = fit_gd(data.X, data.Y, data.U0, data.V0, scheme, max_iterations=max_iterations)
        trained = np.linalg.svd(result.U @ (result.V.T @ data.X), compute_uv=False)
    return {
        "value": result.value,
        "iterations": result.iterations,
        "converged": result.converged,
        "singular_values": trained,
    }


def _bar(total: int, enabled: bool, description: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="it", unit_scale=True, leave=False)


def _sweep(config: Config, function: Callable[..., Any], jobs: list[dict[str, Any]]) -> list[Any]:
    return run_sweep(function, jobs, n_jobs=config.n_jobs)


def _optimum(X: np.ndarray, Y: np.ndarray, scheme: Scheme, width: int) -> dict[str, Any]:
    opt = global_minimum(X, Y, scheme, width)
    return {"value": opt.value, "rank": opt.rank, "rho": opt.rho, "beta": opt.beta}


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _dropblock_runs(
    config: Config, ps: Sequence[float], folder: Path, progress: bool
) -> list[dict[str, Any]]:
    """fig1/fig5: Algorithm 1 with GridBlock(p, r) at the paper's scale, gap to Thm 2.7's F*."""
    data = make_data(config)
    jobs, settings = [], []
    for p in ps:
        scheme = GridBlock(p, config.block_size)
        optimum = _optimum(data.X, data.Y, scheme, config.width)
        lr = safe_lr(config, data.X, data.U0, data.V0, scheme)
        settings.append({"p": p, "scheme": scheme.to_dict(), "lr": lr, "optimum": optimum})
        jobs.append(
            {
                "data": data,
                "scheme": scheme,
                "lr": lr,
                "iterations": config.iterations,
                "lr_decay": config.lr_decay,
                "seed": run_seed(config.seed, "gridblock", p),
                "record": config.record,
                "optimum": optimum["value"],
                "checkpoint": folder / f"gridblock-p{p}.npz",
                "progress": progress and len(ps) == 1,
                "mc_samples": 10 * config.mc_samples,
            }
        )
    runs = _sweep(config, sgd_run, jobs) if len(jobs) > 1 else [sgd_run(**jobs[0])]
    for setting, run in zip(settings, runs, strict=True):
        run.update(setting)
        run["final_gap"] = run["gap"][-1]
    return runs


def fig1(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 1: grid DropBlock, p = 0.5, r = 5: Lemma 2.1 and Thm 2.7."""
    (run,) = _dropblock_runs(config, [config.p], folder, progress)
    return {"run": run, "final_gap": run["final_gap"]}


def fig5(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 5 (App. E): fig1 for several drop rates."""
    runs = _dropblock_runs(config, config.sweep_p, folder, progress)
    return {"runs": runs, "final_gaps": {str(run["p"]): run["final_gap"] for run in runs}}


def _dropconnect_figure(
    config: Config, ps: Sequence[float], iterations: int, folder: Path, progress: bool
) -> dict[str, Any]:
    """fig3/fig6: DropConnect runs (snapshots) and Dropout runs, Gaussian and correlated X."""
    datasets = {"gaussian": make_data(config), "correlated": make_data(config, correlated=True)}
    connect_jobs, dropout_jobs, keys = [], [], []
    for p in ps:
        for name, data in datasets.items():
            lr = safe_lr(config, data.X, data.U0, data.V0, DropConnect(p))
            seed = run_seed(config.seed, "dropconnect", name, p)
            keys.append((name, p, lr))
            connect_jobs.append(
                {
                    "data": data,
                    "p": p,
                    "lr": lr,
                    "iterations": iterations,
                    "lr_decay": config.lr_decay,
                    "seed": seed,
                    "snapshots": config.snapshots,
                    "checkpoint_dir": folder / f"dropconnect-{name}-p{p}",
                    "progress": progress and config.n_jobs == 1,
                    "mc_samples": config.mc_samples,
                }
            )
            dropout_jobs.append(
                {
                    "data": data,
                    "scheme": Bernoulli(p),
                    "lr": lr,
                    "iterations": iterations,
                    "lr_decay": config.lr_decay,
                    "seed": run_seed(config.seed, "dropout", name, p),
                    "record": record_points(iterations, config.snapshots).tolist(),
                    "checkpoint": folder / f"dropout-{name}-p{p}.npz",
                }
            )
    # the long DropConnect runs first, so that the pool balances them across the cores
    results = _sweep(
        config,
        _dispatch,
        [{"kind": "connect", **j} for j in connect_jobs]
        + [{"kind": "sgd", **j} for j in dropout_jobs],
    )
    connect, dropout = results[: len(keys)], results[len(keys) :]
    runs = []
    for (name, p, lr), run, baseline in zip(keys, connect, dropout, strict=True):
        run.update({"dataset": name, "p": p, "lr": lr})
        run["dropout"] = {"iterations": baseline["iterations"], "expected": baseline["expected"]}
        run["dropout_vs_dropconnect_final"] = baseline["expected"][-1] / run["corrected"][-1] - 1
        runs.append(run)
    return {"runs": runs}


def _dispatch(kind: str, **kwargs: Any) -> dict[str, Any]:
    return dropconnect_run(**kwargs) if kind == "connect" else sgd_run(**kwargs)


def fig3(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 3: DropConnect (p = 0.5) vs its deterministic forms; Dropout vs DropConnect."""
    return _dropconnect_figure(config, [config.p], config.dropconnect_iterations, folder, progress)


def fig6(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 6 (App. E): fig3 for other drop rates."""
    return _dropconnect_figure(
        config, config.dropconnect_sweep_p, config.dropconnect_sweep_iterations, folder, progress
    )


def sliding_variants(p: float, block_size: int) -> dict[str, Scheme]:
    """Grid DropBlock and three window-drop rates gamma for sliding DropBlock (Sec. 5.3):
    ``same_theta`` gamma = p (the paper's "same theta"); ``paper`` gamma = 1 - p^(1/r), the
    paper's theta' = 1 - (1-theta)^(1/(2k-1)) with 2k-1 = r; ``exact`` gamma = 1 - (1-p)^(1/r),
    which drops every interior unit with probability p (NOTES.md). paper = exact iff p = 0.5."""
    r = block_size
    return {
        "grid": GridBlock(p, r),
        "same_theta": SlidingBlock(p, r, gamma=p),
        "paper": SlidingBlock(p, r, gamma=1.0 - p ** (1.0 / r)),
        "exact": SlidingBlock(p, r),
    }


def fig4(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 4 (Sec. 5.3): grid vs sliding DropBlock training curves, EMA-smoothed."""
    data = make_data(config)
    iterations = config.sliding_iterations
    record = np.unique(
        np.concatenate(
            [record_points(iterations, config.record), np.linspace(0, iterations, 101).astype(int)]
        )
    ).tolist()
    jobs, keys = [], []
    for p in config.sliding_p:
        for variant, scheme in sliding_variants(p, config.block_size).items():
            mu = scheme.mean(config.width)
            keys.append((p, variant, scheme, mu))
            jobs.append(
                {
                    "data": data,
                    "scheme": scheme,
                    "lr": safe_lr(config, data.X, data.U0, data.V0, scheme),
                    "iterations": iterations,
                    "lr_decay": config.lr_decay,
                    "seed": run_seed(config.seed, "sliding", p),
                    "record": record,
                    "checkpoint": folder / f"{variant}-p{p}.npz",
                    "halvings": 4,
                }
            )
    results = _sweep(config, sgd_run, jobs)
    runs = []
    for (p, variant, scheme, mu), result in zip(keys, results, strict=True):
        smooth = ema(result["iterations"], result["expected"], config.ema_fraction)
        runs.append(
            {
                "p": p,
                "variant": variant,
                "scheme": scheme.to_dict(),
                "lr": result["lr"],
                "halvings": result["halvings"],
                "gamma": getattr(scheme, "gamma", None),
                "interior_drop_rate": float(1.0 - np.min(mu)),
                "mean_drop_rate": float(1 - mu.mean()),
                "iterations": result["iterations"],
                "expected": result["expected"],
                "smoothed": smooth,
                "final": float(smooth[-1]),
            }
        )
    summary: dict[str, dict[str, float]] = {}
    for p in config.sliding_p:
        grid = next(r["final"] for r in runs if r["p"] == p and r["variant"] == "grid")
        summary[str(p)] = {r["variant"]: r["final"] / grid - 1.0 for r in runs if r["p"] == p}
    optimum = {
        str(p): _optimum(data.X, data.Y, GridBlock(p, config.block_size), config.width)
        for p in config.sliding_p
    }
    return {"runs": runs, "relative_to_grid": summary, "grid_optimum": optimum}


def head(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Beyond the paper: with a dominant singular value (``r x_1 > sum x``) rho* > 1 and the
    GridBlock optimum differs from Dropout's (NOTES.md); fit_gd at a generous width reaches it.

    Also checks Prop. 3.3: Dropout at width d reaches ``min ||Y-A||^2 + (1-theta)/(theta d)
    ||A||_*^2`` (the corrected eq. 18), not the printed strength ``(1-theta)/theta``.
    """
    data = head_data(config)
    p, d = config.head_p, config.head_width
    dropout = global_minimum(data.X, data.Y, Bernoulli(p), d)
    jobs, optima = [], []
    for r in config.head_block_sizes:
        scheme = GridBlock(p, r)
        optima.append(global_minimum(data.X, data.Y, scheme, d))
        jobs.append({"data": data, "scheme": scheme, "max_iterations": config.gd_max_iterations})
    results = _sweep(config, gd_run, jobs)
    runs = []
    for r, opt, result in zip(config.head_block_sizes, optima, results, strict=True):
        predicted = np.asarray(opt.singular_values)
        trained = result["singular_values"][: predicted.size]
        shown = max(opt.rank, 1)
        runs.append(
            {
                "block_size": r,
                "beta": opt.beta,
                "rho": opt.rho,
                "rank": opt.rank,
                "dominant_head": bool(r * predicted[0] > predicted.sum()),
                "predicted": predicted[: config.head_tail + 1],
                "trained": trained[: config.head_tail + 1],
                "optimum": opt.value,
                "value": result["value"],
                "gap": (result["value"] - opt.value) / opt.value,
                "iterations": result["iterations"],
                "max_singular_value_error": float(
                    np.max(np.abs(trained[:shown] - predicted[:shown])) / predicted[0]
                ),
                "differs_from_dropout": float(
                    np.linalg.norm(predicted - dropout.singular_values)
                    / np.linalg.norm(dropout.singular_values)
                ),
            }
        )
    dropout_run = next(run for run in runs if run["block_size"] == 1)
    printed = global_minimum(data.X, data.Y, Bernoulli(p), 1)  # strength (1-theta)/theta
    return {
        "runs": runs,
        "dropout_predicted": np.asarray(dropout.singular_values)[: config.head_tail + 1],
        "target_singular_values": np.asarray(dropout.target_singular_values)[
            : config.head_tail + 1
        ],
        "prop33": {
            "width": d,
            "p": p,
            "trained": dropout_run["value"],
            "corrected_value": dropout.value,
            "printed_value": printed.value,
            "trained_vs_corrected": dropout_run["value"] / dropout.value - 1.0,
            "trained_vs_printed": dropout_run["value"] / printed.value - 1.0,
        },
    }


def gap(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Beyond the paper: the fixed-width gap. A rank-80 truth with GridBlock(0.1, 5) at width 50
    has rank(A*) > 50, so the width-50 minimum stays above F*; at larger widths, with the drop
    rate rescaled by eq. 7 so that beta (hence A* and F*) is unchanged, the gap closes once
    ``d >= rank(A*)`` (NOTES.md, "Tightness needs width")."""
    r = config.block_size
    beta = regularization_strength(GridBlock(config.gap_p, r), config.width)
    base = make_data(config, truth_rank=config.gap_truth_rank)
    jobs, rows = [], []
    for width in config.gap_widths:
        p = 1.0 - keep_prob_for_width(1.0 / (1.0 + beta), r, width)
        scheme = GridBlock(p, r)
        init = np.random.default_rng(run_seed(config.seed, "gap", width))
        data = Data(
            X=base.X,
            Y=base.Y,
            U0=init.standard_normal((config.output_dim, width)),
            V0=init.standard_normal((config.input_dim, width)),
        )
        rows.append({"width": width, "p": p, **_optimum(base.X, base.Y, scheme, width)})
        jobs.append({"data": data, "scheme": scheme, "max_iterations": config.gd_max_iterations})
    results = _sweep(config, gd_run, jobs)
    for row, result in zip(rows, results, strict=True):
        row["trained"] = result["value"]
        row["gap"] = (result["value"] - row["value"]) / row["value"]
        row["converged"] = result["converged"]
    rank = rows[0]["rank"]
    return {
        "runs": rows,
        "rank": rank,
        "beta": beta,
        "width_gap": rows[0]["gap"],
        "closed_gap": min(row["gap"] for row in rows if row["width"] >= rank)
        if any(row["width"] >= rank for row in rows)
        else None,
    }


FIGURES: dict[str, Callable[[Config, Path, bool], dict[str, Any]]] = {
    "fig1": fig1,
    "fig3": fig3,
    "fig4": fig4,
    "fig5": fig5,
    "fig6": fig6,
    "head": head,
    "gap": gap,
}

TITLES = {
    "fig1": "Fig. 1: grid DropBlock, stochastic vs deterministic objective, gap to F*",
    "fig3": "Fig. 3: DropConnect vs its deterministic forms; Dropout vs DropConnect",
    "fig4": "Fig. 4: grid vs sliding DropBlock (Sec. 5.3)",
    "fig5": "Fig. 5: fig1 for p in {0.1, 0.3, 0.5, 0.7, 0.9}",
    "fig6": "Fig. 6: fig3 for other drop rates",
    "head": "Dominant head: DropBlock's optimum differs from Dropout's",
    "gap": "Fixed-width gap when rank(A*) > d",
}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def check_figures(names: Sequence[str] | None) -> list[str]:
    """The figures to run, in the canonical order (all when ``names`` is empty or None)."""
    if not names:
        return list(FIGURES)
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        raise _io.InputError(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
    return [name for name in FIGURES if name in set(names)]


def is_done(out: Path, name: str, config: Config) -> bool:
    """A figure is done when its JSON exists and was made with the same settings (the whole
    :meth:`Config.identity`: a quick result never stands in for a full one, nor one of another
    seed, scale or drop rate)."""
    try:
        made = _io.read_figure(Path(out) / f"{name}.json", name)
    except _io.InputError:
        return False
    return made is not None and made["config"] == _io.normalized(config.identity())


def check_outputs(out: Path, names: Sequence[str], force: bool) -> None:
    """Refuse to overwrite a ``<figure>.json`` that is not a structdrop figure (a file of the
    user's that happens to have the name), unless ``force``.

    Raises:
        InputError: such a file stands where a requested figure would be written.
    """
    if force:
        return
    for name in names:
        try:
            _io.read_figure(Path(out) / f"{name}.json", name)
        except _io.InputError as error:
            raise _io.InputError(
                f"{error}; move it away, choose another --out, or overwrite it with --force"
            ) from None


def run_figure(name: str, config: Config, out: Path, progress: bool = False) -> dict[str, Any]:
    """Compute one figure, write ``<out>/<name>.png`` and ``<out>/<name>.json`` (atomically, the
    JSON last: it marks the figure as done), and drop its checkpoints. The time it took goes to
    ``<out>/timings.json``, not into the figure's data (same seed, same bytes).

    A killed run keeps its checkpoints and resumes; a diverged one loses them (they are useless).
    """
    out = Path(out)
    folder = out / "checkpoints" / name
    fresh = not out.exists()
    start = time.perf_counter()
    try:
        with single_thread():
            result = FIGURES[name](config, folder, progress)
    except DivergenceError:
        discard_checkpoints(out, name)
        if fresh:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty
        raise
    elapsed = time.perf_counter() - start
    data = {"figure": name, "title": TITLES[name], "config": config.identity(), **result}
    data = _io.to_jsonable(data)
    png = plots.render(name, data)
    _io.write_bytes(out / f"{name}.png", png)
    _io.write_json(out / f"{name}.json", data)
    _io.record_timing(out, name, {"elapsed_s": elapsed, "n_jobs": config.n_jobs})
    discard_checkpoints(out, name)
    return data


def discard_checkpoints(out: Path, name: str) -> None:
    """Remove the checkpoints of figure ``name`` (and the checkpoints folder once empty)."""
    shutil.rmtree(Path(out) / "checkpoints" / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        (Path(out) / "checkpoints").rmdir()  # only when empty


def run(
    figures: Sequence[str] | None,
    out: str | Path,
    quick: bool = False,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
    config: Config | None = None,
    report: Callable[[str, str, dict[str, Any] | None], None] | None = None,
) -> dict[str, str]:
    """Run the requested figures (all by default) and return ``{name: "done" | "skipped"}``.

    Args:
        figures: figure names (see :data:`FIGURES`); empty or None for all.
        out: output folder.
        quick: shrink the iterations (tests, smoke runs).
        seed: the seed of the data and of every run.
        force: recompute figures whose JSON already exists, discarding their checkpoints (also
            damaged or foreign ones) and overwriting files that stand in the way.
        progress: tqdm progress bars.
        config: base settings (default :class:`Config`); ``quick`` and ``seed`` apply on top.
        report: called as ``report(name, status, data)`` after each figure.
    """
    names = check_figures(figures)
    base = Config() if config is None else config
    base = dataclasses.replace(base, seed=seed)
    if quick and not base.quick:
        base = base.quick_version()
    out = Path(out)
    check_outputs(out, names, force)
    status: dict[str, str] = {}
    for name in names:
        if force:
            discard_checkpoints(out, name)
        elif is_done(out, name, base):
            status[name] = "skipped"
            if report is not None:
                report(name, "skipped", None)
            continue
        data = run_figure(name, base, out, progress=progress)
        status[name] = "done"
        if report is not None:
            report(name, "done", data)
    return status
