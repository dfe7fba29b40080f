"""What each synthetic figure is, in one table: :data:`FIGURES`.

An entry names the figure, titles it, says which function computes its data (in
:mod:`.synthetic`) and which draws it (in :mod:`.plots`), lists the paper's claims it tests and
the key numbers ``REPORT.md`` shows, and the one-line headline printed when it is done. The run
order, the figures the command line accepts, the renderers, the report's claims and summaries
all derive from this table.

The table is read by the report, which must load neither the compiled training loops (numba) nor
torch nor matplotlib: the functions that compute and draw a figure are therefore
:class:`Deferred`, imported when first called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schemes import Scheme
from . import _io, claims

__all__ = [
    "FIGURES",
    "Claim",
    "Deferred",
    "Figure",
    "check_figures",
    "headline",
    "read_current",
    "stores_laws",
]

Data = dict[str, Any]


@dataclass(frozen=True)
class Deferred:
    """The function ``name`` of the module ``module`` of this package, imported when called."""

    module: str
    name: str

    def resolve(self) -> Callable[..., Any]:
        """The function itself (importing its module)."""
        return getattr(importlib.import_module(f".{self.module}", __package__), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Claim:
    """A statement of the paper and how a figure's data test it.

    Attributes:
        where: the equation, theorem or section that makes the claim.
        says: what the paper says.
        measure: ``measure(figures) -> (what we measured, verdict)``, given every figure's data
            (by name) that is available.
        needs_data: whether the claim needs the data of the figure that lists it (Thm 2.3's
            counterexample needs none).
    """

    where: str
    says: str
    measure: Callable[[dict[str, Data]], tuple[str, str]]
    needs_data: bool = True


def _listed_runs(data: Data) -> list[Data]:
    return list(data["runs"])


def _single_run(data: Data) -> list[Data]:
    return [data["run"]]


def _runs_and_baselines(data: Data) -> list[Data]:
    return [*data["runs"], *(run["dropout"] for run in data["runs"])]


def _runs_and_prop33(data: Data) -> list[Data]:
    return [*data["runs"], data["prop33"]]


@dataclass(frozen=True)
class Figure:
    """One figure of the synthetic reproduction.

    Attributes:
        name: its name on the command line and in file names (``<name>.json``, ``<name>.png``).
        title: its heading in the figure data and in ``REPORT.md``.
        compute: ``compute(config, folder, progress) -> data``: the figure's JSON-able data,
            checkpointing its runs under ``folder``.
        plot: ``plot(data) -> matplotlib.figure.Figure``.
        summary: ``summary(data) -> lines``: the key numbers, as Markdown bullets.
        claims: the paper's claims the figure tests, in the report's order.
        headline: ``headline(data) -> text`` printed after "done", or None.
        runs: ``runs(data) -> dicts``: every run in the data; each names its mask law by
            ``scheme.to_dict()`` under ``"scheme"``.
    """

    name: str
    title: str
    compute: Callable[..., Data]
    plot: Callable[[Data], Any]
    summary: Callable[[Data], list[str]]
    claims: tuple[Claim, ...] = ()
    headline: Callable[[Data], str] | None = None
    runs: Callable[[Data], list[Data]] = field(default=_listed_runs)


def _final_gap(data: Data) -> str:
    return f" (final gap {data['final_gap']:.2e})"


def _final_gaps(data: Data) -> str:
    return " (final gaps " + ", ".join(f"{g:.2e}" for g in data["final_gaps"].values()) + ")"


def _width_gap(data: Data) -> str:
    return f" (gap at width {data['runs'][0]['width']}: {data['width_gap']:.2e})"


def _figure(name: str, title: str, summary: Callable[[Data], list[str]], **fields: Any) -> Figure:
    """The figure ``name``, computed by ``synthetic.<name>`` and drawn by ``plots.<name>`` unless
    ``fields`` say otherwise."""
    fields.setdefault("compute", Deferred("synthetic", name))
    fields.setdefault("plot", Deferred("plots", name))
    return Figure(name=name, title=title, summary=summary, **fields)


#: Every synthetic figure by its name (``fig1``, ...), in the order they are run and reported.
FIGURES: dict[str, Figure] = {
    figure.name: figure
    for figure in (
        _figure(
            "fig1",
            "Fig. 1: grid DropBlock, stochastic vs deterministic objective, gap to F*",
            claims.fig1_summary,
            runs=_single_run,
            headline=_final_gap,
            claims=(
                Claim(
                    "Lemma 2.1, eq. 4-5",
                    "stochastic DropBlock objective (3) = deterministic (5)",
                    claims.lemma_21,
                ),
                Claim("Eq. 3", "the mask is diag(w) kron I_(d/r)", claims.eq3_kron),
                Claim("Thm 2.7", "SGD converges to the closed-form global minimum", claims.thm_27),
                Claim("Thm 2.3", "rho* maximizes (11)", claims.thm_23, needs_data=False),
            ),
        ),
        _figure(
            "fig3",
            "Fig. 3: DropConnect vs its deterministic forms; Dropout vs DropConnect",
            claims.dropconnect_summary,
            plot=Deferred("plots", "dropconnect"),
            runs=_runs_and_baselines,
            claims=(
                Claim(
                    "Thm 4.1 / Cor. 4.2",
                    "DropConnect on V has Dropout's regularizer",
                    claims.thm_41,
                ),
                Claim(
                    "Fig. 3 bottom",
                    "Dropout training = DropConnect training",
                    claims.dropout_dropconnect,
                ),
            ),
        ),
        _figure(
            "fig4",
            "Fig. 4: grid vs sliding DropBlock (Sec. 5.3)",
            claims.fig4_summary,
            claims=(
                Claim(
                    "Sec. 5.3",
                    "theta' makes sliding DropBlock match the grid form",
                    claims.sec_53,
                ),
            ),
        ),
        _figure(
            "fig5",
            "Fig. 5: fig1 for p in {0.1, 0.3, 0.5, 0.7, 0.9}",
            claims.fig5_summary,
            headline=_final_gaps,
        ),
        _figure(
            "fig6",
            "Fig. 6: fig3 for other drop rates",
            claims.dropconnect_summary,
            plot=Deferred("plots", "dropconnect"),
            runs=_runs_and_baselines,
        ),
        _figure(
            "head",
            "Dominant head: DropBlock's optimum differs from Dropout's",
            claims.head_summary,
            runs=_runs_and_prop33,
            claims=(
                Claim(
                    "Prop. 3.3, eq. 18",
                    "Dropout = min ||Y-A||^2 + (1-theta)/theta ||A||_*^2",
                    claims.prop_33,
                ),
                Claim(
                    "Beyond the paper",
                    "dominant head: DropBlock's optimum is not Dropout's",
                    claims.dominant_head,
                ),
            ),
        ),
        _figure(
            "gap",
            "Fixed-width gap when rank(A*) > d",
            claims.gap_summary,
            headline=_width_gap,
            claims=(
                Claim(
                    "Thm 2.7 (tightness)", "F* is reached at the network's width", claims.tightness
                ),
            ),
        ),
    )
}


def check_figures(names: Sequence[str] | None) -> list[str]:
    """The figures to run, in the canonical order (all when ``names`` is empty or None).

    Raises:
        InputError: a name that is not in :data:`FIGURES`.
    """
    if not names:
        return list(FIGURES)
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        raise _io.InputError(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
    return [name for name in FIGURES if name in set(names)]


def headline(name: str, data: Data) -> str:
    """What to print after "<name>: done in ... s" (e.g. `` (final gap 1.23e-03)``), or ``""``.

    Raises:
        InputError: ``name`` is not a figure of :data:`FIGURES`.
    """
    (name,) = check_figures([name])
    line = FIGURES[name].headline
    return "" if line is None else line(data)


def stores_laws(name: str, data: Data) -> bool:
    """Whether every run in the data of figure ``name`` names its mask law by identity
    (``"scheme"``, a :meth:`Scheme.to_dict` that :meth:`Scheme.from_dict` reads back)."""
    try:
        runs = FIGURES[name].runs(data)
        for run in runs:
            Scheme.from_dict(run["scheme"])
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return bool(runs)


def read_current(path: str | Path, name: str) -> Data | None:
    """The data of figure ``name`` stored at ``path``, or None when there is none or when it was
    written in a format without the mask laws' identities (it is then recomputed, not misread).

    Raises:
        InputError: the file exists but is not a structdrop figure of that name.
    """
    data = _io.read_figure(path, name)
    return data if data is not None and stores_laws(name, data) else None
