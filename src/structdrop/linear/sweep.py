"""Run many independent trainings (schemes, drop rates, seeds) over the machine's cores."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_sweep"]

T = TypeVar("T")


def run_sweep(
    function: Callable[..., T], jobs: Sequence[dict[str, Any]], n_jobs: int | None = None
) -> list[T]:
    """``[function(**kwargs) for kwargs in jobs]``, computed in parallel processes.

    Args:
        function: a picklable (module-level) function.
        jobs: one keyword dict per call.
        n_jobs: number of processes (default: the machine's cores); 1 runs in this process.

    Returns:
        The results, in the order of ``jobs``.
    """
    workers = os.cpu_count() or 1 if n_jobs is None else int(n_jobs)
    if workers < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    workers = min(workers, max(len(jobs), 1))
    if workers == 1:
        return [function(**kwargs) for kwargs in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(function, **kwargs) for kwargs in jobs]
        return [future.result() for future in futures]
