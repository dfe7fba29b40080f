"""The Fig. 2 training recipe: setup, epochs, evaluation and checkpoints, in the order of a run.

:class:`Recipe` reads top to bottom: :meth:`~Recipe.setup` loads the data, builds the network
and its optimizer and resumes from the checkpoint when it holds this configuration;
:meth:`~Recipe.train_epoch` makes one pass over the training set; :meth:`~Recipe.save` writes the
checkpoint; :meth:`~Recipe.run` chains them. The loss is the squared error to one-hot targets,
summed over samples (no 1/2, no mean); Adam with a linear warm-up and a cosine decay to 0. The
functions it calls follow it: the evaluation, then the checkpoint.

**Evaluation.** With ``G`` the d features of the N training samples (d x N, one column per
sample) and ``U`` the last layer's weight (a x d), the masks make training SGD on (Thm 3.1,
eq. 14-15)::

    E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>,

evaluated on the whole training set in eval mode (no masks), in float64: a
:class:`~structdrop.HeadMonitor` on the network's head accumulates the streaming statistics of
its input over the training set (each process its part, summed over the processes), and
:func:`~structdrop.head_report` gives the objective, its two terms, the best head for these
features, the capacity bound (Prop. 3.3 / Thm 2.7) and the trained and predicted spectra.

**Checkpoint.** Weights, optimizer state, history and progress, one verified unit
(:mod:`structdrop._checkpoint`: a NumPy archive, never pickled), bound to the run's
configuration and the source of its data (:func:`.config.run_identity`: a checkpoint made on one
copy of a data set is not resumed on another) and, on load, checked against the network before
anything is used: every weight and optimizer moment must have the network's shape and dtype (and
be finite), and the history must hold as many epochs as the checkpoint says.

**Processes.** Under ``torch.distributed`` (``torchrun``) every process takes a contiguous part
of each global batch of ``config.batch_size`` samples; the shuffles and the masks of the global
batch come from ``(seed, epoch)`` and ``(seed, step)`` (:mod:`.parallel`), and the summed loss is
scaled by the number of processes so that DDP's averaged gradient is the gradient of the global
sum. With a BatchNorm trunk the batch statistics are synchronized (SyncBatchNorm, CUDA only); on
CPU use a trunk without BatchNorm (``tiny``) for results identical to one process.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import _validation as check
from ..._checkpoint import CheckpointError, check_array, load_checkpoint, save_checkpoint
from ...head import HeadMonitor, HeadReport
from ...linear.sgd import DivergenceError
from ...schemes import Scheme
from .config import DeepConfig, make_scheme, run_identity
from .data import ImageData, load_images
from .model import Fig2Net, build_model
from .parallel import (
    Processes,
    all_sum,
    autocast,
    channels_last,
    processes,
    shard,
    stream_generator,
)

__all__ = [
    "CHECKPOINT_KIND",
    "Interrupted",
    "Recipe",
    "TrainResult",
    "check_state",
    "empty_history",
    "evaluate",
    "learning_rate",
    "load_state",
    "record",
    "save_state",
    "train",
]


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained network, its history and the report of its head
    at the end (:func:`structdrop.head_report`)."""

    model: Fig2Net
    history: dict[str, list[Any]]
    report: HeadReport
    data: ImageData
    seconds: float
    resumed_from_epoch: int
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)


class Interrupted(RuntimeError):
    """Raised after ``interrupt_after`` epochs: a kill at an epoch boundary, for tests."""


def learning_rate(config: DeepConfig, step: int, total: int) -> float:
    """Adam's rate at iteration ``step`` of ``total``: linear warm-up, then cosine decay."""
    warmup = max(1, round(config.warmup * total))
    ramp = min(1.0, (step + 1) / warmup)
    return config.lr * ramp * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _progress_bar(total: int, initial: int, enabled: bool | None) -> Any:
    """A progress bar of the steps; ``enabled=None`` shows it on an interactive terminal only
    (tqdm's ``disable=None``), so that logs get no carriage returns."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=None if enabled is None else not enabled,
        desc="fig2",
        unit="step",
        leave=False,
    )


class Recipe:
    """One Fig. 2 training run: ``setup()``, then ``train_epoch(e)`` for every epoch left, each
    followed by ``save(e + 1)`` when :meth:`save_due` says so, as :meth:`run` does.

    Args:
        config: the run.
        checkpoint: file written (atomically, by process 0) at the end of an epoch, and resumed
            from.
        progress: show a progress bar (process 0; None: on an interactive terminal only).
        checkpoint_every: write the checkpoint after an epoch only once this many seconds have
            passed since the last one (0: after every epoch). A ResNet-50 checkpoint is about
            300 MB, a second to write: every epoch of the default run would double its time.
        discard_foreign: a checkpoint that is not this run's (another configuration or data,
            damaged) is deleted and the run starts afresh, instead of raising CheckpointError;
            this run's own checkpoint is resumed either way.
    """

    def __init__(
        self,
        config: DeepConfig,
        checkpoint: Path | None = None,
        progress: bool | None = False,
        checkpoint_every: float = 0.0,
        discard_foreign: bool = False,
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.discard_foreign = discard_foreign
        self.progress = progress
        self.checkpoint_every = check.check_nonnegative(checkpoint_every, "checkpoint_every")
        self.last_save = time.monotonic()
        self.procs = processes(config)
        self.scheme = make_scheme(config)

    # ---------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Data, network, optimizer, the state of the checkpoint if any, DDP."""
        config, procs = self.config, self.procs
        self.data = load_images(
            config.dataset,
            image_size=config.image_size,
            train_size=config.train_size,
            seed=config.seed,
            data_dir=config.data_dir,
        )
        if config.batch_size < procs.world:
            raise ValueError(
                f"batch_size must be >= the number of processes {procs.world}, "
                f"got {config.batch_size}"
            )
        self._initialize()
        self.history, self.epoch_seconds, self.start_epoch = empty_history(), [], 0
        state = None
        if self.checkpoint is not None:
            state = self._resume(self.checkpoint)
        if state is not None:
            self.history, self.epoch_seconds = state["history"], state["epoch_seconds"]
            self.start_epoch = state["epoch"]
        self.network = self._distributed(self.model)
        self.steps_per_epoch = math.ceil(len(self.data) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs

    def _initialize(self) -> None:
        """The network at its initial weights (from the seed) and a fresh optimizer."""
        device = self.procs.device
        self.model = build_model(self.config, self.data.classes).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr, fused=True)

    def _resume(self, checkpoint: Path) -> dict[str, Any] | None:
        """The state of this run's checkpoint, loaded into the network and the optimizer; None
        when there is none, or (``discard_foreign``) when the file is not this run's: it is
        then deleted (by process 0) and the run starts afresh from the initial weights."""
        source = self.data.source
        try:
            return load_state(checkpoint, self.config, source, self.model, self.optimizer)
        except CheckpointError:
            if not self.discard_foreign:
                raise
        self.procs.barrier()  # every process has read the file before it goes
        if self.procs.main:
            checkpoint.unlink(missing_ok=True)
        self._initialize()  # a failed load may have changed some weights
        return None

    def _distributed(self, model: nn.Module) -> nn.Module:
        """``model`` as DistributedDataParallel (with SyncBatchNorm on CUDA) when there are
        several processes; ``model`` itself alone."""
        if self.procs.world == 1:
            return model
        device = self.procs.device
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # ----------------------------------------------------------------------------- training
    def evaluate(self) -> HeadReport:
        """The report of the head now; a DivergenceError names the learning rate."""
        try:
            return evaluate(self.model, self.data, self.scheme, self.procs, self.config.amp)
        except DivergenceError as error:
            raise DivergenceError(
                f"the run diverged ({error} at --lr {self.config.lr:g}); lower --lr"
            ) from None

    def evaluate_at(self, step: int) -> None:
        """Record the deterministic objective at iteration ``step``."""
        record(self.history, step, self.evaluate())

    def train_step(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        """One optimizer step on global batch ``batch`` (sample indices); returns this
        process's summed masked loss."""
        config, procs, data = self.config, self.procs, self.data
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, step, self.total_steps)
        # The masks of the whole global batch, then this process's rows.
        masks = torch.ones(len(batch), config.width)
        scale = self.model.dropout(masks, generator=stream_generator(config.seed, 2, step))
        mine = shard(torch.arange(len(batch)), procs)
        x = data.images[batch[mine]].to(procs.device, non_blocking=True)
        y = F.one_hot(data.labels[batch[mine]], data.classes).to(procs.device)
        with autocast(procs.device, config.amp):
            output = self.network(channels_last(x, procs.device), scale[mine].to(procs.device))
        loss = ((output.float() - y) ** 2).sum()
        self.optimizer.zero_grad(set_to_none=True)
        (loss * procs.world).backward()
        self.optimizer.step()
        return loss.detach()

    def train_epoch(self, epoch: int, bar: Any = None) -> None:
        """One pass over the training set in the order of ``(seed, 1, epoch)``, then the
        deterministic objective at its end."""
        config, procs, n = self.config, self.procs, len(self.data)
        began = time.perf_counter()
        self.network.train()
        order = torch.randperm(n, generator=stream_generator(config.seed, 1, epoch))
        batches = order.split(config.batch_size)
        losses = torch.zeros(self.steps_per_epoch, dtype=torch.float64, device=procs.device)
        for i, batch in enumerate(batches):
            step = epoch * self.steps_per_epoch + i
            losses[i] = self.train_step(batch, step)
            if config.eval_every and (step + 1) % config.eval_every == 0:
                self.evaluate_at(step + 1)
            if bar is not None:
                bar.update(1)
        all_sum(losses, procs)
        sizes = torch.tensor([len(batch) for batch in batches])
        self.history["step_loss"].extend((losses.cpu() * n / sizes).tolist())
        self.history["epoch_loss"].append(float(losses.sum()))
        last = (epoch + 1) * self.steps_per_epoch
        if not self.history["eval_step"] or self.history["eval_step"][-1] != last:
            self.evaluate_at(last)
        self.epoch_seconds.append(time.perf_counter() - began)

    # --------------------------------------------------------------------------------- save
    def save_due(self, epochs_done: int) -> bool:
        """Whether to write the checkpoint after ``epochs_done`` epochs: when
        ``checkpoint_every`` seconds have passed since the last one, on any process (every
        process then takes part), and never after the last epoch (the results follow)."""
        if self.checkpoint is None or epochs_done == self.config.epochs:
            return False
        due = time.monotonic() - self.last_save >= self.checkpoint_every
        if self.procs.world > 1:
            flag = torch.tensor([float(due)], device=self.procs.device)
            due = bool(all_sum(flag, self.procs).item() > 0)
        return due

    def save(self, epochs_done: int) -> None:
        """Write the checkpoint after ``epochs_done`` epochs (process 0), then wait for all."""
        if self.checkpoint is not None and self.procs.main:
            save_state(
                self.checkpoint,
                self.config,
                self.data.source,
                epochs_done,
                self.model,
                self.optimizer,
                self.history,
                self.epoch_seconds,
            )
        self.last_save = time.monotonic()
        self.procs.barrier()

    # ---------------------------------------------------------------------------------- run
    def run(self, interrupt_after: int | None = None) -> TrainResult:
        """Set up, train the epochs left, saving after each, and evaluate the result.

        Args:
            interrupt_after: raise :class:`Interrupted` after this many epochs of this call
                (to test resuming).
        """
        self.setup()
        if self.start_epoch == 0:
            self.evaluate_at(0)
        initial = self.start_epoch * self.steps_per_epoch
        bar = _progress_bar(self.total_steps, initial, self.progress if self.procs.main else False)
        began = time.perf_counter()
        for epoch in range(self.start_epoch, self.config.epochs):
            self.train_epoch(epoch, bar)
            bar.set_postfix(objective=f"{self.history['objective'][-1]:.4g}")
            if self.save_due(epoch + 1):
                self.save(epoch + 1)
            if interrupt_after is not None and epoch + 1 - self.start_epoch >= interrupt_after:
                bar.close()
                raise Interrupted(f"interrupted after epoch {epoch + 1}")
        bar.close()
        final = self.evaluate()
        return TrainResult(
            self.model,
            self.history,
            final,
            self.data,
            time.perf_counter() - began,
            resumed_from_epoch=self.start_epoch,
            epoch_seconds=self.epoch_seconds,
        )


def train(
    config: DeepConfig,
    *,
    checkpoint: Path | None = None,
    progress: bool | None = False,
    interrupt_after: int | None = None,
    checkpoint_every: float = 0.0,
    discard_foreign: bool = False,
) -> TrainResult:
    """Train the Fig. 2 network; resume from ``checkpoint`` when it holds this configuration.

    Args:
        config: the run.
        checkpoint: file written (atomically, by process 0) at the end of an epoch.
        progress: show a progress bar (process 0).
        interrupt_after: stop with :class:`Interrupted` after this many epochs of this call (to
            test resuming).
        checkpoint_every: seconds between checkpoints (0: after every epoch; see
            :class:`Recipe`).
        discard_foreign: delete a checkpoint that is not this run's and start afresh, instead
            of raising CheckpointError (see :class:`Recipe`).

    Returns:
        A :class:`TrainResult`.
    """
    recipe = Recipe(config, checkpoint, progress, checkpoint_every, discard_foreign)
    return recipe.run(interrupt_after)


# =============================================================================== evaluation

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
    batches = (  # one piece on the device at a time
        (channels_last(data.images[piece].to(procs.device), procs.device), data.labels[piece])
        for piece in pieces
    )
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


# =============================================================================== checkpoint

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
