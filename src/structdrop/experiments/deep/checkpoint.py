"""The checkpoint of a Fig. 2 run: weights, optimizer state, history and progress, one
verified unit (:mod:`structdrop._checkpoint`: a NumPy archive, never pickled).

It is bound to the run's configuration and the source of its data (:func:`.config.run_identity`:
a checkpoint made on one copy of a data set is not resumed on another) and, on load, checked
against the network before anything is used: every weight and optimizer moment must have the
network's shape and dtype (and be finite), and the history must hold as many epochs as the
checkpoint says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._checkpoint import CheckpointError, check_array, load_checkpoint, save_checkpoint
from .config import DeepConfig, run_identity
from .evaluation import empty_history

__all__ = ["CHECKPOINT_KIND", "check_state", "load_state", "save_state"]

#: The kind of run a Fig. 2 checkpoint is bound to: a checkpoint of another kind is refused.
CHECKPOINT_KIND = "structdrop.experiments.deep.train"


def save_state(
    path: Path,
    config: DeepConfig,
    source: dict[str, Any] | None,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: dict[str, list[Any]],
    epoch_seconds: list[float],
) -> None:
    """Write the state after ``epoch`` epochs to ``path`` (atomically), bound to ``config`` and
    ``source``, the source of the data the run loaded (:func:`.config.run_identity`)."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "epoch_seconds": epoch_seconds,
    }
    save_checkpoint(path, kind=CHECKPOINT_KIND, identity=run_identity(config, source), state=state)


def check_state(state: dict[str, Any], config: DeepConfig, model: nn.Module) -> None:
    """Raise ValueError unless ``state`` fits ``model`` and ``config`` (shapes, dtypes, epoch)."""
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= config.epochs:
        raise ValueError(f"epoch is {epoch!r}, expected an int in [1, {config.epochs}]")
    weights, expected = state["model"], model.state_dict()
    if not isinstance(weights, dict) or set(weights) != set(expected):
        raise ValueError("its model weights are not those of this network")
    for name, tensor in expected.items():
        check_array(weights[name], f"weight {name}", tuple(tensor.shape), tensor.dtype)
    parameters = list(model.parameters())
    for index, entry in state["optimizer"]["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                parameter = parameters[index]
                check_array(
                    value, f"optimizer {key} {index}", tuple(parameter.shape), parameter.dtype
                )
    history = state["history"]
    if not isinstance(history, dict) or set(history) != set(empty_history()):
        raise ValueError("its history is not a Fig. 2 history")
    if len(state["epoch_seconds"]) != epoch or len(history["epoch_loss"]) != epoch:
        raise ValueError(f"its history does not hold {epoch} epochs")


def load_state(
    path: Path,
    config: DeepConfig,
    source: dict[str, Any] | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any] | None:
    """Restore ``model`` and ``optimizer`` from the checkpoint at ``path`` and return its state;
    None when there is no file. A checkpoint that is not this run's (``config``, and ``source``,
    the source of the data this run loaded) raises CheckpointError."""
    state = load_checkpoint(
        path,
        kind=CHECKPOINT_KIND,
        identity=run_identity(config, source),
        check=lambda state: check_state(state, config, model),
    )
    if state is None:
        return None
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(path, f"is inconsistent: {error}") from None
    return state
