"""Figure 2 (Sec. 5.2): a ResNet-50 with structured dropout on its last hidden layer.

The network is ``x -> ResNet-50 trunk -> Linear(2048, 80) -> dropout -> Linear(80, a) -> y``,
trained with the squared loss to one-hot targets, summed over samples. With ``G`` the 80-d
features (d x N, one column per sample) and ``U`` the last layer's weight (a x d, no bias, as
in the paper's ``U G``), the masks make training SGD on (Thm 3.1, eq. 13-15)::

    E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>.

Every epoch this deterministic objective is evaluated on the whole training set (eval mode, no
masks) next to the stochastic training loss. If the trunk can produce any features (sufficient
capacity, Prop. 3.3), the least value over ``(U, G)`` is that of the features-space problem::

    min_A ||Y - A||^2 + beta ||A||_(r)^2,   beta = (r/d)(1-theta)/theta,

the spectral r-support norm for GridBlock (Thm 2.7, corrected in docs/theory.md) and the squared
nuclear norm with weight ``(1-theta)/(theta d)`` for Dropout (Prop. 3.3 with its missing 1/d,
docs/theory.md). It is a lower bound at width d for every ``(U, G)``. Its minimizer is the prox of
the one-hot ``Y``, whose singular values are ``sqrt(n_c)`` (class counts): the figure's right
panel compares them, shrunk, with the singular values of the trained ``U G``.

The rooms, in the order of a run:

* :mod:`.config`: :class:`DeepConfig` (every field with its help text) and the mask law;
* :mod:`.data`: the image data sets, and their download through torchvision;
* :mod:`.model`: the network, which knows nothing of training;
* :mod:`.parallel`: processes, devices and random streams;
* :mod:`.evaluation`: the deterministic objective, the best head and the capacity bound,
  measured with :class:`structdrop.HeadMonitor` and :func:`structdrop.head_report`;
* :mod:`.checkpoint`: the verified checkpoint of a run;
* :mod:`.training`: the recipe, as setup, epoch and save steps;
* :mod:`.experiment`: the run, its figure, results and timings;
* :mod:`.sweep`: the grid of runs over laws, rates and data sets, and what it shows.

Run it with ``structdrop reproduce deep`` (``python -m structdrop reproduce deep``) or, on
several processes or GPUs, ``torchrun --nproc-per-node 2 -m structdrop reproduce deep``. A
checkpoint is written at the end of an epoch once a minute; a killed run resumes from it.

The names below load on first use (the rooms that need torch load it then), so that the
command line reads :class:`DeepConfig` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Every public name of the experiment and the room that defines it.
_ROOMS: dict[str, str] = {
    "DATASETS": "config",
    "TRUNKS": "config",
    "DeepConfig": "config",
    "config_from_options": "config",
    "make_scheme": "config",
    "scheme_laws": "config",
    "ImageData": "data",
    "MissingDataError": "data",
    "download": "data",
    "load_images": "data",
    "Fig2Net": "model",
    "build_model": "model",
    "Processes": "parallel",
    "process_group": "parallel",
    "processes": "parallel",
    "stream_generator": "parallel",
    "evaluate": "evaluation",
    "CHECKPOINT_KIND": "checkpoint",
    "Interrupted": "training",
    "Recipe": "training",
    "TrainResult": "training",
    "train": "training",
    "run_deep": "experiment",
    "check_name": "config",
    "Cell": "sweep",
    "cell_commands": "sweep",
    "sweep_cells": "sweep",
    "collect_sweep": "sweep",
    "run_deep_sweep": "sweep",
    "check_sweep_base": "sweep",
}

__all__ = sorted(_ROOMS)


#: Names that a room defines under another name.
_ALIASES: dict[str, str] = {
    "sweep_cells": "cells",
    "collect_sweep": "collect",
    "run_deep_sweep": "run_sweep",
    "check_sweep_base": "check_base",
}


def __getattr__(name: str) -> Any:
    room = _ROOMS.get(name)
    if room is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{room}", __name__), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ROOMS})
