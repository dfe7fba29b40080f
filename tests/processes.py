"""Helpers for the tests that run several processes: a free port, a gloo group, and a spawn
that a hang fails instead of stalling the suite."""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_gloo_group(rank: int, world: int, port: int) -> None:
    """Join a gloo group of ``world`` processes over ``tcp://127.0.0.1:port``, one thread each.

    Dynamo is imported before the group exists: imported while a group exists (as
    DistributedDataParallel and torch.compile import it), it keeps references that outlive
    ``destroy_process_group``, with gloo's threads running on into the interpreter's shutdown,
    where they may abort the process."""
    import torch
    import torch._dynamo
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )


def spawn(function: Callable[..., Any], args: tuple[Any, ...], processes: int = 2) -> None:
    """``torch.multiprocessing.spawn(function, args, processes)``, killed and failed after 300 s
    (a hang fails the test instead of the suite)."""
    import torch.multiprocessing as mp

    context = mp.spawn(function, args=args, nprocs=processes, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {processes} processes did not finish within 300 s")
