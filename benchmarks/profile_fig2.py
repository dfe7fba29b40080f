"""Where a Fig. 2 training step and evaluation spend their time, on this machine.

Builds the default Fig. 2 run (ResNet-50, digits at 16x16, batch 50, fused Adam), times training
steps and evaluations with the convolutions of 1x1 maps as matrix products (the experiment's
network) and as plain ``nn.Conv2d`` (the baseline, same weights, same process), prints the
ratio, and the ``torch.profiler`` table of the operators of both.

    python benchmarks/profile_fig2.py [--steps 8] [--rows 12]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from structdrop.experiments.deep.config import DeepConfig
from structdrop.experiments.deep.model import PointAwareConv2d
from structdrop.experiments.deep.recipe import Recipe


def _plain(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) is PointAwareConv2d:
            module.__class__ = nn.Conv2d


def _measure(recipe: Recipe, steps: int, rows: int, label: str) -> tuple[float, float]:
    batches = torch.randperm(len(recipe.data), generator=torch.Generator().manual_seed(0))
    batches = batches.split(recipe.config.batch_size)
    for i in range(2):  # warm-up
        recipe.train_step(batches[i % len(batches)], i)
    began = time.perf_counter()
    for i in range(steps):
        recipe.train_step(batches[i % len(batches)], i)
    step = (time.perf_counter() - began) / steps
    recipe.evaluate_at(0)
    began = time.perf_counter()
    recipe.evaluate_at(0)
    evaluation = time.perf_counter() - began
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(4):
            recipe.train_step(batches[i % len(batches)], i)
    print(f"\n== {label}: 4 training steps, by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return step, evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    recipe = Recipe(DeepConfig())
    recipe.setup()
    fast = _measure(recipe, args.steps, args.rows, "1x1 maps as matrix products")
    _plain(recipe.model)
    plain = _measure(recipe, args.steps, args.rows, "plain nn.Conv2d (baseline)")
    per_epoch = recipe.steps_per_epoch
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| | plain nn.Conv2d | 1x1 maps as products | ratio |")
    print("|---|---|---|---|")
    for name, a, b in (
        ("training step (s)", plain[0], fast[0]),
        ("evaluation (s)", plain[1], fast[1]),
        ("epoch (s)", per_epoch * plain[0] + plain[1], per_epoch * fast[0] + fast[1]),
    ):
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
