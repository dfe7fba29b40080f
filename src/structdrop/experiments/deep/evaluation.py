"""The deterministic objective of the Fig. 2 network (Thm 3.1, eq. 14-15) and its history.

With ``G`` the d features of the N training samples (d x N, one column per sample) and ``U`` the
last layer's weight (a x d), the masks make training SGD on::

    E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>,

evaluated here on the whole training set in eval mode (no masks), in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...linear.sgd import DivergenceError
from ...objectives import penalty
from ...optimum import block_norms
from ...schemes import Scheme
from .data import ImageData
from .model import Fig2Net
from .parallel import Processes, all_gather_rows, autocast, channels_last, shard

__all__ = ["empty_history", "evaluate", "features", "record"]

#: Samples per forward pass of an evaluation.
CHUNK = 500


@torch.no_grad()
def evaluate(
    model: Fig2Net, data: ImageData, scheme: Scheme, procs: Processes, amp: bool
) -> dict[str, Any]:
    """``||Y - U G||^2 + <Cbar, U^T U * G G^T>`` on the whole training set, eval mode.

    The fit is ``||Y||^2 - 2 <U, Y G^T> + <U^T U, G G^T>`` and the penalty (eq. 15) is that of
    a d x d square root of ``G G^T`` (eq. 15 depends on G only through it). Also returned: the
    singular values of ``U G`` (``sqrt eig(U G G^T U^T)``) and the block norms
    ``||U_i G_i||_F`` (Def. 2.4: :func:`structdrop.block_norms` with ``V = I_d``, ``X = G``).

    Returns:
        ``objective``, ``fit``, ``penalty``, ``singular_values`` (descending) and
        ``block_norms`` (d / r of them, r the scheme's block size).

    Raises:
        DivergenceError: the training diverged (features or weights not finite).
    """
    G = features(model, data, procs, amp)
    U = model.head.weight.detach().double().cpu()
    if not (bool(torch.isfinite(G).all()) and bool(torch.isfinite(U).all())):
        raise DivergenceError("the features or the last layer's weights are not finite")
    gram = G @ G.T
    cross = data.targets() @ G.T
    fit = len(data) - 2.0 * (U * cross).sum() + ((U.T @ U) * gram).sum()
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    root = eigenvectors * eigenvalues.clamp_min(0.0).sqrt()  # root @ root.T == G G^T
    omega = penalty(U, root, scheme)
    singular = torch.linalg.eigvalsh(U @ gram @ U.T).clamp_min(0.0).sqrt().flip(0)
    identity = torch.eye(G.shape[0], dtype=torch.float64)
    return {
        "objective": float(fit + omega),
        "fit": float(fit),
        "penalty": float(omega),
        "singular_values": singular.tolist(),
        "block_norms": block_norms(U, identity, G, scheme.block_size).tolist(),
    }


@torch.no_grad()
def features(model: Fig2Net, data: ImageData, procs: Processes, amp: bool) -> torch.Tensor:
    """``G`` (d x N, float64, on the CPU): the features of every training sample, eval mode.

    Each process computes those of its slice of the samples; they are gathered on every
    process. BatchNorm layers first get the statistics of the whole training set at the current
    weights (:func:`recalibrate_batchnorm`), not the running averages of past batches, which
    lag behind the weights and made the evaluated network much worse than the trained one.
    The model's mode (training or eval) is restored.
    """
    was_training = model.training
    pieces = chunks(len(data), procs)
    recalibrate_batchnorm(model, data, pieces, procs, amp)
    model.eval()
    rows = []
    for piece in pieces:
        x = data.images[piece].to(procs.device, non_blocking=True)
        with autocast(procs.device, amp):
            rows.append(model.features(channels_last(x, procs.device)).double())
    model.train(was_training)
    return all_gather_rows(torch.cat(rows), len(data), procs).cpu().T


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


def record(history: dict[str, list[Any]], step: int, evaluation: dict[str, Any]) -> None:
    """Append an evaluation at iteration ``step`` to ``history``."""
    history["eval_step"].append(step)
    for key in ("objective", "fit", "penalty"):
        history[key].append(evaluation[key])
