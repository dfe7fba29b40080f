"""Fig. 2 beyond the paper: every law with a bound, every rate, every data set at hand.

The sweep is a grid of ordinary Fig. 2 runs, its cells: the laws with a closed-form bound
(Dropout, grid DropBlock with r = 2 and r = 5) x the drop rates ``p`` in {0.1, 0.3, 0.5, 0.7}
x the data sets (scikit-learn's digits, the MNIST subset, Fashion-MNIST when a copy is at hand).
Each cell is a run of ``structdrop reproduce deep`` with its own result name
(``sweep-<dataset>-<law>-p<p>``: its JSON, figure and checkpoint in ``--out``), so cells run one
after the other in one process (:func:`run_sweep`), or as separate processes or cluster jobs,
``torchrun`` included, into one ``--out`` (:func:`cell_commands` lists their command lines);
each is resumable and owns its name while it runs, like every run. :func:`collect` reads what is
done, writes ``<out>/sweep.json`` (one row a cell: the gaps of the trained network to the
capacity bound of Prop. 3.3 / Thm 2.7 and to the best head for its features) and draws
``<out>/sweep.png``; ``REPORT.md`` gets a table and a verdict: where the network reaches the
theory, and where it does not.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import _validation as check
from .. import _io, plots
from .config import DeepConfig
from .data import GENERATED_DATASETS, locate_files
from .experiment import run_deep
from .parallel import processes

__all__ = [
    "SWEEP_DATASETS",
    "SWEEP_LAWS",
    "SWEEP_RATES",
    "SWEEP_SETTINGS",
    "Cell",
    "cell_commands",
    "cells",
    "collect",
    "run_sweep",
]

#: The laws of the sweep: (short name in ``DeepConfig.scheme``, block size).
SWEEP_LAWS: tuple[tuple[str, int], ...] = (("bernoulli", 1), ("grid", 2), ("grid", 5))
#: The drop rates of the sweep.
SWEEP_RATES: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
#: The data sets of the sweep, those at hand (:func:`available`) only.
SWEEP_DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")
#: The settings that the sweep sets in each cell (the others are the base configuration's).
SWEEP_SETTINGS: tuple[str, ...] = ("dataset", "scheme", "block_size", "p")
#: The experiment's name in ``sweep.json``.
SWEEP_EXPERIMENT = "fig2-sweep"


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: its configuration and its result name."""

    config: DeepConfig
    name: str

    @property
    def law(self) -> str:
        """``dropout`` or ``grid<r>``."""
        return law_label(self.config.scheme, self.config.block_size)


def law_label(scheme: str, block_size: int) -> str:
    """How the sweep names a law: ``dropout``, or the short name and the block size
    (``grid5``)."""
    return "dropout" if scheme == "bernoulli" else f"{scheme}{block_size}"


def available(dataset: str, base: DeepConfig) -> bool:
    """Whether the files of ``dataset`` are at hand (torchvision's under ``data_dir``, or an
    installed copy); the data sets generated from the seed always are."""
    return dataset in GENERATED_DATASETS or locate_files(dataset, base.data_dir) is not None


def cells(base: DeepConfig, datasets: tuple[str, ...] | None = None) -> list[Cell]:
    """The grid's cells on ``base`` (the data sets at hand among ``datasets``, by default
    :data:`SWEEP_DATASETS`): dataset, then law, then rate."""
    chosen = [name for name in (datasets or SWEEP_DATASETS) if available(name, base)]
    grid = []
    for dataset in chosen:
        for scheme, block in SWEEP_LAWS:
            for p in SWEEP_RATES:
                config = dataclasses.replace(
                    base, dataset=dataset, scheme=scheme, block_size=block, p=p
                )
                label = law_label(scheme, block)
                grid.append(Cell(config, f"sweep-{dataset}-{label}-p{p}"))
    return grid


def cell_commands(grid: list[Cell], out: Path) -> list[str]:
    """The command line that runs each cell on its own (every setting that is not the
    default spelled out), for separate processes or cluster jobs into one ``--out``."""
    defaults = DeepConfig()
    commands = []
    for cell in grid:
        words = ["structdrop", "reproduce", "deep"]
        for setting in dataclasses.fields(DeepConfig):
            value = getattr(cell.config, setting.name)
            always = setting.name in (*SWEEP_SETTINGS, "image_size")
            if not always and value == getattr(defaults, setting.name):
                continue
            flag = "--" + setting.name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else f"--no-{flag[2:]}")
            else:
                words += [flag, "0" if value is None else str(value)]
        words += ["--name", cell.name, "--out", str(out)]
        commands.append(shlex.join(words))
    return commands


def _done(out: Path, cell: Cell) -> dict[str, Any] | None:
    """The cell's results in ``out`` when it is finished with its configuration, else None
    (another file of that name is refused by the cell's own run, not here)."""
    data = _io.read_experiment(out / f"{cell.name}.json", "fig2")
    if data is None:
        return None
    return data if data.get("config") == _io.normalized(cell.config.identity()) else None


def _row(cell: Cell, data: dict[str, Any] | None) -> dict[str, Any]:
    """One cell of ``sweep.json``."""
    row: dict[str, Any] = {
        "name": cell.name,
        "dataset": cell.config.dataset,
        "law": cell.law,
        "p": cell.config.p,
        "done": data is not None,
    }
    if data is None:
        return row
    best = data.get("best_head") or {}
    return {
        **row,
        "dataset_name": data["dataset"]["name"],
        "scheme": data["scheme"],
        "objective": data["final"]["objective"],
        "capacity_bound": None if data["theory"] is None else data["theory"]["value"],
        "capacity_gap": data["gap"],
        "best_head_objective": best.get("objective"),
        "best_head_gap": best.get("gap"),
        "singular_value_error": data["singular_value_error"],
    }


def collect(base: DeepConfig, out: Path, datasets: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read the cells of ``base`` that are done in ``out``; write ``<out>/sweep.json`` and
    ``<out>/sweep.png`` (atomically) and return the data.

    The base configuration is recorded without the settings that the sweep sets in each cell.
    """
    out = Path(out)
    grid = cells(base, datasets)
    identity = {key: value for key, value in base.identity().items() if key not in SWEEP_SETTINGS}
    data = {
        "experiment": SWEEP_EXPERIMENT,
        "config": identity,
        "laws": [law_label(scheme, block) for scheme, block in SWEEP_LAWS],
        "rates": list(SWEEP_RATES),
        "cells": [_row(cell, _done(out, cell)) for cell in grid],
    }
    data = _io.to_jsonable(data)
    _io.write_bytes(out / "sweep.png", plots.render_sweep(data))
    _io.write_json(out / "sweep.json", data)
    return data


def check_base(options: dict[str, Any]) -> None:
    """Refuse the options that the sweep sets in each cell (one line naming them): those of
    ``options`` (the command line's) that are given and not the default."""
    defaults = {setting.name: setting.default for setting in dataclasses.fields(DeepConfig)}
    given = sorted(
        name
        for name in SWEEP_SETTINGS
        if options.get(name) is not None and options[name] != defaults[name]
    )
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(
            f"--sweep sets {flags} in each cell itself (laws x rates x data sets); leave "
            "them out, or run one cell without --sweep"
        )


def run_sweep(
    base: DeepConfig,
    out: Path,
    *,
    force: bool = False,
    progress: bool | None = None,
    checkpoint_every: float = 0.0,
    datasets: tuple[str, ...] | None = None,
    report: Any = None,
) -> dict[str, Any]:
    """Run every cell of ``base`` (each an ordinary :func:`.experiment.run_deep`, skipped
    when done, resumed when interrupted), then :func:`collect` them.

    Args:
        base: the settings every cell shares (its data set, law and rate are the cell's).
        out: the results folder.
        force: recompute the cells whose results exist.
        progress: progress bars (None: on an interactive terminal only).
        checkpoint_every: seconds between a cell's checkpoints.
        datasets: the data sets (default: those of :data:`SWEEP_DATASETS` at hand).
        report: called as ``report(cell, data)`` after each cell.

    Returns:
        The data of ``sweep.json`` (process 0 writes it; every process returns it).
    """
    check.check_nonnegative(checkpoint_every, "checkpoint_every")
    for cell in cells(base, datasets):
        data = run_deep(
            cell.config,
            out,
            force=force,
            progress=progress,
            checkpoint_every=checkpoint_every,
            name=cell.name,
        )
        if report is not None:
            report(cell, data)
    procs = processes(base)
    if procs.main:
        summary = collect(base, out, datasets)
    procs.barrier()
    return summary if procs.main else _io.read_json(Path(out) / "sweep.json")
