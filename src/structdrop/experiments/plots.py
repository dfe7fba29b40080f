"""Figures of the experiments, drawn from their JSON data (one function per figure).

Which function draws which synthetic figure is said by :data:`.figures.FIGURES`; :func:`fig2`
draws the deep experiment's Fig. 2. A run's mask law is read back from its identity. Uses
matplotlib's object API (``Figure``, no pyplot): no global state, no display needed.
:func:`render` returns PNG bytes; the caller writes them atomically.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..schemes import Scheme
from .claims import law
from .figures import FIGURES
from .sliding import VARIANTS

__all__ = ["render", "render_sweep"]

#: The deep experiment's figure (Sec. 5.2), drawn by :func:`fig2`; not a synthetic figure.
FIG2 = "fig2"

COLORS = {
    "stochastic": "tab:orange",
    "deterministic": "tab:blue",
    "paper": "tab:red",
    "optimum": "black",
    "dropout": "tab:green",
}


def _positive(values: Any) -> np.ndarray:
    """Values for a log axis (None, NaN and nonpositive entries are masked)."""
    array = np.array([np.nan if v is None else v for v in values], dtype=float)
    array[~(array > 0)] = np.nan
    return array


def _steps(iterations: Any) -> np.ndarray:
    """Iterations on a log axis: 0 is drawn at 1."""
    return np.maximum(np.asarray(iterations, dtype=float), 1.0)


def _objective_panels(top: Axes, bottom: Axes, run: dict[str, Any], title: str) -> None:
    t = _steps(run["iterations"])
    top.loglog(t, _positive(run["stochastic"]), color=COLORS["stochastic"], label="stochastic (3)")
    top.loglog(
        t,
        _positive(run["expected"]),
        "--",
        color=COLORS["deterministic"],
        label="deterministic (5)",
    )
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8)
    bottom.loglog(
        t, _positive(run["expected"]), color=COLORS["deterministic"], label="deterministic (5)"
    )
    bottom.axhline(
        run["optimum"]["value"], color=COLORS["optimum"], ls=":", label="global minimum (Thm 2.7)"
    )
    bottom.set_xlabel("iteration")
    bottom.legend(fontsize=8, title=f"final gap {run['final_gap']:.2e}", title_fontsize=8)


def fig1(data: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(6, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    run = data["run"]
    _objective_panels(top, bottom, run, str(law(run)))
    top.set_ylabel("objective")
    bottom.set_ylabel("objective")
    return figure


def fig5(data: dict[str, Any]) -> Figure:
    runs = data["runs"]
    figure = Figure(figsize=(3.2 * len(runs), 6), layout="constrained")
    axes = np.atleast_2d(figure.subplots(2, len(runs), sharex=True, squeeze=False))
    for column, run in enumerate(runs):
        _objective_panels(axes[0, column], axes[1, column], run, str(law(run)))
    axes[0, 0].set_ylabel("objective")
    axes[1, 0].set_ylabel("objective")
    return figure


def _dropconnect_panel(axis: Axes, run: dict[str, Any]) -> None:
    t = _steps(run["iterations"])
    axis.loglog(
        t,
        _positive(run["stochastic"]),
        color=COLORS["stochastic"],
        label="stochastic (19), mean since last point",
    )
    axis.loglog(
        t,
        _positive(run["corrected"]),
        "--",
        color=COLORS["deterministic"],
        label="corrected expectation (docs/theory.md)",
    )
    axis.loglog(
        t,
        _positive(run["paper"]),
        ":",
        color=COLORS["paper"],
        label="paper's Thm 4.1 / eq. 20 formula",
    )
    axis.set_title(
        f"{run['dataset']} X, {law(run)}\npaper/corrected - 1 = "
        f"{run['paper_vs_corrected_final']:+.1%}",
        fontsize=9,
    )
    axis.legend(fontsize=7)


def _dropout_panel(axis: Axes, run: dict[str, Any]) -> None:
    axis.loglog(
        _steps(run["iterations"]),
        _positive(run["corrected"]),
        color=COLORS["deterministic"],
        label=f"{law(run)} training (exact objective)",
    )
    axis.loglog(
        _steps(run["dropout"]["iterations"]),
        _positive(run["dropout"]["expected"]),
        "--",
        color=COLORS["dropout"],
        label=f"{law(run['dropout'])} training (exact objective)",
    )
    axis.set_title(
        f"{run['dataset']} X: {law(run['dropout'])}/{law(run)} - 1 = "
        f"{run['dropout_vs_dropconnect_final']:+.1%}",
        fontsize=9,
    )
    axis.set_xlabel("iteration")
    axis.legend(fontsize=7)


def dropconnect(data: dict[str, Any]) -> Figure:
    """fig3: per data set, the objectives of the DropConnect run (top) and Dropout vs
    DropConnect training (bottom). fig6 (many runs): one panel per run with both."""
    runs = data["runs"]
    if len(runs) <= 2:
        figure = Figure(figsize=(5.5 * len(runs), 7), layout="constrained")
        axes = figure.subplots(2, len(runs), squeeze=False)
        for column, run in enumerate(runs):
            _dropconnect_panel(axes[0, column], run)
            _dropout_panel(axes[1, column], run)
        axes[0, 0].set_ylabel("objective")
        axes[1, 0].set_ylabel("objective")
        return figure
    datasets = sorted({run["dataset"] for run in runs}, key=lambda n: n != "gaussian")
    ps = sorted({run["p"] for run in runs})
    figure = Figure(figsize=(3.6 * len(ps), 3.4 * len(datasets)), layout="constrained")
    axes = figure.subplots(len(datasets), len(ps), squeeze=False)
    for run in runs:
        axis = axes[datasets.index(run["dataset"]), ps.index(run["p"])]
        _dropconnect_panel(axis, run)
        axis.loglog(
            _steps(run["dropout"]["iterations"]),
            _positive(run["dropout"]["expected"]),
            "-.",
            color=COLORS["dropout"],
            label=f"{law(run['dropout'])} training",
        )
        axis.legend(fontsize=6)
    for axis in axes[-1]:
        axis.set_xlabel("iteration")
    return figure


def fig4(data: dict[str, Any]) -> Figure:
    ps = sorted({run["p"] for run in data["runs"]}, reverse=True)
    figure = Figure(figsize=(6 * len(ps), 4.5), layout="constrained")
    axes = figure.subplots(1, len(ps), squeeze=False)[0]
    for axis, p in zip(axes, ps, strict=True):
        for run in (r for r in data["runs"] if r["p"] == p):
            t = _steps(run["iterations"])
            variant = VARIANTS[run["variant"]]
            line = axis.loglog(t, _positive(run["expected"]), alpha=0.2, lw=0.8)[0]
            axis.loglog(
                t,
                _positive(run["smoothed"]),
                variant.style,
                color=line.get_color(),
                lw=1.8,
                label=f"{variant.label}: drop {run['interior_drop_rate']:.2f}",
            )
        axis.axhline(
            data["grid_optimum"][str(p)]["value"],
            color=COLORS["optimum"],
            ls=":",
            lw=0.8,
            label="grid global minimum",
        )
        axis.set_title(f"p = {p} (EMA-smoothed deterministic objectives)", fontsize=9)
        axis.set_xlabel("iteration")
        axis.legend(fontsize=7)
    axes[0].set_ylabel("objective")
    return figure


def head(data: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axis = figure.subplots()
    for run in data["runs"]:
        predicted = _positive(run["predicted"])
        index = np.arange(1, predicted.size + 1)
        r = law(run).block_size
        line = axis.semilogy(index, predicted, "-", label=f"r={r} predicted (rho*={run['rho']})")[0]
        axis.semilogy(
            index,
            _positive(run["trained"]),
            "o",
            color=line.get_color(),
            mfc="none",
            label=f"r={r} trained (L-BFGS)",
        )
    axis.semilogy(
        np.arange(1, len(data["target_singular_values"]) + 1),
        _positive(data["target_singular_values"]),
        "k:",
        label="target",
    )
    axis.set_xlabel("index i")
    axis.set_ylabel("singular value of U V^T X")
    axis.set_title("Dominant head: GridBlock(p, r) optimum vs Dropout (r=1)", fontsize=9)
    axis.legend(fontsize=7)
    return figure


def gap(data: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(6, 4.2), layout="constrained")
    axis = figure.subplots()
    widths = [row["width"] for row in data["runs"]]
    gaps = np.array([max(row["gap"], 1e-16) for row in data["runs"]])
    axis.semilogy(widths, gaps, "o-", label="(fixed-width minimum - F*) / F*")
    axis.axvline(data["rank"], color="black", ls=":", label=f"rank(A*) = {data['rank']}")
    axis.set_xlabel("width d (beta held fixed by eq. 7)")
    axis.set_ylabel("relative gap")
    axis.set_title("Fixed-width gap closes once d >= rank(A*)", fontsize=9)
    axis.legend(fontsize=8)
    return figure


def fig2(data: dict[str, Any]) -> Figure:
    """The paper's Fig. 2 layout: objective vs iterations (left), singular values (right)."""
    history, theory, final = data["history"], data["theory"], data["final"]
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    steps = np.arange(1, len(history["step_loss"]) + 1)
    left.semilogy(
        steps, history["step_loss"], color="0.75", lw=0.8, label="stochastic (batch x N/B)"
    )
    left.semilogy(
        history["eval_step"], history["objective"], "o-", ms=3, label="deterministic (eq. 14)"
    )
    if theory is not None:
        left.axhline(theory["value"], color="k", ls="--", lw=1, label="theoretical minimum")
    best = data.get("best_head")
    if best is not None:
        left.plot(
            history["eval_step"][-1:], [best["objective"]], "v", color="tab:red",
            label="best head for the final features",
        )  # fmt: skip
    left.set_xlabel("iteration")
    left.set_ylabel("objective")
    left.legend(fontsize=8)
    left.set_title(f"{data['dataset']['name']}: {Scheme.from_dict(data['scheme'])}", fontsize=9)

    index = np.arange(1, len(final["singular_values"]) + 1)
    right.plot(index, final["singular_values"], "o", label="trained U G")
    if theory is not None:
        right.plot(
            np.arange(1, len(theory["singular_values"]) + 1),
            theory["singular_values"],
            "x--",
            color="k",
            label="predicted (prox of Y)",
        )
        right.plot(
            np.arange(1, len(theory["target_singular_values"]) + 1),
            theory["target_singular_values"],
            ":",
            color="0.6",
            label="Y (sqrt class counts)",
        )
    right.set_xlabel("index")
    right.set_ylabel("singular value")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.set_title("singular values of the predictions", fontsize=9)
    return figure


#: Colours of the sweep's laws.
LAW_COLORS = {"dropout": "tab:blue", "grid2": "tab:orange", "grid5": "tab:green"}


def sweep(data: dict[str, Any]) -> Figure:
    """Fig. 2's sweep: per data set, the gap of the trained network to the capacity bound
    (solid) and to the best head for its features (dashed) against the drop rate, per law."""
    done = [row for row in data["cells"] if row["done"]]
    datasets = list(dict.fromkeys(row["dataset"] for row in data["cells"]))
    figure = Figure(figsize=(4.2 * max(len(datasets), 1), 3.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, max(len(datasets), 1), sharey=True))
    for axis, dataset in zip(axes, datasets, strict=False):
        for label in data["laws"]:
            rows = sorted(
                (r for r in done if r["dataset"] == dataset and r["law"] == label),
                key=lambda r: r["p"],
            )
            if not rows:
                continue
            p = [r["p"] for r in rows]
            color = LAW_COLORS.get(label)
            axis.semilogy(
                p, _positive([r["capacity_gap"] for r in rows]), "o-", color=color,
                label=f"{label}: to the capacity bound",
            )  # fmt: skip
            axis.semilogy(
                p, _positive([r["best_head_gap"] for r in rows]), "x--", color=color,
                label=f"{label}: to the best head",
            )  # fmt: skip
        for threshold in (0.05, 0.25):
            axis.axhline(threshold, color="0.6", lw=0.8, ls=":")
        names = {r["dataset_name"] for r in done if r["dataset"] == dataset}
        axis.set_title(", ".join(sorted(names)) or dataset, fontsize=9)
        axis.set_xlabel("drop rate p")
        axis.set_xticks(data["rates"])
    axes[0].set_ylabel("relative gap of the trained objective")
    axes[0].legend(fontsize=7)
    return figure


def render_sweep(data: dict[str, Any], dpi: int = 100) -> bytes:
    """The PNG bytes of the sweep's figure (:func:`sweep`)."""
    buffer = io.BytesIO()
    sweep(data).savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def render(name: str, data: dict[str, Any], dpi: int = 100) -> bytes:
    """The PNG bytes of figure ``name`` (a synthetic figure of :data:`.figures.FIGURES`, or
    ``"fig2"``) drawn from its JSON-able ``data``."""
    figure = fig2(data) if name == FIG2 else FIGURES[name].plot(data)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
