"""Run many independent trainings (schemes, drop rates, seeds) over the machine's cores."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from .._files import remove_temporaries_in_flight

__all__ = ["run_sweep"]

T = TypeVar("T")

#: Seconds between a worker's checks that the process that started it is still alive.
PARENT_POLL_SECONDS = 0.5


def _exit_now(status: int) -> None:
    remove_temporaries_in_flight()
    os._exit(status)


def _exit_with_parent() -> None:
    """Worker initializer: a daemon thread ends this worker as soon as its parent is gone
    (killed with SIGKILL, say), which the pool itself never notices, so no orphan keeps a core;
    SIGTERM (how an interrupted sweep stops its workers) ends it at once too. Either way the
    file the worker was writing is removed, not left half-written."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        _exit_now(1)

    threading.Thread(target=watch, name="structdrop-parent-watch", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda signum, frame: _exit_now(128 + signum))


def _call(function: Callable[..., T], kwargs: dict[str, Any]) -> T:
    """One job in a worker. Its exception goes back to the parent pickled and is rebuilt there
    from its ``args``; one whose constructor takes other arguments cannot be rebuilt, and the
    pool would then report a worker that "terminated abruptly" instead of the error. Such an
    exception is replaced by a RuntimeError that names it (its traceback goes along)."""
    try:
        return function(**kwargs)
    except Exception as error:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            name = f"{type(error).__module__}.{type(error).__qualname__}"
            raise RuntimeError(f"{name}: {error}") from error
        raise


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now (an interrupted sweep must not wait for its jobs)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def run_sweep(
    function: Callable[..., T], jobs: Sequence[dict[str, Any]], n_jobs: int | None = None
) -> list[T]:
    """``[function(**kwargs) for kwargs in jobs]``, computed in parallel processes.

    Worker processes exit within about a second when the calling process dies, however it dies,
    and are stopped at once when the sweep is interrupted (an exception, Ctrl-C, SIGTERM).

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
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent)
    try:
        futures = [pool.submit(_call, function, dict(kwargs)) for kwargs in jobs]
        return [future.result() for future in futures]
    except BaseException:
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
