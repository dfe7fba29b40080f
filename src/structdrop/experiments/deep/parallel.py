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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import _io
from .config import DeepConfig

__all__ = [
    "Processes",
    "all_gather_rows",
    "all_sum",
    "autocast",
    "channels_last",
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


@contextlib.contextmanager
def process_group(config: DeepConfig) -> Iterator[Processes]:
    """Join the process group that ``torchrun`` announces (``WORLD_SIZE`` > 1: NCCL on CUDA,
    else gloo) for the block, and leave it after; alone, just this process."""
    joins = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if joins:
        cuda = config.device != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield processes(config)
    finally:
        if joins:
            dist.destroy_process_group()


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


def all_gather_rows(rows: torch.Tensor, total: int, procs: Processes) -> torch.Tensor:
    """The rows of every process, in rank order, when process ``k`` holds those of its
    :func:`shard` of ``range(total)``."""
    if procs.world == 1:
        return rows
    sizes = [len(part) for part in torch.tensor_split(torch.arange(total), procs.world)]
    padded = rows.new_zeros((sizes[0], *rows.shape[1:]))  # the first shard is the largest
    padded[: len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA when ``amp``; nothing otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` in the memory layout that the device's convolutions prefer."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
