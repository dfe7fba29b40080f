"""One BLAS thread for small dense work.

A multi-threaded BLAS (OpenBLAS here) splits even small products and factorizations over its
threads, which then wait for each other. On an idle machine that costs little; on a busy one
(a training job beside us, a DataLoader worker) each wait is a trip through the OS scheduler,
and a 17 ms closed-form optimum took 140 ms to 3.5 s. Work below :data:`SMALL_WORK_FLOPS`
multiply-adds therefore runs with one BLAS thread, through threadpoolctl, scoped to the call:
the caller's own thread settings are restored afterwards. The threshold comes from
``benchmarks/bench_optimum.py``, which times the same work with one and with all threads.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

__all__ = ["SMALL_WORK_FLOPS", "small_work"]

#: Below this many multiply-adds one BLAS thread is the better bet on this 2-core machine
#: (docs/optimum_benchmark.md): with a core really free a second thread saves 15-25%, with it
#: taken by other work it costs 1.5x to 67x; at 10x the paper's sizes (3.4e10) a second thread
#: pays even on a loaded machine.
SMALL_WORK_FLOPS = 1e9


@functools.lru_cache(maxsize=1)
def _blas_libraries() -> tuple[Any, ...]:
    """threadpoolctl's controllers of the BLAS libraries loaded at first use (NumPy's)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it the work runs with the BLAS defaults
        return ()
    controllers = ThreadpoolController().lib_controllers
    return tuple(library for library in controllers if library.user_api == "blas")


@contextlib.contextmanager
def small_work(flops: float) -> Iterator[None]:
    """Run the block with one BLAS thread when it is ``flops`` multiply-adds of small work,
    and give the BLAS back the caller's thread counts afterwards (about 2 us each way)."""
    libraries = _blas_libraries() if flops < SMALL_WORK_FLOPS else ()
    saved = [library.get_num_threads() for library in libraries]
    for library, threads in zip(libraries, saved, strict=True):
        if threads != 1:
            library.set_num_threads(1)
    try:
        yield
    finally:
        for library, threads in zip(libraries, saved, strict=True):
            if threads != 1:
                library.set_num_threads(threads)
