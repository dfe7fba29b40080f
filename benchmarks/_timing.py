"""Timing for the benchmark scripts (shared by them, not part of the package)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(
    function: Callable[[], object], *, repeat: int = 7, min_seconds: float = 0.05
) -> float:
    """Median seconds per call over ``repeat`` rounds, each long enough to time reliably."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            function()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
        calls *= 2
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        rounds.append((time.perf_counter() - start) / calls)
    rounds.sort()
    return rounds[len(rounds) // 2]
