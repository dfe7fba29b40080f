"""The runs behind the synthetic figures: Algorithm 1, DropConnect in segments, full-batch L-BFGS.

Every run takes a mask law and returns a JSON-able dict that names the law by its identity
(``"scheme": scheme.to_dict()``). Around the runs: Monte Carlo checks of the expected objective,
sweeps of independent runs over the machine's cores, progress bars and per-run seeds. The run
functions are module-level, so that :func:`structdrop.linear.run_sweep` can send them to other
processes.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_law_on_weights
from ..linear import DivergenceError, fit_gd, fit_sgd, record_points, run_sweep
from ..objectives import Gram, sampled_loss
from ..optimum import global_minimum
from ..schemes import Scheme, check_scheme
from .config import Data
from .formulas import late_relative_difference, paper_dropconnect_objective

__all__ = [
    "dropconnect_run",
    "gd_run",
    "monte_carlo",
    "optimum_summary",
    "progress_bar",
    "run_job",
    "run_seed",
    "sgd_run",
    "single_thread",
    "sweep",
]


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


def sweep(
    function: Callable[..., Any], jobs: list[dict[str, Any]], n_jobs: int | None
) -> list[Any]:
    """``[function(**job) for job in jobs]`` over ``n_jobs`` processes (None: all cores)."""
    return run_sweep(function, jobs, n_jobs=n_jobs)


def progress_bar(total: int, enabled: bool, description: str) -> Any:
    """A tqdm bar of ``total`` iterations, or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="it", unit_scale=True, leave=False)


def optimum_summary(X: np.ndarray, Y: np.ndarray, scheme: Scheme, width: int) -> dict[str, Any]:
    """Thm 2.7's global minimum (corrected, docs/theory.md): value F*, rank(A*), rho* and beta."""
    opt = global_minimum(X, Y, scheme, width)
    return {"value": opt.value, "rank": opt.rank, "rho": opt.rho, "beta": opt.beta}


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
# Algorithm 1
# ------------------------------------------------------------------------------------------------
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
        result.update(scheme=scheme.to_dict(), lr=lr, halvings=attempt)
        result["late_relative_difference"] = late_relative_difference(
            trajectory.iterations, trajectory.stochastic, trajectory.expected
        )
        if mc_samples:
            result["monte_carlo"] = monte_carlo(
                data, trajectory.U, trajectory.V, scheme, mc_samples, seed
            )
    return result


# ------------------------------------------------------------------------------------------------
# DropConnect on V, in segments between record points
# ------------------------------------------------------------------------------------------------
def dropconnect_run(
    data: Data,
    scheme: Scheme,
    lr: float,
    iterations: int,
    lr_decay: float,
    seed: int,
    snapshots: int,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
    mc_samples: int = 0,
) -> dict[str, Any]:
    """Algorithm 1 with masks on V's entries (eq. 19), run as consecutive ``fit_sgd`` segments
    between record points so that the paper's Thm 4.1 formula can be evaluated on the same
    iterates.

    A segment starting at step t0 uses ``lr / (1 + t0/lr_decay)`` and decay ``lr_decay + t0``: the
    schedule of one long run. The segments share one generator and each checkpoints, so a killed
    run resumes exactly.

    Raises:
        ValueError: ``scheme`` is not a law on weights (``acts_on != "weights"``).
    """
    scheme = check_law_on_weights(check_scheme(scheme))
    points = record_points(iterations, snapshots)
    with single_thread():
        curves, U, V = _segments(data, scheme, lr, lr_decay, seed, points, checkpoint_dir, progress)
        stochastic, corrected, paper = curves
        result: dict[str, Any] = {
            "scheme": scheme.to_dict(),
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


def _segments(
    data: Data,
    scheme: Scheme,
    lr: float,
    lr_decay: float,
    seed: int,
    points: np.ndarray,
    checkpoint_dir: Path | None,
    progress: bool,
) -> tuple[tuple[list[float], list[float], list[float]], np.ndarray, np.ndarray]:
    """The stochastic, exact and Thm 4.1 objectives at every record point, and the last weights."""
    rng = np.random.default_rng(seed)
    stats = Gram.from_data(data.X, data.Y)
    U, V = data.U0, data.V0
    corrected = [float(stats.expected_loss(U, V, scheme))]
    stochastic = [corrected[0]]
    paper = [paper_dropconnect_objective(data.Y, U, V, data.X, scheme)]
    bar = progress_bar(int(points[-1]), progress, repr(scheme))
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
        paper.append(paper_dropconnect_objective(data.Y, U, V, data.X, scheme))
        if bar is not None:
            bar.update(int(stop - start))
    if bar is not None:
        bar.close()
    return (stochastic, corrected, paper), U, V


def run_job(**job: Any) -> dict[str, Any]:
    """One Algorithm 1 run of either kind, chosen by where its law's masks fall: a law on the
    weights runs in segments (:func:`dropconnect_run`), one on the units in one go
    (:func:`sgd_run`). Lets one sweep balance both kinds over the cores."""
    if job["scheme"].acts_on == "weights":
        return dropconnect_run(**job)
    return sgd_run(**job)


# ------------------------------------------------------------------------------------------------
# Full batch
# ------------------------------------------------------------------------------------------------
def gd_run(data: Data, scheme: Scheme, max_iterations: int) -> dict[str, Any]:
    """Full-batch L-BFGS on the exact expected objective at the width of U0 (fixed width)."""
    with single_thread():
        result = fit_gd(data.X, data.Y, data.U0, data.V0, scheme, max_iterations=max_iterations)
        trained = np.linalg.svd(result.U @ (result.V.T @ data.X), compute_uv=False)
    return {
        "scheme": scheme.to_dict(),
        "value": result.value,
        "iterations": result.iterations,
        "converged": result.converged,
        "singular_values": trained,
    }
