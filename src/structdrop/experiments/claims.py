"""What ``REPORT.md`` says of each synthetic figure: a verdict on each claim it tests, and its key
numbers.

Verdicts follow docs/theory.md: "holds", "holds after correction" (true once the paper's equation is
corrected as in docs/theory.md) or "fails"; the measured numbers that support each one are read from
the figures' JSON data, so they are the ones in the figures. A run's mask law is read back from
its identity (``Scheme.from_dict(run["scheme"])``). :data:`.figures.FIGURES` says which figure
tests which claim.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ksupport import ksupport_norm
from ..schemes import GridBlock, Scheme
from .sliding import window_drop_rate

Data = dict[str, Any]
Figures = dict[str, Data]


def percent(value: float | None) -> str:
    """A relative difference as a signed percentage (``n/a`` for None)."""
    return "n/a" if value is None else f"{100 * value:+.2f}%"


def number(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (``n/a`` for None)."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def law(run: Data) -> Scheme:
    """The mask law of a run, read back from its identity."""
    return Scheme.from_dict(run["scheme"])


def _converged(gap: float, quick: bool) -> str:
    if gap < 1e-2:
        return "holds after correction"
    return "not converged (quick run)" if quick else "fails to converge"


# ------------------------------------------------------------------------------------------------
# fig1: Lemma 2.1, eq. 3, Thm 2.7 (with fig5 where it has run), and Thm 2.3 (no data needed)
# ------------------------------------------------------------------------------------------------
def lemma_21(figures: Figures) -> tuple[str, str]:
    """Lemma 2.1: the sampled objective (3) agrees with the deterministic one (5)."""
    run = figures["fig1"]["run"]
    mc = run["monte_carlo"]
    text = (
        f"fig1: Monte Carlo of (3) at the final weights, {mc['samples']} masks: "
        f"{mc['mean']:.6g} +- {mc['stderr']:.2g} vs (5) {mc['expected']:.6g} "
        f"(z = {mc['z']:+.2f}); along training, stochastic running mean vs (5) over the last "
        f"decade: {percent(run['late_relative_difference'])}"
    )
    if "fig5" in figures:
        zs = [r["monte_carlo"]["z"] for r in figures["fig5"]["runs"]]
        text += f"; fig5 (all p): max abs z = {max(abs(z) for z in zs):.2f}"
    return text, "holds" if abs(mc["z"]) < 4 else "fails"


def eq3_kron(figures: Figures) -> tuple[str, str]:
    """Eq. 3's ``kron I_(d/r)`` is not a mask on d units; ``kron I_r`` is (docs/theory.md)."""
    run = figures["fig1"]["run"]
    d, r = figures["fig1"]["config"]["width"], law(run).block_size
    k = d // r
    text = (
        f"diag(w) kron I_(d/r) is {k * k} x {k * k} for d = {d}, r = {r}: not a mask on d = {d} "
        f"units; with kron I_r (blocks of r units) sampled and exact objectives agree "
        f"(fig1: z = {run['monte_carlo']['z']:+.2f})"
    )
    return text, "holds after correction"


def thm_27(figures: Figures) -> tuple[str, str]:
    """Thm 2.7 (corrected): Algorithm 1 reaches the closed-form global minimum F*."""
    run = figures["fig1"]["run"]
    quick = figures["fig1"]["config"]["quick"]
    text = (
        f"fig1 ({law(run)}, {run['config']['iterations']:,} steps): final relative gap to F* "
        f"{number(run['final_gap'])} (rank(A*) = {run['optimum']['rank']}, "
        f"rho* = {run['optimum']['rho']})"
    )
    worst = run["final_gap"]
    if "fig5" in figures:
        gaps = figures["fig5"]["final_gaps"]
        text += "; fig5: " + ", ".join(f"p = {p}: {number(g)}" for p, g in gaps.items())
        worst = max(worst, *gaps.values())
    text += ". F* from the corrected Thm 2.7 (row-space projection, rho in {1..r}; docs/theory.md)"
    return text, _converged(worst, quick)


def thm_23(figures: Figures) -> tuple[str, str]:
    """Thm 2.3's rule for rho*: neither the max nor the min of (11) over rho (docs/theory.md)."""

    def candidates(w: np.ndarray, k: int) -> list[float]:
        w = np.sort(np.abs(w))[::-1]
        return [
            float(np.sum(w[: rho - 1] ** 2) + np.sum(w[rho - 1 :]) ** 2 / (k - rho + 1))
            for rho in range(1, k + 1)
        ]

    first, second = np.ones(3), np.array([3.0, 1.0, 1.0])
    true_first = float(ksupport_norm(first, 2)) ** 2
    true_second = float(ksupport_norm(second, 2)) ** 2
    text = (
        f"w = (1,1,1), k = 2: ||w||_(2)^2 = {true_first:.4g}, the max rule gives "
        f"{max(candidates(first, 2)):.4g}; w = (3,1,1), k = 2: {true_second:.4g}, the min rule "
        f"gives {min(candidates(second, 2)):.4g} (Argyriou et al.'s rule is right)"
    )
    return text, "fails"


# ------------------------------------------------------------------------------------------------
# fig3 (with fig6 where it has run): Thm 4.1 and Dropout vs DropConnect training
# ------------------------------------------------------------------------------------------------
def _dataset(figure: Data, name: str) -> Data:
    return next(run for run in figure["runs"] if run["dataset"] == name)


def _thm_41_verdict(figures: Figures) -> str:
    correlated = _dataset(figures["fig3"], "correlated")
    return "fails" if abs(correlated["paper_vs_corrected_final"]) > 0.05 else "holds"


def thm_41(figures: Figures) -> tuple[str, str]:
    """Thm 4.1 as printed against the exact DropConnect expectation and Monte Carlo."""
    parts = []
    for name in ("gaussian", "correlated"):
        run = _dataset(figures["fig3"], name)
        mc = run["monte_carlo"]
        parts.append(
            f"{name} X: paper's formula vs exact expectation "
            f"{percent(run['paper_vs_corrected_final'])} at the end "
            f"(max {percent(run['paper_vs_corrected_max'])} along training); Monte Carlo "
            f"z = {mc['z']:+.1f} against the corrected form, {mc['z_paper']:+.1f} against the "
            "paper's"
        )
    return "; ".join(parts), _thm_41_verdict(figures)


def dropout_dropconnect(figures: Figures) -> tuple[str, str]:
    """Fig. 3 bottom: Dropout and DropConnect training reach different objectives."""
    parts = []
    for name in ("gaussian", "correlated"):
        run = _dataset(figures["fig3"], name)
        parts.append(
            f"{name} X: Dropout vs DropConnect objective on the same iterates "
            f"{percent(run['paper_vs_corrected_final'])}, Dropout training vs DropConnect "
            f"training {percent(run['dropout_vs_dropconnect_final'])} at the end"
        )
    if "fig6" in figures:
        worst = max(abs(r["paper_vs_corrected_final"]) for r in figures["fig6"]["runs"])
        parts.append(f"fig6 (other p): up to {percent(worst)} on the same iterates")
    return "; ".join(parts), _thm_41_verdict(figures)


# ------------------------------------------------------------------------------------------------
# fig4, head, gap
# ------------------------------------------------------------------------------------------------
def sec_53(figures: Figures) -> tuple[str, str]:
    """Sec. 5.3: the paper's theta' gives the intended rate only at p = 0.5 (docs/theory.md)."""
    data = figures["fig4"]
    parts = []
    for p, relative in data["relative_to_grid"].items():
        runs = {r["variant"]: r for r in data["runs"] if str(r["p"]) == p}
        parts.append(
            f"p = {p}: interior drop rate with the paper's theta' "
            f"{runs['paper']['interior_drop_rate']:.3f}, exact gamma "
            f"{runs['exact']['interior_drop_rate']:.3f}, same theta "
            f"{runs['same_theta']['interior_drop_rate']:.3f}; final objective vs grid: paper's "
            f"{percent(relative['paper'])}, exact {percent(relative['exact'])}, same theta "
            f"{percent(relative['same_theta'])}"
        )
    text = (
        "theta' gives the intended interior drop rate p only at p = 0.5 (there it is the exact "
        "gamma); the sliding objective still differs from the grid one (its characteristic "
        "matrix is banded, docs/theory.md). " + "; ".join(parts)
    )
    return text, "holds only at p = 0.5"


def prop_33(figures: Figures) -> tuple[str, str]:
    """Prop. 3.3 needs its missing 1/d (docs/theory.md): Dropout trained at width d against both."""
    prop = figures["head"]["prop33"]
    text = (
        f"{law(prop)} trained at width d = {prop['width']} (L-BFGS): "
        f"{percent(prop['trained_vs_corrected'])} from the optimum with strength "
        f"(1-theta)/(theta d), {percent(prop['trained_vs_printed'])} from eq. 18 as printed"
    )
    holds = abs(prop["trained_vs_corrected"]) < 1e-4 < abs(prop["trained_vs_printed"])
    quick = figures["head"]["config"]["quick"]
    return text, "holds after correction" if holds else _converged(1.0, quick)


def dominant_head(figures: Figures) -> tuple[str, str]:
    """With a dominant head, GridBlock's optimum (rho* > 1) is not Dropout's (docs/theory.md)."""
    data = figures["head"]
    parts = []
    for run in data["runs"]:
        parts.append(
            f"r = {law(run).block_size}: rho* = {run['rho']}, optimum differs from Dropout's by "
            f"{percent(run['differs_from_dropout'])} (singular values), trained vs predicted max "
            f"error {number(run['max_singular_value_error'])}, gap {number(run['gap'])}"
        )
    worst = max(run["gap"] for run in data["runs"])
    quick = data["config"]["quick"]
    return "; ".join(parts), "holds" if worst < 1e-4 else _converged(1.0, quick)


def tightness(figures: Figures) -> tuple[str, str]:
    """Thm 2.7's F* is reached at a fixed width only when ``d >= rank(A*)`` (docs/theory.md)."""
    data = figures["gap"]
    text = f"rank(A*) = {data['rank']}, beta = {data['beta']:.3g} held fixed (eq. 7): " + ", ".join(
        f"d = {r['width']}: gap {number(r['gap'])}" for r in data["runs"]
    )
    return text, "holds only when d >= rank(A*)"


# ------------------------------------------------------------------------------------------------
# Key numbers of each figure, as Markdown bullets
# ------------------------------------------------------------------------------------------------
def fig1_summary(data: Data) -> list[str]:
    """fig1: step size, schedule, F* and the final gap."""
    run = data["run"]
    return [
        f"- lr {run['lr']:.3g}, lr_decay {run['config']['lr_decay']:g}, "
        f"{run['config']['iterations']:,} steps; F* = {run['optimum']['value']:.6g}",
        f"- final relative gap {number(run['final_gap'])}",
    ]


def fig5_summary(data: Data) -> list[str]:
    """fig5: per drop rate, step size, rank(A*) and the final gap."""
    return [
        f"- p = {r['p']}: lr {r['lr']:.3g}, rank(A*) {r['optimum']['rank']}, final gap "
        f"{number(r['final_gap'])}"
        for r in data["runs"]
    ]


def dropconnect_summary(data: Data) -> list[str]:
    """fig3, fig6: per data set and drop rate, Thm 4.1 and Lemma 2.1's measures."""
    return [
        f"- {r['dataset']} X, p = {r['p']}: paper/exact - 1 = "
        f"{percent(r['paper_vs_corrected_final'])}, stochastic vs exact "
        f"{percent(r['late_relative_difference']['stochastic_vs_corrected'])}, stochastic vs "
        f"paper {percent(r['late_relative_difference']['stochastic_vs_paper'])}, Dropout/"
        f"DropConnect training - 1 = {percent(r['dropout_vs_dropconnect_final'])}"
        for r in data["runs"]
    ]


def fig4_summary(data: Data) -> list[str]:
    """fig4: per law, gamma, interior drop rate, step size and final objective."""
    lines = []
    for r in data["runs"]:
        scheme = law(r)
        lines.append(
            f"- p = {r['p']}, {r['variant']}: gamma {number(window_drop_rate(scheme))}, "
            f"interior drop rate {r['interior_drop_rate']:.3f}, lr {r['lr']:.3g}, final (EMA) "
            f"{r['final']:.6g}"
        )
    return lines


def head_summary(data: Data) -> list[str]:
    """head: per block size, beta, rho*, the gap and the predicted singular values."""
    return [
        f"- r = {law(r).block_size}: beta {r['beta']:.3g}, rho* {r['rho']}, gap "
        f"{number(r['gap'])}, predicted {', '.join(f'{v:.4g}' for v in r['predicted'][:4])}, ..."
        for r in data["runs"]
    ]


def _grid_law(run: Data) -> GridBlock:
    """The law of a gap run: GridBlock, at the drop rate of its width (eq. 7)."""
    scheme = law(run)
    assert isinstance(scheme, GridBlock)
    return scheme


def gap_summary(data: Data) -> list[str]:
    """gap: per width, the law (eq. 7), F*, the trained value and the gap."""
    return [
        f"- d = {r['width']} (p = {_grid_law(r).p:.3f}): F* {r['value']:.6g}, trained "
        f"{r['trained']:.6g}, gap {number(r['gap'])}"
        for r in data["runs"]
    ]
