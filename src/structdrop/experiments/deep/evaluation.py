"""The deterministic objective of the Fig. 2 network (Thm 3.1, eq. 14-15) and its history,
measured with the public head API (:mod:`structdrop.head`).

With ``G`` the d features of the N training samples (d x N, one column per sample) and ``U`` the
last layer's weight (a x d), the masks make training SGD on::

    E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>,

evaluated on the whole training set in eval mode (no masks), in float64: a
:class:`~structdrop.HeadMonitor` on the network's head accumulates the streaming statistics
of its input over the training set (each process its part, summed over the processes), and
:func:`~structdrop.head_report` gives the objective, its two terms, the best head for these
features, the capacity bound (Prop. 3.3 / Thm 2.7) and the trained and predicted spectra.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...head import HeadMonitor, HeadReport
from ...linear.sgd import DivergenceError
from ...schemes import Scheme
from .data import ImageData
from .model import Fig2Net
from .parallel import Processes, autocast, channels_last, shard

__all__ = ["empty_history", "evaluate", "record"]

#: Samples per forward pass of an evaluation.
CHUNK = 500


@torch.no_grad()
def evaluate(
    model: Fig2Net, data: ImageData, scheme: Scheme, procs: Processes, amp: bool
) -> HeadReport:
    """The report of the network's head on the whole training set, eval mode (see the module).

    BatchNorm layers first get the statistics of the whole training set at the current weights
    (:func:`recalibrate_batchnorm`), not the running averages of past batches, which lag behind
    the weights and made the evaluated network much worse than the trained one. The model's
    mode (training or eval) is restored.

    Raises:
        DivergenceError: the training diverged (features or weights not finite).
    """
    if not bool(torch.isfinite(model.head.weight).all()):
        raise DivergenceError("the last layer's weights are not finite")
    pieces = chunks(len(data), procs)
    recalibrate_batchnorm(model, data, pieces, procs, amp)
    batches = [
        (channels_last(data.images[piece].to(procs.device), procs.device), data.labels[piece])
        for piece in pieces
    ]
    monitor = HeadMonitor(model, head=model.head, scheme=scheme)
    try:
        with autocast(procs.device, amp):
            return monitor.measure(batches, all_reduce=procs.world > 1)
    except ValueError as error:
        if "must be finite" not in str(error):
            raise
        raise DivergenceError("the features are not finite") from None
    finally:
        monitor.close()


def chunks(n: int, procs: Processes, size: int = CHUNK) -> list[torch.Tensor]:
    """This process's slice of ``range(n)`` in pieces; every process gets as many pieces (so
    that SyncBatchNorm's collectives pair up)."""
    count = max(1, math.ceil(math.ceil(n / procs.world) / size))
    return list(torch.tensor_split(shard(torch.arange(n), procs), count))


@torch.no_grad()
def recalibrate_batchnorm(
    model: Fig2Net, data: ImageData, pieces: list[torch.Tensor], procs: Processes, amp: bool
) -> None:
    """Set BatchNorm running statistics to those of the training set ("precise BN").

    Running statistics are reset and accumulated as plain averages (``momentum=None``) over a
    forward pass of the training set in training mode, without masks and without gradients.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for piece in pieces:
        x = data.images[piece].to(procs.device, non_blocking=True)
        with autocast(procs.device, amp):
            model.features(channels_last(x, procs.device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def empty_history() -> dict[str, list[Any]]:
    """The curves of a run, empty."""
    return {
        "eval_step": [],  # iterations at which the deterministic objective was evaluated
        "objective": [],
        "fit": [],
        "penalty": [],
        "step_loss": [],  # per iteration: masked loss of the batch, times N / |batch|
        "epoch_loss": [],  # per epoch: the masked loss summed over the epoch's batches
    }


def record(history: dict[str, list[Any]], step: int, report: HeadReport) -> None:
    """Append the report of an evaluation at iteration ``step`` to ``history``."""
    history["eval_step"].append(step)
    history["objective"].append(report.objective)
    history["fit"].append(report.fit)
    history["penalty"].append(report.regularizer)
