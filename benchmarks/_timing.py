"""Timing for the benchmark scripts (shared by them, not part of the package)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


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


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA, else
    nothing."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def interleaved(
    steps: dict[str, Callable[[], object]],
    *,
    rounds: int,
    min_seconds: float = 0.0,
    sync: Callable[[], None] = lambda: None,
    seed: int | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every step in each of ``rounds`` rounds; the steps take turns round by
    round (each round of every step starting from the seed ``seed + round`` when ``seed`` is
    given). Every round is the same number of calls, enough for the first step's round to last
    ``min_seconds`` (one call by default)."""
    first = next(iter(steps.values()))
    calls = 1
    while True:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            first()
        sync()
        if time.perf_counter() - start >= min_seconds:
            break
        calls *= 2
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, step in steps.items():
            if seed is not None:
                torch.manual_seed(seed + r)
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                step()
            sync()
            times[name].append((time.perf_counter() - start) / calls)
    return times


def round_ratios(times: dict[str, list[float]], ours: str, base: str) -> list[float]:
    """``ours`` / ``base`` in each round."""
    return [a / b for a, b in zip(times[ours], times[base], strict=True)]
