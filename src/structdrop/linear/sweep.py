"""Run many independent trainings (schemes, drop rates, seeds) over the machine's cores.

Workers are started from a clean process (multiprocessing's ``forkserver`` where the platform
has it, else ``spawn``), never forked from the caller: they inherit none of its threads, locks
or signal handlers, and nothing the caller holds can leave them waiting for ever. Each worker
takes the caller's BLAS thread counts, so a job computes the same numbers as it would in the
calling process.

A sweep stops its workers when it is interrupted or a job raises: SIGTERM first (a worker
removes the file it was writing and exits), SIGKILL after :data:`STOP_SECONDS` for any that
has not exited; every wait of the teardown is bounded.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from .._files import process_alive, remove_temporaries_in_flight

__all__ = ["run_sweep"]

T = TypeVar("T")

#: Seconds between a worker's checks that the process that started it is still alive.
PARENT_POLL_SECONDS = 0.5
#: Seconds a stopped worker has to exit after SIGTERM before it is killed (SIGKILL), and the
#: bound of every other wait while a sweep is torn down.
STOP_SECONDS = 2.0


def _exit_now(status: int) -> None:
    remove_temporaries_in_flight()
    os._exit(status)


def _watch_parent(parent: int, server: int) -> None:
    """End this worker once the sweep's process is gone (killed with SIGKILL, say: the pool
    never notices), or once the worker's own parent (the fork server, which exits with the
    sweep's process) is. Runs in a daemon thread that blocks the signals meant for the main
    thread, so that the kernel always delivers them there."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    while process_alive(parent) and os.getppid() == server:
        time.sleep(PARENT_POLL_SECONDS)
    _exit_now(1)


def _start_worker(parent: int, blas_threads: dict[str, int]) -> None:
    """Worker initializer: SIGTERM (how a sweep stops its workers) exits at once, removing the
    file being written; SIGINT is left to the sweep's process (a Ctrl-C reaches the whole
    process group); the worker exits with the sweep's process; BLAS runs with the caller's
    thread counts."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _exit_now(128 + signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watcher = threading.Thread(
        target=_watch_parent,
        args=(parent, os.getppid()),
        name="structdrop-parent-watch",
        daemon=True,
    )
    watcher.start()
    _CALLER_BLAS_THREADS.update(blas_threads)  # taken by each job (_call)


#: In a worker: the thread count of each BLAS library of the sweep's caller, by file.
_CALLER_BLAS_THREADS: dict[str, int] = {}


def _blas_threads() -> dict[str, int]:
    """The calling process's thread count of each BLAS library it has loaded, by file
    (threadpoolctl), or nothing when threadpoolctl is not installed. Each library counts on its
    own: one that runs a single thread whatever it is told (as some bundled OpenBLAS builds do)
    says nothing of the others."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    return {
        info["filepath"]: int(info["num_threads"])
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    }


def _take_blas_threads(counts: dict[str, int]) -> None:
    """Give each BLAS library loaded here that the caller has loaded too the caller's thread
    count (the others keep their defaults)."""
    if not counts:
        return
    from threadpoolctl import ThreadpoolController

    for library in ThreadpoolController().lib_controllers:
        threads = counts.get(library.filepath)
        if threads is not None and library.num_threads != threads:
            library.set_num_threads(threads)


#: Modules the fork server imports once, so that each worker starts with them loaded.
PRELOAD = ("structdrop.linear", "structdrop.objectives", "structdrop.optimum")


def _context() -> Any:
    """A multiprocessing context whose workers start from a clean process: forked from a fork
    server that has loaded :data:`PRELOAD` (``spawn`` where there is no fork server)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def _call(function: Callable[..., T], kwargs: dict[str, Any]) -> T:
    """One job in a worker. Its exception goes back to the parent pickled and is rebuilt there
    from its ``args``; one whose constructor takes other arguments cannot be rebuilt, and the
    pool would then report a worker that "terminated abruptly" instead of the error. Such an
    exception is replaced by a RuntimeError that names it (its traceback goes along)."""
    _take_blas_threads(_CALLER_BLAS_THREADS)  # also those the job's module loaded
    try:
        return function(**kwargs)
    except Exception as error:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            name = f"{type(error).__module__}.{type(error).__qualname__}"
            raise RuntimeError(f"{name}: {error}") from error
        raise


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a sweep now: cancel the jobs not started, SIGTERM the workers, SIGKILL those still
    running after :data:`STOP_SECONDS`, and wait (bounded) for the pool's manager thread.

    The pool's internals are read before ``shutdown``, which forgets them; jobs left in the
    pipe to the dead workers are dropped, so that nothing waits to send them at exit."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    call_queue = getattr(pool, "_call_queue", None)
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(STOP_SECONDS)
    if call_queue is not None:
        call_queue.cancel_join_thread()
    if manager is not None:
        manager.join(STOP_SECONDS)


def run_sweep(
    function: Callable[..., T], jobs: Sequence[dict[str, Any]], n_jobs: int | None = None
) -> list[T]:
    """``[function(**kwargs) for kwargs in jobs]``, computed in parallel processes.

    Worker processes exit within about a second when the calling process dies, however it dies,
    and are stopped at once when the sweep is interrupted (an exception, Ctrl-C, SIGTERM); the
    first job to raise stops the sweep, and its exception is raised here.

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
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context(),
        initializer=_start_worker,
        initargs=(os.getpid(), _blas_threads()),
    )
    try:
        futures = [pool.submit(_call, function, dict(kwargs)) for kwargs in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)  # a failed job ends the wait at once
        for future in futures:
            if future.done() and future.exception() is not None:
                future.result()  # raises the failure of the first job, in job order, that failed
        results = [future.result() for future in futures]
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return results
