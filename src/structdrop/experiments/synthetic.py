"""The paper's synthetic experiments (Sec. 5.1, 5.3, App. E) and two beyond it, at paper scale.

Every figure is a function below that returns a JSON-able dict; :mod:`.figures` lists them with
their titles, plots, claims and summaries, and :mod:`.driver` runs them (``run``,
``check_figures`` and ``run_figure`` are importable from here too). The data and every setting
come from :class:`Config` (:mod:`.config`); the runs themselves from :mod:`.runs`.

* ``fig1``: grid DropBlock (p = 0.5, r = 5): stochastic vs deterministic objective (Lemma 2.1,
  eq. 4-5) and convergence to the closed-form global minimum (Thm 2.7, corrected in docs/theory.md).
* ``fig5``: fig1 for p in {0.1, 0.3, 0.5, 0.7, 0.9} (App. E).
* ``fig3`` / ``fig6``: DropConnect on V: its stochastic objective against the corrected expected
  objective and against Thm 4.1's formula as printed, on Gaussian and on correlated inputs, and
  Dropout training against DropConnect training (p = 0.5 in fig3, other p in fig6).
* ``fig4``: grid vs sliding DropBlock (Sec. 5.3): same theta, the paper's theta', the exact gamma.
* ``head``: a target with a dominant singular value, where DropBlock's optimum is not Dropout's.
* ``gap``: the fixed-width gap to F* when rank(A*) exceeds the width, and its closing.

Steps follow docs/theory.md: ``lr = lr_factor * safe_learning_rate(...)`` (the bound is about 5x
below the divergence threshold), decayed as ``lr / (1 + t / lr_decay)``. Every SGD run
checkpoints under ``<out>/checkpoints/<figure>/`` and resumes with identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..linear import record_points, safe_learning_rate
from ..optimum import (
    GlobalMinimum,
    global_minimum,
    keep_prob_for_width,
    regularization_strength,
)
from ..schemes import Bernoulli, DropConnect, GridBlock, Scheme
from .config import Config, Data, head_data, make_data
from .driver import run, run_figure
from .figures import check_figures, headline
from .formulas import ema
from .runs import gd_run, optimum_summary, run_job, run_seed, sgd_run, sweep
from .sliding import sliding_variants, window_drop_rate

__all__ = [
    "Config",
    "check_figures",
    "fig1",
    "fig3",
    "fig4",
    "fig5",
    "fig6",
    "gap",
    "head",
    "headline",
    "run",
    "run_figure",
    "safe_lr",
]


def safe_lr(config: Config, X: np.ndarray, U0: np.ndarray, V0: np.ndarray, scheme: Scheme) -> float:
    """``lr_factor`` times the stability bound :func:`structdrop.linear.safe_learning_rate`."""
    return config.lr_factor * safe_learning_rate(X, U0, V0, scheme)


# ------------------------------------------------------------------------------------------------
# fig1, fig5: grid DropBlock and the global minimum
# ------------------------------------------------------------------------------------------------
def _dropblock_runs(
    config: Config, ps: Sequence[float], folder: Path, progress: bool
) -> list[dict[str, Any]]:
    """fig1/fig5: Algorithm 1 with GridBlock(p, r) at the paper's scale, gap to Thm 2.7's F*."""
    data = make_data(config)
    jobs, settings = [], []
    for p in ps:
        scheme = GridBlock(p, config.block_size)
        optimum = optimum_summary(data.X, data.Y, scheme, config.width)
        lr = safe_lr(config, data.X, data.U0, data.V0, scheme)
        settings.append({"p": p, "lr": lr, "optimum": optimum})
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
    runs = sweep(sgd_run, jobs, config.n_jobs) if len(jobs) > 1 else [sgd_run(**jobs[0])]
    for setting, result in zip(settings, runs, strict=True):
        result.update(setting)
        result["final_gap"] = result["gap"][-1]
    return runs


def fig1(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 1: grid DropBlock, p = 0.5, r = 5: Lemma 2.1 and Thm 2.7."""
    (result,) = _dropblock_runs(config, [config.p], folder, progress)
    return {"run": result, "final_gap": result["final_gap"]}


def fig5(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 5 (App. E): fig1 for several drop rates."""
    runs = _dropblock_runs(config, config.sweep_p, folder, progress)
    return {"runs": runs, "final_gaps": {str(r["p"]): r["final_gap"] for r in runs}}


# ------------------------------------------------------------------------------------------------
# fig3, fig6: DropConnect on V against Thm 4.1 and against Dropout
# ------------------------------------------------------------------------------------------------
def _dropconnect_figure(
    config: Config, ps: Sequence[float], iterations: int, folder: Path, progress: bool
) -> dict[str, Any]:
    """fig3/fig6: DropConnect runs (snapshots) and Dropout runs, Gaussian and correlated X."""
    datasets = {"gaussian": make_data(config), "correlated": make_data(config, correlated=True)}
    connect_jobs, dropout_jobs, keys = [], [], []
    common = {"iterations": iterations, "lr_decay": config.lr_decay}
    for p in ps:
        for name, data in datasets.items():
            scheme = DropConnect(p)
            lr = safe_lr(config, data.X, data.U0, data.V0, scheme)
            keys.append((name, p, lr))
            connect_jobs.append(
                {
                    "data": data,
                    "scheme": scheme,
                    "lr": lr,
                    "seed": run_seed(config.seed, "dropconnect", name, p),
                    "snapshots": config.snapshots,
                    "checkpoint_dir": folder / f"dropconnect-{name}-p{p}",
                    "progress": progress and config.n_jobs == 1,
                    "mc_samples": config.mc_samples,
                    **common,
                }
            )
            dropout_jobs.append(
                {
                    "data": data,
                    "scheme": scheme.on_units(),
                    "lr": lr,
                    "seed": run_seed(config.seed, "dropout", name, p),
                    "record": record_points(iterations, config.snapshots).tolist(),
                    "checkpoint": folder / f"dropout-{name}-p{p}.npz",
                    **common,
                }
            )
    # the long DropConnect runs first, so that the pool balances them across the cores
    results = sweep(run_job, connect_jobs + dropout_jobs, config.n_jobs)
    runs = []
    for (name, p, lr), connect, dropout in zip(
        keys, results[: len(keys)], results[len(keys) :], strict=True
    ):
        connect.update({"dataset": name, "p": p, "lr": lr})
        connect["dropout"] = {key: dropout[key] for key in ("scheme", "iterations", "expected")}
        final = dropout["expected"][-1] / connect["corrected"][-1] - 1
        connect["dropout_vs_dropconnect_final"] = final
        runs.append(connect)
    return {"runs": runs}


def fig3(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 3: DropConnect (p = 0.5) vs its deterministic forms; Dropout vs DropConnect."""
    return _dropconnect_figure(config, [config.p], config.dropconnect_iterations, folder, progress)


def fig6(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Fig. 6 (App. E): fig3 for other drop rates."""
    return _dropconnect_figure(
        config, config.dropconnect_sweep_p, config.dropconnect_sweep_iterations, folder, progress
    )


# ------------------------------------------------------------------------------------------------
# fig4: grid vs sliding DropBlock (Sec. 5.3)
# ------------------------------------------------------------------------------------------------
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
            keys.append((p, variant, scheme))
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
    results = sweep(sgd_run, jobs, config.n_jobs)
    runs = [
        _sliding_run(config, p, variant, scheme, result)
        for (p, variant, scheme), result in zip(keys, results, strict=True)
    ]
    summary: dict[str, dict[str, float]] = {}
    for p in config.sliding_p:
        grid = next(r["final"] for r in runs if r["p"] == p and r["variant"] == "grid")
        summary[str(p)] = {r["variant"]: r["final"] / grid - 1.0 for r in runs if r["p"] == p}
    optimum = {
        str(p): optimum_summary(data.X, data.Y, GridBlock(p, config.block_size), config.width)
        for p in config.sliding_p
    }
    return {"runs": runs, "relative_to_grid": summary, "grid_optimum": optimum}


def _sliding_run(
    config: Config, p: float, variant: str, scheme: Scheme, result: dict[str, Any]
) -> dict[str, Any]:
    """One curve of fig4: its law, drop rates, and the EMA-smoothed deterministic objective."""
    mu = scheme.mean(config.width)
    smooth = ema(result["iterations"], result["expected"], config.ema_fraction)
    return {
        "p": p,
        "variant": variant,
        "scheme": result["scheme"],
        "lr": result["lr"],
        "halvings": result["halvings"],
        "gamma": window_drop_rate(scheme),
        "interior_drop_rate": float(1.0 - np.min(mu)),
        "mean_drop_rate": float(1 - mu.mean()),
        "iterations": result["iterations"],
        "expected": result["expected"],
        "smoothed": smooth,
        "final": float(smooth[-1]),
    }


# ------------------------------------------------------------------------------------------------
# Beyond the paper: a dominant head, and the fixed-width gap
# ------------------------------------------------------------------------------------------------
def head(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Beyond the paper: with a dominant singular value (``r x_1 > sum x``) rho* > 1 and the
    GridBlock optimum differs from Dropout's (docs/theory.md); fit_gd at a wide width reaches it.

    Also checks Prop. 3.3: Dropout at width d reaches ``min ||Y-A||^2 + (1-theta)/(theta d)
    ||A||_*^2`` (the corrected eq. 18), not the printed strength ``(1-theta)/theta``.
    """
    data = head_data(config)
    p, d = config.head_p, config.head_width
    dropout = global_minimum(data.X, data.Y, Bernoulli(p), d)
    schemes = [GridBlock(p, r) for r in config.head_block_sizes]
    optima = [global_minimum(data.X, data.Y, scheme, d) for scheme in schemes]
    jobs = [
        {"data": data, "scheme": scheme, "max_iterations": config.gd_max_iterations}
        for scheme in schemes
    ]
    results = sweep(gd_run, jobs, config.n_jobs)
    shown = config.head_tail + 1
    runs = [
        _head_run(r, opt, result, np.asarray(dropout.singular_values), shown)
        for r, opt, result in zip(config.head_block_sizes, optima, results, strict=True)
    ]
    dropout_run = next(run for run in runs if run["block_size"] == 1)
    printed = global_minimum(data.X, data.Y, Bernoulli(p), 1)  # strength (1-theta)/theta
    return {
        "runs": runs,
        "dropout_predicted": np.asarray(dropout.singular_values)[:shown],
        "target_singular_values": np.asarray(dropout.target_singular_values)[:shown],
        "prop33": {
            "scheme": Bernoulli(p).to_dict(),
            "width": d,
            "p": p,
            "trained": dropout_run["value"],
            "corrected_value": dropout.value,
            "printed_value": printed.value,
            "trained_vs_corrected": dropout_run["value"] / dropout.value - 1.0,
            "trained_vs_printed": dropout_run["value"] / printed.value - 1.0,
        },
    }


def _head_run(
    block_size: int, opt: GlobalMinimum, result: dict[str, Any], dropout: np.ndarray, shown: int
) -> dict[str, Any]:
    """One block size of ``head``: predicted vs trained singular values and the gap to F*."""
    predicted = np.asarray(opt.singular_values)
    trained = result["singular_values"][: predicted.size]
    rank = max(opt.rank, 1)
    return {
        "scheme": result["scheme"],
        "block_size": block_size,
        "beta": opt.beta,
        "rho": opt.rho,
        "rank": opt.rank,
        "dominant_head": bool(block_size * predicted[0] > predicted.sum()),
        "predicted": predicted[:shown],
        "trained": trained[:shown],
        "optimum": opt.value,
        "value": result["value"],
        "gap": (result["value"] - opt.value) / opt.value,
        "iterations": result["iterations"],
        "max_singular_value_error": float(
            np.max(np.abs(trained[:rank] - predicted[:rank])) / predicted[0]
        ),
        "differs_from_dropout": float(
            np.linalg.norm(predicted - dropout) / np.linalg.norm(dropout)
        ),
    }


def gap(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Beyond the paper: the fixed-width gap. A rank-80 truth with GridBlock(0.1, 5) at width 50
    has rank(A*) > 50, so the width-50 minimum stays above F*; at larger widths, with the drop
    rate rescaled by eq. 7 so that beta (hence A* and F*) is unchanged, the gap closes once
    ``d >= rank(A*)`` (docs/theory.md#width-scaling, "Tightness needs width")."""
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
        optimum = optimum_summary(base.X, base.Y, scheme, width)
        rows.append({"scheme": scheme.to_dict(), "width": width, "p": p, **optimum})
        jobs.append({"data": data, "scheme": scheme, "max_iterations": config.gd_max_iterations})
    results = sweep(gd_run, jobs, config.n_jobs)
    for row, result in zip(rows, results, strict=True):
        row["trained"] = result["value"]
        row["gap"] = (result["value"] - row["value"]) / row["value"]
        row["converged"] = result["converged"]
    rank = rows[0]["rank"]
    closing = [row["gap"] for row in rows if row["width"] >= rank]
    return {
        "runs": rows,
        "rank": rank,
        "beta": beta,
        "width_gap": rows[0]["gap"],
        "closed_gap": min(closing) if closing else None,
    }
