"""Processes, devices and random streams of a Fig. 2 run.

Under ``torchrun`` every process takes a contiguous part of each global batch. All randomness
derives from ``(seed, *keys)`` streams (:func:`stream_generator`): the shuffle of epoch ``e``
from ``(seed, 1, e)``, the masks of step ``t`` from ``(seed, 2, t)``, drawn whole for the global
batch on every process; so ``P`` processes with global batch ``B`` compute what one process
does, and a resumed run what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..._locks import ResultBusyError
from ..._locks import owning as own_results
from .. import _io
from .config import DeepConfig

__all__ = [
    "Processes",
    "all_sum",
    "autocast",
    "channels_last",
    "owning",
    "process_group",
    "processes",
    "shard",
    "stream_generator",
]


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this is process 0, which writes the files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for alone)."""
        if self.world > 1:
            dist.barrier()


def processes(config: DeepConfig) -> Processes:
    """The rank, the number of processes and the device of this process.

    Raises:
        InputError: ``config.device`` is ``cuda`` and torch sees no CUDA device.
    """
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
    return Processes(rank, world, device)


def _environment_int(name: str, minimum: int) -> int | None:
    """The integer in the environment variable ``name`` (None when unset), as torchrun sets
    it; anything else is an InputError naming the variable and its value."""
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise _io.InputError(
            f"the environment variable {name} must be an integer >= {minimum} (torchrun sets "
            f"it), got {text!r}"
        )
    return value


#: What ``torch.distributed`` reads from the environment to join a group (torchrun sets all).
RENDEZVOUS_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _world_size() -> int:
    """The number of processes that the environment announces (1 without torchrun); a group
    of several needs the rest of torchrun's variables: a missing one is an InputError."""
    world = _environment_int("WORLD_SIZE", 1) or 1
    if world > 1:
        missing = [name for name in RENDEZVOUS_VARIABLES if name not in os.environ]
        if missing:
            raise _io.InputError(
                f"WORLD_SIZE={world} asks for {world} processes, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: start the run with "
                f"torchrun --nproc-per-node {world} -m structdrop reproduce deep ..., or unset "
                "WORLD_SIZE"
            )
        rank = _environment_int("RANK", 0)
        if rank is not None and rank >= world:
            raise _io.InputError(f"RANK must be below WORLD_SIZE={world}, got {rank}")
    _environment_int("LOCAL_RANK", 0)
    return world


@contextlib.contextmanager
def process_group(config: DeepConfig) -> Iterator[Processes]:
    """Join the process group that ``torchrun`` announces (``WORLD_SIZE`` > 1: NCCL on CUDA,
    else gloo) for the block, and leave it after; alone, just this process.

    Raises:
        InputError: the environment's ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is not an
            integer in range, or ``WORLD_SIZE`` > 1 without the rest of torchrun's variables.
    """
    joins = _world_size() > 1 and not dist.is_initialized()
    if joins:
        cuda = config.device != "cpu" and torch.cuda.is_available()
        _before_the_group()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield processes(config)
    finally:
        if joins:
            dist.destroy_process_group()


def _before_the_group() -> None:
    """Import what DistributedDataParallel imports on construction (the compiler, Dynamo)
    before the process group exists. Imported while a group exists, Dynamo keeps references
    to it, which outlive ``destroy_process_group``: the group's communication threads (gloo's)
    then run on into the interpreter's shutdown, where they abort the process now and then
    ("terminate called without an active exception")."""
    import torch._dynamo  # noqa: F401


@contextlib.contextmanager
def owning(out: Path, name: str, procs: Processes) -> Iterator[None]:
    """Own the result ``name`` in ``out`` for the block (:func:`structdrop._locks.owning`):
    process 0 holds the lock, and every process learns whether it got it, so that all of them
    refuse together when another run owns the name.

    Raises:
        ResultBusyError: another run owns the result.
    """
    with contextlib.ExitStack() as stack:
        refused: ResultBusyError | None = None
        if procs.main:
            try:
                stack.enter_context(own_results(out, [name]))
            except ResultBusyError as error:
                refused = error
        if procs.world > 1:
            flag = torch.tensor([float(refused is not None)], device=procs.device)
            if all_sum(flag, procs).item() > 0 and refused is None:
                refused = ResultBusyError(f"{out / name}.* is being written by another run")
        if refused is not None:
            raise refused
        yield


def stream_generator(seed: int, *keys: int, device: torch.device | None = None) -> torch.Generator:
    """A torch generator for the stream ``(seed, *keys)``: independent streams per key."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device=device or "cpu")
    generator.manual_seed(int(state) & ((1 << 63) - 1))
    return generator


def shard(indices: torch.Tensor, procs: Processes) -> torch.Tensor:
    """This process's contiguous part of a global batch (sizes differ by at most one)."""
    return torch.tensor_split(indices, procs.world)[procs.rank]


def all_sum(tensor: torch.Tensor, procs: Processes) -> torch.Tensor:
    """``tensor`` summed over the processes, in place."""
    if procs.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA when ``amp``; nothing otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` in the memory layout that the device's convolutions prefer."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
