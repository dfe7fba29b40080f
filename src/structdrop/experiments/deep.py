"""Figure 2 (Sec. 5.2): a ResNet-50 with structured dropout on its last hidden layer.

The network is ``x -> ResNet-50 trunk -> Linear(2048, 80) -> dropout -> Linear(80, a) -> y``,
trained with the squared loss to one-hot targets, summed over samples. With ``G`` the 80-d
features (d x N, one column per sample) and ``U`` the last layer's weight (a x d, no bias, as
in the paper's ``U G``), the masks make training SGD on (Thm 3.1, eq. 13-15)::

    E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>.

Every epoch we evaluate this deterministic objective on the whole training set (eval mode, no
masks) next to the stochastic training loss. If the trunk can produce any features (sufficient
capacity, Prop. 3.3), the least value over ``(U, G)`` is that of the features-space problem::

    min_A ||Y - A||^2 + beta ||A||_(r)^2,   beta = (r/d)(1-theta)/theta,

the spectral r-support norm for GridBlock (Thm 2.7, corrected in NOTES.md) and the squared
nuclear norm with weight ``(1-theta)/(theta d)`` for Dropout (Prop. 3.3 with its missing 1/d,
NOTES.md). It is a lower bound at width d for every ``(U, G)``. Its minimizer is the prox of
the one-hot ``Y``, whose singular values are ``sqrt(n_c)`` (class counts): the figure's right
panel compares them, shrunk, with the singular values of the trained ``U G``.

Run it with ``structdrop reproduce deep`` or, on several processes or GPUs,
``torchrun --nproc_per_node=2 -m structdrop.experiments.deep --dataset digits``. Every epoch
writes a checkpoint; a killed run resumes from it. All randomness derives from
``(seed, epoch, step)``: shuffles and masks of a global batch are the same whatever the number
of processes, so ``P`` processes with global batch ``B`` compute what one process does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import _validation as check
from .. import nn as sdnn
from .._checkpoint import CheckpointError, check_array, load_checkpoint, save_checkpoint
from .._files import remove_stale_temporaries
from ..ksupport import ksupport_norm, prox_ksupport_sq
from ..optimum import regularization_strength
from ..schemes import Bernoulli, DropConnect, GridBlock, Scheme, SlidingBlock
from . import _io, plots, report
from .deep_data import DATASETS, ImageData, MissingDataError, load_images

__all__ = [
    "SCHEMES",
    "TRUNKS",
    "DeepConfig",
    "Fig2Net",
    "MissingDataError",
    "Theory",
    "TrainResult",
    "build_model",
    "config_from_options",
    "evaluate",
    "main",
    "make_scheme",
    "run_deep",
    "theoretical_minimum",
    "train",
]

SCHEMES: tuple[str, ...] = ("grid", "bernoulli", "sliding", "dropconnect")
TRUNKS: tuple[str, ...] = ("resnet50", "resnet18", "tiny")
CHECKPOINT_KIND = "structdrop.experiments.deep.train"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeepConfig:
    """Everything a Fig. 2 run depends on. The defaults are the offline CPU reproduction.

    Attributes:
        dataset: one of ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``synthetic32``.
        data_dir: where torchvision's files live (``mnist``, ``fashion-mnist``, ``cifar10``).
        train_size: training samples drawn from the data set (None: all of its training split).
        image_size: side of the square images given to the trunk.
        trunk: ``resnet50`` (the paper's); ``resnet18`` and ``tiny`` (two convolutions, no
            BatchNorm) are for fast checks.
        width: d, the hidden features the dropout acts on (80 in the paper).
        scheme: ``grid`` (the paper's DropBlock, Lemma 2.1), ``bernoulli`` (Dropout),
            ``sliding`` (Ghiasi et al.'s, 1-D) or ``dropconnect`` (masks on U's entries,
            per sample: the same law on the features as Dropout).
        p: drop probability at width d.
        block_size: r for ``grid`` and ``sliding``.
        epochs: passes over the training set.
        batch_size: global batch size B (split over processes).
        lr: peak learning rate of Adam (linear warm-up, cosine decay to 0).
        warmup: fraction of the steps spent warming up.
        eval_every: evaluate the deterministic objective every this many steps (0: at the end of
            every epoch only).
        seed: draws the training subset, the initial weights, the shuffles and the masks.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    train_size: int | None = 200
    image_size: int = 16
    trunk: str = "resnet50"
    width: int = 80
    scheme: str = "grid"
    p: float = 0.5
    block_size: int = 5
    epochs: int = 100
    batch_size: int = 50
    lr: float = 1e-3
    warmup: float = 0.05
    eval_every: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {TRUNKS}, got {self.trunk!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        check.check_probability(self.p)
        for name in ("image_size", "width", "block_size", "epochs", "batch_size"):
            check.check_positive_int(getattr(self, name), name)
        if self.train_size is not None:
            check.check_positive_int(self.train_size, "train_size")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if not (isinstance(self.lr, int | float) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        make_scheme(self).mean(self.width)  # e.g. block_size must divide width for "grid"

    @classmethod
    def quick(cls, **overrides: Any) -> DeepConfig:
        """A small run (seconds on an idle 2-core CPU) that exercises every code path."""
        settings: dict[str, Any] = {"train_size": 50, "epochs": 2, "batch_size": 25}
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the numbers (not where or how fast they are computed)."""
        fields = self.to_dict()
        for name in ("device", "amp", "data_dir"):
            fields.pop(name)
        return fields


def make_scheme(config: DeepConfig) -> Scheme:
    """The mask law named by ``config.scheme`` with drop rate ``config.p``."""
    if config.scheme == "grid":
        return GridBlock(config.p, config.block_size)
    if config.scheme == "bernoulli":
        return Bernoulli(config.p)
    if config.scheme == "sliding":
        return SlidingBlock(config.p, config.block_size)
    return DropConnect(config.p)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _trunk(name: str) -> tuple[nn.Module, int]:
    """A feature extractor and its output width (torchvision's ResNets without their fc)."""
    if name == "tiny":
        body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        return body, 32
    import torchvision

    resnet = getattr(torchvision.models, name)(weights=None)
    features = resnet.fc.in_features
    resnet.fc = nn.Identity()
    return resnet, features


class Fig2Net(nn.Module):
    """``x -> trunk -> Linear(., d) -> StructuredDropout(scheme) -> Linear(d, a, bias=False)``.

    The last layer has no bias so that the prediction is exactly the paper's ``U G``
    (Sec. 3, eq. 13) with ``U = head.weight`` and ``G`` the output of ``hidden``.

    Args:
        trunk: ``resnet50``, ``resnet18`` or ``tiny``.
        width: d.
        classes: a.
        scheme: the mask law on the d features.
    """

    def __init__(self, trunk: str, width: int, classes: int, scheme: Scheme) -> None:
        super().__init__()
        self.trunk, features = _trunk(trunk)
        self.hidden = nn.Linear(features, width)
        self.dropout = sdnn.StructuredDropout(scheme)
        self.head = nn.Linear(width, classes, bias=False)
        nn.init.zeros_(self.head.weight)  # start at U G = 0: objective ||Y||^2, no huge outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``G^T``: (n, d), one row per sample."""
        return self.hidden(self.trunk(x))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions (n, a). In training mode the features are multiplied by ``scale``
        (``z / mu``, one row per sample) when given, else by fresh masks of the layer."""
        g = self.features(x)
        if self.training:
            g = g * scale if scale is not None else self.dropout(g)
        return self.head(g)


def build_model(config: DeepConfig, classes: int) -> Fig2Net:
    """The network with initial weights drawn from ``config.seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return Fig2Net(config.trunk, config.width, classes, make_scheme(config))


# --------------------------------------------------------------------------------------------
# Theory: the features-space problem (Prop. 3.3 generalized, Thm 2.7)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Theory:
    """The global minimum of ``||Y - A||^2 + beta ||A||_(r)^2`` (sufficient capacity).

    Attributes:
        value: the minimum ``sum_i (m_i - x_i)^2 + beta ||x||_(r)^2``.
        singular_values: ``x``, predicted singular values of ``U G`` (descending).
        target_singular_values: ``m``, those of ``Y`` (``sqrt`` of the class counts).
        beta: ``(r/d)(1-theta)/theta``.
        block_size: r (1 for Dropout).
    """

    value: float
    singular_values: list[float]
    target_singular_values: list[float]
    beta: float
    block_size: int


def _theory_scheme(scheme: Scheme) -> Scheme | None:
    """The Bernoulli/GridBlock law with the same regularizer, or None if it has no closed form.

    DropConnect on the last matrix U regularizes exactly as Dropout (NOTES.md); per-sample
    masks on U's entries act on the features as Dropout's do.
    """
    if isinstance(scheme, Bernoulli | GridBlock):
        return scheme
    if isinstance(scheme, DropConnect):
        return Bernoulli(scheme.p)
    return None


def theoretical_minimum(Y: np.ndarray, scheme: Scheme, width: int) -> Theory | None:
    """The least deterministic objective over ``(U, G)`` at width d (Thm 2.7, NOTES.md).

    ``min_{U, G} ||Y - U G||^2 + <Cbar, U^T U * G G^T> >= min_A ||Y - A||^2 + beta ||A||_(r)^2``
    with equality when d >= rank(A*) (and the blocks can share its directions). For Dropout
    ``beta ||A||_(1)^2 = (1-theta)/(theta d) ||A||_*^2`` (Prop. 3.3, eq. 18, with the 1/d it
    misses). With ``Y = W diag(m) Z^T`` the minimizer is ``W diag(x) Z^T``, ``x`` the prox of
    the squared r-support norm of ``m`` (``x_i = (m_i - tau)_+`` for Dropout).

    Args:
        Y: (a, N) targets.
        scheme: the mask law (Bernoulli, GridBlock or DropConnect; others give None).
        width: d.

    Returns:
        A :class:`Theory`, or None when the scheme's regularizer has no known closed form.
    """
    law = _theory_scheme(scheme)
    if law is None:
        return None
    beta = regularization_strength(law, width)
    r = law.block_size
    m = np.linalg.svd(np.asarray(Y, dtype=np.float64), compute_uv=False)
    x = np.asarray(prox_ksupport_sq(m, beta, r))
    value = float(np.sum((m - x) ** 2) + beta * float(ksupport_norm(x, r)) ** 2)
    return Theory(value, x.tolist(), m.tolist(), beta, r)


# --------------------------------------------------------------------------------------------
# Processes, randomness, files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _processes(config: DeepConfig) -> _Processes:
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise _io.InputError(
            "--device cuda: torch sees no CUDA device on this machine; use --device cpu or auto"
        )
    if wants_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return _Processes(rank, world, device)


def _generator(seed: int, *keys: int, device: torch.device | None = None) -> torch.Generator:
    """A torch generator for the stream ``(seed, *keys)``: independent streams per key."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device=device or "cpu")
    generator.manual_seed(int(state) & ((1 << 63) - 1))
    return generator


def _shard(indices: torch.Tensor, procs: _Processes) -> torch.Tensor:
    """This process's contiguous part of a global batch (sizes differ by at most one)."""
    return torch.tensor_split(indices, procs.world)[procs.rank]


def _all_sum(tensor: torch.Tensor, procs: _Processes) -> torch.Tensor:
    if procs.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _save_checkpoint(
    path: Path,
    config: DeepConfig,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: dict[str, list[Any]],
    epoch_seconds: list[float],
) -> None:
    """Weights, optimizer state, history and progress as one verified checkpoint file."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "epoch_seconds": epoch_seconds,
    }
    save_checkpoint(path, kind=CHECKPOINT_KIND, identity=config.identity(), state=state)


def _check_state(state: dict[str, Any], config: DeepConfig, model: nn.Module) -> None:
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
    if not isinstance(history, dict) or set(history) != set(_empty_history()):
        raise ValueError("its history is not a Fig. 2 history")
    if len(state["epoch_seconds"]) != epoch or len(history["epoch_loss"]) != epoch:
        raise ValueError(f"its history does not hold {epoch} epochs")


def _load_checkpoint(
    path: Path, config: DeepConfig, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Restore ``model`` and ``optimizer`` from the checkpoint at ``path`` and return its state;
    None when there is no file. A checkpoint that is not this run's raises CheckpointError."""
    state = load_checkpoint(
        path,
        kind=CHECKPOINT_KIND,
        identity=config.identity(),
        check=lambda state: _check_state(state, config, model),
    )
    if state is None:
        return None
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(path, f"is inconsistent: {error}") from None
    return state


# --------------------------------------------------------------------------------------------
# Deterministic objective (Thm 3.1, eq. 14-15) from sufficient statistics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: Fig2Net, data: ImageData, scheme: Scheme, procs: _Processes, amp: bool
) -> dict[str, Any]:
    """``||Y - U G||^2 + <Cbar, U^T U * G G^T>`` on the whole training set, eval mode.

    Each process computes the features of a slice of the samples and the statistics
    ``G G^T`` (d x d) and ``Y G^T`` (a x d) in float64; their sums give the fit
    ``||Y||^2 - 2 <U, Y G^T> + <U^T U, G G^T>``, the penalty, the singular values of ``U G``
    (``sqrt eig(U G G^T U^T)``) and the block norms ``||U_i G_i||_F`` (Def. 2.4), whatever
    the number of processes.

    BatchNorm layers first get the statistics of the whole training set at the current weights
    (:func:`_recalibrate_batchnorm`), not the running averages of past batches, which lag
    behind the weights and made the evaluated network much worse than the trained one.
    """
    was_training = model.training
    chunks = _chunks(len(data), procs)
    _recalibrate_batchnorm(model, data, chunks, procs, amp)
    model.eval()
    width, classes = model.head.in_features, model.head.out_features
    gram = torch.zeros(width, width, dtype=torch.float64, device=procs.device)
    cross = torch.zeros(classes, width, dtype=torch.float64, device=procs.device)
    for chunk in chunks:
        x = data.images[chunk].to(procs.device, non_blocking=True)
        with _autocast(procs.device, amp):
            g = model.features(_layout(x, procs.device)).double()
        gram += g.T @ g
        cross += F.one_hot(data.labels[chunk].to(procs.device), classes).double().T @ g
    _all_sum(gram, procs)
    _all_sum(cross, procs)
    model.train(was_training)

    gram, cross = gram.cpu(), cross.cpu()
    U = model.head.weight.detach().double().cpu()
    fit = len(data) - 2.0 * (U * cross).sum() + ((U.T @ U) * gram).sum()
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    root = eigenvectors * eigenvalues.clamp_min(0.0).sqrt()  # root @ root.T == G G^T
    from ..objectives import penalty

    omega = penalty(U, root, scheme)  # eq. 15 depends on G only through G G^T
    prediction_gram = U @ gram @ U.T
    singular = torch.linalg.eigvalsh(prediction_gram).clamp_min(0.0).sqrt().flip(0)
    r = scheme.block_size
    blocks = ((U.T @ U) * gram).reshape(width // r, r, width // r, r).sum(dim=(1, 3))
    return {
        "objective": float(fit + omega),
        "fit": float(fit),
        "penalty": float(omega),
        "singular_values": singular.tolist(),
        "block_norms": blocks.diagonal().clamp_min(0.0).sqrt().tolist(),
    }


def _chunks(n: int, procs: _Processes, size: int = 500) -> list[torch.Tensor]:
    """This process's slice of ``range(n)`` in pieces; every process gets as many pieces (so
    that SyncBatchNorm's collectives pair up)."""
    count = max(1, math.ceil(math.ceil(n / procs.world) / size))
    return list(torch.tensor_split(_shard(torch.arange(n), procs), count))


@torch.no_grad()
def _recalibrate_batchnorm(
    model: Fig2Net, data: ImageData, chunks: list[torch.Tensor], procs: _Processes, amp: bool
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
    for chunk in chunks:
        x = data.images[chunk].to(procs.device, non_blocking=True)
        with _autocast(procs.device, amp):
            model.features(_layout(x, procs.device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained network, its history and final evaluation."""

    model: Fig2Net
    history: dict[str, list[Any]]
    final: dict[str, Any]
    data: ImageData
    seconds: float
    resumed_from_epoch: int
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)


class _Interrupted(RuntimeError):
    """Raised after ``interrupt_after`` epochs: a kill at an epoch boundary, for tests."""


def _learning_rate(config: DeepConfig, step: int, total: int) -> float:
    warmup = max(1, round(config.warmup * total))
    ramp = min(1.0, (step + 1) / warmup)
    return config.lr * ramp * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _empty_history() -> dict[str, list[Any]]:
    return {
        "eval_step": [],  # iterations at which the deterministic objective was evaluated
        "objective": [],
        "fit": [],
        "penalty": [],
        "step_loss": [],  # per iteration: masked loss of the batch, times N / |batch|
        "epoch_loss": [],  # per epoch: the masked loss summed over the epoch's batches
    }


def _record(history: dict[str, list[Any]], step: int, evaluation: dict[str, Any]) -> None:
    history["eval_step"].append(step)
    for key in ("objective", "fit", "penalty"):
        history[key].append(evaluation[key])


def train(
    config: DeepConfig,
    *,
    checkpoint: Path | None = None,
    progress: bool = False,
    interrupt_after: int | None = None,
) -> TrainResult:
    """Train the Fig. 2 network; resume from ``checkpoint`` when it holds this configuration.

    Under ``torch.distributed`` (``torchrun``) every process takes a contiguous part of each
    global batch of ``config.batch_size`` samples; the shuffles and the masks of the global
    batch come from ``(seed, epoch)`` and ``(seed, step)``, and the summed loss is scaled by the
    number of processes so that DDP's averaged gradient is the gradient of the global sum. With
    a BatchNorm trunk the batch statistics are synchronized (SyncBatchNorm, CUDA only); on CPU
    use a trunk without BatchNorm (``tiny``) for results identical to one process.

    Args:
        config: the run.
        checkpoint: file written (atomically, by process 0) after every epoch.
        progress: show a progress bar (process 0).
        interrupt_after: stop with an exception after this many epochs of this call (to test
            resuming).

    Returns:
        A :class:`TrainResult`.
    """
    procs = _processes(config)
    data = load_images(
        config.dataset,
        image_size=config.image_size,
        train_size=config.train_size,
        seed=config.seed,
        data_dir=Path(config.data_dir) if config.data_dir else None,
    )
    if config.batch_size < procs.world:
        raise ValueError(
            f"batch_size must be >= the number of processes {procs.world}, got {config.batch_size}"
        )
    scheme = make_scheme(config)
    model = build_model(config, data.classes).to(procs.device)
    if procs.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    history, epoch_seconds = _empty_history(), []
    start_epoch = 0
    state = None
    if checkpoint is not None:
        state = _load_checkpoint(checkpoint, config, model, optimizer)
    if state is not None:
        history, epoch_seconds = state["history"], state["epoch_seconds"]
        start_epoch = state["epoch"]

    network: nn.Module = model
    if procs.world > 1:
        if procs.device.type == "cuda":
            network = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        network = nn.parallel.DistributedDataParallel(
            network, device_ids=[procs.device.index] if procs.device.type == "cuda" else None
        )

    n = len(data)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    if start_epoch == 0:
        _record(history, 0, evaluate(model, data, scheme, procs, config.amp))
    bar = _progress_bar(total, start_epoch * steps_per_epoch, progress and procs.main)
    began = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_began = time.perf_counter()
        network.train()
        order = torch.randperm(n, generator=_generator(config.seed, 1, epoch))
        losses = torch.zeros(steps_per_epoch, dtype=torch.float64, device=procs.device)
        for i, batch in enumerate(order.split(config.batch_size)):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, total)
            # The masks of the whole global batch, then this process's rows.
            masks = torch.ones(len(batch), config.width)
            scale = model.dropout(masks, generator=_generator(config.seed, 2, step))
            mine = _shard(torch.arange(len(batch)), procs)
            x = data.images[batch[mine]].to(procs.device, non_blocking=True)
            y = F.one_hot(data.labels[batch[mine]], data.classes).to(procs.device)
            with _autocast(procs.device, config.amp):
                output = network(_layout(x, procs.device), scale[mine].to(procs.device))
            loss = ((output.float() - y) ** 2).sum()
            optimizer.zero_grad(set_to_none=True)
            (loss * procs.world).backward()
            optimizer.step()
            losses[i] = loss.detach()
            if config.eval_every and (step + 1) % config.eval_every == 0:
                _record(history, step + 1, evaluate(model, data, scheme, procs, config.amp))
            bar.update(1)
        _all_sum(losses, procs)
        sizes = torch.tensor([len(b) for b in order.split(config.batch_size)])
        history["step_loss"].extend((losses.cpu() * n / sizes).tolist())
        history["epoch_loss"].append(float(losses.sum()))
        last = (epoch + 1) * steps_per_epoch
        if not history["eval_step"] or history["eval_step"][-1] != last:
            _record(history, last, evaluate(model, data, scheme, procs, config.amp))
        epoch_seconds.append(time.perf_counter() - epoch_began)
        bar.set_postfix(objective=f"{history['objective'][-1]:.4g}")
        if checkpoint is not None and procs.main:
            _save_checkpoint(
                checkpoint, config, epoch + 1, model, optimizer, history, epoch_seconds
            )
        if procs.world > 1:
            dist.barrier()
        if interrupt_after is not None and epoch + 1 - start_epoch >= interrupt_after:
            bar.close()
            raise _Interrupted(f"interrupted after epoch {epoch + 1}")
    bar.close()
    final = evaluate(model, data, scheme, procs, config.amp)
    return TrainResult(
        model,
        history,
        final,
        data,
        time.perf_counter() - began,
        resumed_from_epoch=start_epoch,
        epoch_seconds=epoch_seconds,
    )


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, desc="fig2", unit="step", leave=False
    )


# --------------------------------------------------------------------------------------------
# The experiment: run, figure, report
# --------------------------------------------------------------------------------------------


def _name(config: DeepConfig) -> str:
    return "fig2" if config.dataset == "digits" else f"fig2_{config.dataset}"


def _relative_error(trained: list[float], predicted: list[float]) -> float:
    """``max_i |s_i - x_i| / x_1``: how far the trained spectrum is from the prediction."""
    s, x = np.asarray(trained), np.asarray(predicted)
    k = min(s.size, x.size)
    return float(np.max(np.abs(s[:k] - x[:k])) / max(float(x[0]), 1e-300))


def _results(config: DeepConfig, result: TrainResult) -> dict[str, Any]:
    """The figure's data: results only, the same bytes for the same seed (no timings)."""
    scheme = make_scheme(config)
    data = result.data
    theory = theoretical_minimum(data.targets().numpy(), scheme, config.width)
    final = result.final
    norms = np.asarray(final["block_norms"])
    output: dict[str, Any] = {
        "experiment": "fig2",
        "figure": f"{_name(config)}.png",
        "config": config.identity(),
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
        "theory": dataclasses.asdict(theory) if theory is not None else None,
        "gap": None,
        "singular_value_error": None,
        "balance": float(norms.std() / norms.mean()) if norms.mean() > 0 else None,
    }
    if theory is not None:
        output["gap"] = (final["objective"] - theory.value) / theory.value
        output["singular_value_error"] = _relative_error(
            final["singular_values"], theory.singular_values
        )
    return output


def _timing(config: DeepConfig, result: TrainResult, procs: _Processes) -> dict[str, Any]:
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
    config: DeepConfig, out: Path, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the Fig. 2 experiment and write ``<out>/fig2.png`` and ``<out>/fig2.json``.

    Other data sets than ``digits`` write ``fig2_<dataset>.*``. A finished run with the same
    configuration is reused unless ``force``; an interrupted one resumes from
    ``<out>/checkpoints/fig2*.pt`` (deleted once the results are written). Under
    ``torch.distributed`` process 0 writes the files and every process returns the data.

    Args:
        config: the run (see :class:`DeepConfig`).
        out: results folder.
        force: recompute even if results or a checkpoint exist.
        progress: show a progress bar.

    Returns:
        The JSON data (see :func:`structdrop.experiments.report.deep_section`).
    """
    out = Path(out)
    procs = _processes(config)
    json_path = out / f"{_name(config)}.json"
    figure_path = out / f"{_name(config)}.png"
    checkpoint = out / "checkpoints" / f"{_name(config)}.pt"
    cached = None if force else _cached_results(json_path, config)
    if cached is not None:
        if procs.main and not figure_path.exists():
            _io.write_bytes(figure_path, plots.render("fig2", cached, dpi=120))
        return cached
    if force and procs.main:
        checkpoint.unlink(missing_ok=True)
    if procs.world > 1:
        dist.barrier()
    result = train(config, checkpoint=checkpoint, progress=progress)
    data = _io.to_jsonable(_results(config, result))
    if procs.main:
        _io.write_json(json_path, data)
        _io.write_bytes(figure_path, plots.render("fig2", data, dpi=120))
        _io.record_timing(out, _name(config), _timing(config, result, procs))
        checkpoint.unlink(missing_ok=True)
        remove_stale_temporaries(checkpoint)
        with contextlib.suppress(OSError):
            checkpoint.parent.rmdir()  # only when empty
    if procs.world > 1:
        dist.barrier()
    return data


def _cached_results(path: Path, config: DeepConfig) -> dict[str, Any] | None:
    """The finished results at ``path`` if they were made with ``config``; a file there that is
    not Fig. 2 data raises InputError (it is not overwritten without ``--force``)."""
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
    return cached if cached.get("config") == _io.normalized(config.identity()) else None


# --------------------------------------------------------------------------------------------
# Command line (also the torchrun entry point)
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m structdrop.experiments.deep",
        description="Fig. 2: ResNet-50 with structured dropout on the last layer (Sec. 5.2). "
        "Launch with torchrun for several processes or GPUs.",
    )
    defaults = DeepConfig()
    parser.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a small run, about a minute")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--force", action="store_true", help="recompute existing results")
    parser.add_argument("--data-dir", default=None, help="torchvision data sets (./data)")
    parser.add_argument("--scheme", default=defaults.scheme, choices=SCHEMES)
    parser.add_argument("--p", type=float, default=defaults.p, help="drop probability")
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--train-size", type=int, default=None, help="0: the whole split")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--trunk", default=defaults.trunk, choices=TRUNKS)
    parser.add_argument("--device", default=defaults.device, choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_options(
    *,
    dataset: str = "digits",
    epochs: int | None = None,
    quick: bool = False,
    seed: int = 0,
    data_dir: str | Path | None = None,
    scheme: str = "grid",
    p: float = 0.5,
    block_size: int = 5,
    train_size: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    trunk: str = "resnet50",
    device: str = "auto",
    amp: bool = True,
) -> DeepConfig:
    """A :class:`DeepConfig` from command-line options (None: the preset's value).

    ``train_size=0`` means the whole training split. Non-digits data sets default to
    32x32 images.
    """
    settings: dict[str, Any] = {
        "dataset": dataset,
        "seed": seed,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "scheme": scheme,
        "p": p,
        "block_size": block_size,
        "trunk": trunk,
        "device": device,
        "amp": amp,
    }
    if dataset != "digits":
        settings["image_size"] = 32
    for key, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("image_size", image_size),
    ):
        if value is not None:
            settings[key] = value
    if train_size is not None:
        settings["train_size"] = train_size or None
    return DeepConfig.quick(**settings) if quick else DeepConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m structdrop.experiments.deep`` and of ``torchrun``."""
    options = _parser().parse_args(argv)
    config = config_from_options(
        dataset=options.dataset,
        epochs=options.epochs,
        quick=options.quick,
        seed=options.seed,
        data_dir=options.data_dir,
        scheme=options.scheme,
        p=options.p,
        block_size=options.block_size,
        train_size=options.train_size,
        batch_size=options.batch_size,
        image_size=options.image_size,
        trunk=options.trunk,
        device=options.device,
        amp=not options.no_amp,
    )
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        cuda = config.device != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        data = run_deep(config, options.out, force=options.force, progress=not options.no_progress)
        if not distributed or dist.get_rank() == 0:
            print(report.deep_section(data))
    except (MissingDataError, _io.InputError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
