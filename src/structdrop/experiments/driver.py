"""Running the synthetic figures: skip the finished ones, write each figure's PNG and JSON
atomically, keep checkpoints while a figure runs and drop them once it is written.

A figure is done when its JSON exists, was made with the same settings and names every run's
mask law by identity; its leftover checkpoints, if any, are then removed. A figure of other
settings, or a file that is not a structdrop figure, is not overwritten without ``force``; one
written in a format without the laws' identities is recomputed. Timings go to
``timings.json``, never into a figure's data: the same seed gives the same bytes.

A run owns the figures it computes while it runs (:mod:`structdrop._locks`): a second run that
asks for one of them in the same folder refuses at once, naming the first. ``force`` resumes
the checkpoints of the same settings (a forced run that was interrupted resumes when it is run
again) and discards those that cannot be resumed (other settings, damaged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._checkpoint import CheckpointError
from .._files import remove_if_empty, remove_stale_temporaries_under
from .._locks import owning
from ..linear import DivergenceError
from . import _io, plots
from .config import Config
from .figures import FIGURES, check_figures, read_current
from .runs import single_thread

__all__ = [
    "check_outputs",
    "check_settings",
    "discard_checkpoints",
    "is_done",
    "run",
    "run_figure",
]


def is_done(out: Path, name: str, config: Config) -> bool:
    """A figure is done when its JSON exists, names every run's mask law by identity, and was
    made with the same settings (the whole :meth:`Config.identity`: a quick result never stands
    in for a full one, nor one of another seed, scale or drop rate)."""
    try:
        made = read_current(Path(out) / f"{name}.json", name)
    except _io.InputError:
        return False
    return made is not None and made["config"] == _io.normalized(config.identity())


def check_outputs(out: Path, names: Sequence[str], force: bool) -> None:
    """Refuse to overwrite a ``<figure>.json`` that is not a structdrop figure (a file of the
    user's that happens to have the name), unless ``force``. A structdrop figure whose runs do
    not name their laws by identity is ours: it is recomputed.

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


def check_settings(out: Path, names: Sequence[str], config: Config, force: bool) -> None:
    """Refuse to replace a finished figure made with other settings, unless ``force``: the
    results of another seed, scale or drop rate are not overwritten without a word.

    Raises:
        InputError: ``<out>/<figure>.json`` holds a figure of other settings.
    """
    if force:
        return
    wanted = _io.normalized(config.identity())
    for name in names:
        path = Path(out) / f"{name}.json"
        made = read_current(path, name)
        if made is None or made["config"] == wanted:
            continue
        changed = sorted(
            key
            for key in set(made["config"]) | set(wanted)
            if made["config"].get(key) != wanted.get(key)
        )
        raise _io.InputError(
            f"{path} holds results of other settings ({', '.join(changed)} differ); choose "
            "another --out, or replace them with --force"
        )


def run_figure(
    name: str, config: Config, out: Path, progress: bool = False, force: bool = False
) -> dict[str, Any]:
    """Compute one figure, write ``<out>/<name>.png`` and ``<out>/<name>.json`` (atomically, the
    JSON last: it marks the figure as done), and drop its checkpoints. The time it took goes to
    ``<out>/timings.json``, not into the figure's data (same seed, same bytes).

    A killed run keeps its checkpoints and resumes; a diverged one loses them (they are useless).
    With ``force``, checkpoints that cannot be resumed (of other settings, damaged) are
    discarded and the figure computed afresh, instead of raising CheckpointError.
    """
    out = Path(out)
    figure = FIGURES[name]
    folder = out / "checkpoints" / name
    start = time.perf_counter()
    try:
        with single_thread():
            try:
                result = figure.compute(config, folder, progress)
            except CheckpointError:
                if not force:
                    raise
                discard_checkpoints(out, name)
                result = figure.compute(config, folder, progress)
    except DivergenceError:
        discard_checkpoints(out, name)
        raise
    elapsed = time.perf_counter() - start
    data = {"figure": name, "title": figure.title, "config": config.identity(), **result}
    data = _io.to_jsonable(data)
    _io.write_bytes(out / f"{name}.png", plots.render(name, data))
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
        figures: figure names (see :data:`.figures.FIGURES`); empty or None for all.
        out: output folder.
        quick: shrink the iterations (tests, smoke runs).
        seed: the seed of the data and of every run.
        force: recompute figures whose JSON already exists and overwrite files that stand in
            the way; checkpoints of the same settings are resumed, others (damaged, foreign)
            discarded.
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
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with owning(out, names):
            remove_stale_temporaries_under(out)  # of runs killed outright (SIGKILL)
            return _run_owned(names, out, base, force, progress, report)
    except BaseException:
        if fresh:  # leave no empty folder behind
            remove_if_empty(out, existed=False)
        raise


def _run_owned(
    names: list[str],
    out: Path,
    config: Config,
    force: bool,
    progress: bool,
    report: Callable[[str, str, dict[str, Any] | None], None] | None,
) -> dict[str, str]:
    """:func:`run` once it owns the figures."""
    check_outputs(out, names, force)
    check_settings(out, names, config, force)
    status: dict[str, str] = {}
    for name in names:
        if not force and is_done(out, name, config):
            # a run killed after the JSON was written may have left them
            discard_checkpoints(out, name)
            status[name] = "skipped"
            if report is not None:
                report(name, "skipped", None)
            continue
        data = run_figure(name, config, out, progress=progress, force=force)
        status[name] = "done"
        if report is not None:
            report(name, "done", data)
    return status
