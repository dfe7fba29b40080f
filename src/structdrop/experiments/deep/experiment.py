"""The Fig. 2 experiment: train, compare with the theory, write the figure and its data.

``<out>/fig2.json`` holds results only (the same bytes for the same seed); how long the run
took, and where, goes to ``<out>/timings.json``.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._files import remove_stale_temporaries, remove_stale_temporaries_under
from .. import _io, plots
from .config import (
    CHECKPOINT_EVERY,
    DeepConfig,
    check_name,
    checkpoint_path,
    make_scheme,
    results_name,
)
from .data import data_source
from .data import download as download_dataset
from .parallel import Processes, owning, processes
from .recipe import TrainResult, train

__all__ = ["checkpoint_path", "results", "results_name", "run_deep", "timing"]


def _relative_error(trained: list[float], predicted: list[float]) -> float:
    """``max_i |s_i - x_i| / x_1``: how far the trained spectrum is from the prediction."""
    s, x = np.asarray(trained), np.asarray(predicted)
    k = min(s.size, x.size)
    return float(np.max(np.abs(s[:k] - x[:k])) / max(float(x[0]), 1e-300))


def results(config: DeepConfig, result: TrainResult, name: str | None = None) -> dict[str, Any]:
    """The figure's data: results only, the same bytes for the same seed (no timings).

    From the report of the trained head (:func:`structdrop.head_report`): ``final`` (the
    objective, its two terms, the trained spectrum and block norms), ``theory`` (the capacity
    bound of Prop. 3.3 / Thm 2.7 and its predicted spectrum; None for laws without a closed
    form), ``gap`` and ``excess`` to it, and ``best_head`` (the least objective over heads for
    the trained features, and the gap to it).
    """
    scheme = make_scheme(config)
    data, report = result.data, result.report
    final: dict[str, Any] = {
        "objective": report.objective,
        "fit": report.fit,
        "penalty": report.regularizer,
        "singular_values": list(report.singular_values),
        "block_norms": None if report.block_norms is None else list(report.block_norms),
    }
    theory: dict[str, Any] | None = None
    if report.capacity_bound is not None:
        assert report.predicted_singular_values is not None  # with the bound
        theory = {
            "value": report.capacity_bound,
            "singular_values": list(report.predicted_singular_values),
            "target_singular_values": list(report.target_singular_values),
            "beta": report.beta,
            "block_size": report.block_size,
        }
    output: dict[str, Any] = {
        "experiment": "fig2",
        "figure": f"{name or results_name(config)}.png",
        "config": config.identity(),
        "data_source": data.source,  # of what the run read, when it read it
        "dataset": {
            "name": data.name,
            "train_size": len(data),
            "classes": data.classes,
            "image_size": config.image_size,
            "class_counts": torch.bincount(data.labels, minlength=data.classes).tolist(),
        },
        "scheme": scheme.to_dict(),
        "history": result.history,
        "final": final,
        "theory": theory,
        "gap": None,
        "singular_value_error": None,
        "balance": report.balance,
        "best_head": {
            "objective": report.best_objective,
            "excess": report.excess_over_best_head,
            "gap": report.gap_to_best_head,
        },
    }
    if theory is not None:
        # relative to the minimum; a minimum of 0 (p = 0: nothing to regularize) has no
        # relative gap, only the excess itself
        output["excess"] = report.excess_over_capacity_bound
        output["gap"] = report.capacity_gap
        assert report.predicted_singular_values is not None  # with the bound
        output["singular_value_error"] = _relative_error(
            list(report.singular_values), list(report.predicted_singular_values)
        )
    return output


def timing(config: DeepConfig, result: TrainResult, procs: Processes) -> dict[str, Any]:
    """How long the run took, and where: kept in ``timings.json``, out of the figure's data."""
    seconds = float(sum(result.epoch_seconds))
    images = len(result.data) * config.epochs
    device = str(procs.device)
    if procs.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(procs.device)})"
    return {
        "train_seconds": seconds,
        "images_per_second": images / seconds if seconds > 0 else None,
        "device": device,
        "processes": procs.world,
        "amp": bool(config.amp and procs.device.type == "cuda"),
        "resumed_from_epoch": result.resumed_from_epoch,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


def run_deep(
    config: DeepConfig,
    out: Path,
    force: bool = False,
    progress: bool | None = True,
    download: bool = False,
    checkpoint_every: float = CHECKPOINT_EVERY,
    name: str | None = None,
) -> dict[str, Any]:
    """Run the Fig. 2 experiment and write ``<out>/fig2.png`` and ``<out>/fig2.json``.

    Other data sets than ``digits`` write ``fig2_<dataset>.*``; ``name`` names the results
    otherwise (``<out>/<name>.json``: the cells of a sweep). The run owns its result name
    in ``out`` while it runs: a second run of the same name there refuses at once
    (:class:`structdrop._locks.ResultBusyError`), whatever its settings. A finished run with the
    same configuration and data (:func:`.data.data_source`) is reused unless ``force`` (and
    its leftover checkpoint removed); one of other settings or data raises InputError, before
    any work, unless ``force``. An interrupted run resumes from
    ``<out>/checkpoints/fig2*.pt`` (deleted once the results are written), with ``force`` too:
    ``force`` discards a checkpoint only when it is not this run's. Under ``torch.distributed``
    process 0 writes the files and every process returns the data.

    Args:
        config: the run (see :class:`DeepConfig`).
        out: results folder.
        force: recompute even if results exist; replace results of other settings or data;
            discard a checkpoint that is not this run's.
        progress: show a progress bar (None: only on an interactive terminal).
        download: first fetch the data set into ``config.data_dir`` through torchvision
            (process 0; see :func:`~structdrop.experiments.deep.data.download`).
        checkpoint_every: seconds of training between checkpoints (0: every epoch).
        name: the results' name (default :func:`.config.results_name`).

    Returns:
        The JSON data (see :func:`structdrop.experiments.report.deep_section`).
    """
    out = Path(out)
    name = results_name(config) if name is None else check_name(name)
    procs = processes(config)
    out.mkdir(parents=True, exist_ok=True)
    with owning(out, name, procs):
        if procs.main:
            remove_stale_temporaries_under(out)  # of runs killed outright (SIGKILL)
        return _run_owned(config, out, name, procs, force, progress, download, checkpoint_every)


def _run_owned(
    config: DeepConfig,
    out: Path,
    name: str,
    procs: Processes,
    force: bool,
    progress: bool | None,
    download: bool,
    checkpoint_every: float,
) -> dict[str, Any]:
    """:func:`run_deep` once the run owns its result name."""
    json_path, figure_path = out / f"{name}.json", out / f"{name}.png"
    checkpoint = checkpoint_path(config, out, name)
    finished = None if force else _finished_results(json_path)
    wanted = _io.normalized(config.identity())
    if finished is not None and finished.get("config") != wanted:
        found = finished.get("config")
        made = found if isinstance(found, dict) else {}
        changed = sorted(key for key in {*made, *wanted} if made.get(key) != wanted.get(key))
        _refuse(json_path, f"other settings ({', '.join(changed)} differ)")
    if download:
        if procs.main:
            download_dataset(config.dataset, config.data_dir)
        procs.barrier()
    if finished is not None:
        if finished.get("data_source") != _io.normalized(data_source(config)):
            _refuse(json_path, "other data (another source or other files of the data set)")
        if procs.main:
            if not figure_path.exists():
                _io.write_bytes(figure_path, plots.render("fig2", finished, dpi=120))
            _discard_checkpoint(checkpoint)  # a run killed after its results were written
        procs.barrier()
        return finished
    result = train(
        config,
        checkpoint=checkpoint,
        progress=progress,
        checkpoint_every=checkpoint_every,
        discard_foreign=force,
    )
    data = _io.to_jsonable(results(config, result, name))
    if procs.main:
        _io.write_bytes(figure_path, plots.render("fig2", data, dpi=120))
        _io.write_json(json_path, data)  # last but the timings: it marks the run as finished
        _io.record_timing(out, name, timing(config, result, procs))
        _discard_checkpoint(checkpoint)
    procs.barrier()
    return data


def _discard_checkpoint(checkpoint: Path) -> None:
    """Remove the checkpoint (and its temporaries, and the folder once empty)."""
    checkpoint.unlink(missing_ok=True)
    remove_stale_temporaries(checkpoint)
    with contextlib.suppress(OSError):
        checkpoint.parent.rmdir()  # only when empty


def _refuse(path: Path, what: str) -> None:
    raise _io.InputError(
        f"{path} holds results of {what}; choose another --out, or replace them with --force"
    )


def _finished_results(path: Path) -> dict[str, Any] | None:
    """The finished results at ``path``, None when there are none; a file there that is not
    Fig. 2 data raises InputError (it is not overwritten without ``--force``)."""
    if not path.exists():
        return None
    try:
        cached = _io.read_json(path)
    except (OSError, ValueError) as error:
        raise _io.InputError(
            f"{path} is not Fig. 2 data ({error}); move it away or rerun with --force"
        ) from None
    if not isinstance(cached, dict) or cached.get("experiment") != "fig2":
        raise _io.InputError(
            f"{path} is not Fig. 2 data (no 'experiment': 'fig2' entry); move it away or rerun "
            "with --force"
        )
    return cached
