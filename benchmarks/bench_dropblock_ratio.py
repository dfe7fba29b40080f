"""DropBlock2d(0.1, 7) forward + backward against ``F.dropout``, the two taking turns.

``bench_layers.py`` times each layer in its own block of rounds, so a slow stretch of a shared
machine can fall on the baseline alone (``F.dropout`` took 15 ms in one run and 29 ms in the
next). Here ours and ``F.dropout`` alternate round by round on the same input, and the ratio is
taken per round: its median and range say how far the machine's noise moves it. The script
imports nothing of structdrop but ``structdrop.nn.functional.drop_block2d``, so an earlier
revision can be timed the same way, in its own process::

    git worktree add /tmp/rev <commit>
    PYTHONPATH=/tmp/rev/src python benchmarks/bench_dropblock_ratio.py

Goal (CPU eager): ours <= 0.25x ``F.dropout``.

Run: ``python benchmarks/bench_dropblock_ratio.py [--rounds 15] [--min-seconds 0.1] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import structdrop
from _timing import interleaved, round_ratios
from bench_layers import (
    BLOCK,
    CPU_SHAPES,
    DROPOUT_GOAL,
    P,
    _forward_backward,
    keep_freed_memory,
)
from structdrop.nn.functional import drop_block2d


def ratio_rounds(shape: tuple[int, ...], rounds: int, min_seconds: float) -> tuple:
    """Median ms per call of ours and of ``F.dropout``, and ours / ``F.dropout`` per round."""
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    steps = {
        "ours": _forward_backward(lambda x: drop_block2d(x, P, BLOCK), x, grad),
        "dropout": _forward_backward(lambda x: F.dropout(x, P), x, grad),
    }
    for _ in range(2):  # warm-up: caches, allocator
        for step in steps.values():
            for _ in range(5):
                step()
    times = interleaved(steps, rounds=rounds, min_seconds=min_seconds)
    ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    return ms["ours"], ms["dropout"], round_ratios(times, "ours", "dropout")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--min-seconds", type=float, default=0.1, help="seconds per round")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kept = keep_freed_memory()
    source = Path(structdrop.__file__).resolve().parents[1]
    print(
        f"structdrop from {source}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, freed memory kept by malloc: {kept}; {args.rounds} rounds of at least "
        f"{args.min_seconds} s"
    )
    print("\n| shape | ours ms | F.dropout ms | ratio per round: median (range) | goal |")
    print("|---|---|---|---|---|")
    missed = 0
    for shape in CPU_SHAPES:
        ours, dropout, ratios = ratio_rounds(shape, args.rounds, args.min_seconds)
        ratio = statistics.median(ratios)
        result = "ok" if ratio <= DROPOUT_GOAL else "miss"
        missed += result == "miss"
        print(
            f"| {shape} | {ours:.2f} | {dropout:.2f} | {ratio:.3f}x ({min(ratios):.3f}-"
            f"{max(ratios):.3f}) | <= {DROPOUT_GOAL}x {result} |"
        )
    print(f"\ngoals missed: {missed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
