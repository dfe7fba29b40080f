"""Cost of measuring a model's last layer with structdrop.HeadMonitor.

1. An eval pass of torchvision's ResNet-18 with a dropout head (``fc = Sequential(Dropout,
   Linear(512, 10))``) over a loader, without (``plain``: ``model(x)`` in eval mode without
   gradients) and with the monitor (``measure``: the same pass, the head's input captured and
   accumulated in float64, then the report). Interleaved round by round, median over rounds.
   Goal: at most 5 % over the plain pass.
2. The report for d = 2048 features and a = 1000 outputs (ImageNet's ResNet-50 head) against
   the floor of its linear algebra, one Cholesky solve ``U M = R`` of the same size, timed in
   the same run. Goal: at most 1 s on a 2-core CPU.

Run: ``python benchmarks/bench_head.py [--device cuda] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import scipy.linalg
import torch
import torchvision
from torch import nn

import structdrop as sd
from _timing import device_sync, interleaved


def eval_pass(options: argparse.Namespace) -> None:
    device = torch.device(options.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(512, 10))
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    size = options.image_size
    loader = [
        (
            torch.randn(options.batch_size, 3, size, size, generator=generator).to(device),
            torch.randint(10, (options.batch_size,), generator=generator).to(device),
        )
        for _ in range(options.batches)
    ]
    monitor = sd.HeadMonitor(model)

    def plain() -> None:
        with torch.no_grad():
            for x, _ in loader:
                model(x)

    def measure() -> None:
        monitor.measure(loader)

    for run in (plain, measure):  # warm-up
        run()
    times = interleaved(
        {"plain": plain, "measure": measure}, rounds=options.rounds, sync=device_sync(device)
    )
    base = statistics.median(times["plain"])
    images = options.batch_size * options.batches
    print(
        f"ResNet-18 eval pass, {images} images of {size}x{size} in batches of "
        f"{options.batch_size}, {device}, {torch.get_num_threads()} threads, median of "
        f"{options.rounds} rounds"
    )
    print(f"{'pass':<9} {'time (s)':>9} {'ratio':>7} {'overhead':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<9} {median:>9.3f} {median / base:>7.3f} {100 * (median / base - 1):>8.1f}%")


def report_cost(options: argparse.Namespace) -> None:
    d, a, n = 2048, 1000, 4096
    rng = np.random.default_rng(0)
    stats = sd.HeadStats(d, a)
    for _ in range(0, n, 1024):
        features = torch.from_numpy(rng.standard_normal((1024, d)))
        labels = torch.from_numpy(rng.integers(0, a, 1024))
        stats.update(features, labels)
    weight = torch.from_numpy(0.01 * rng.standard_normal((a, d)))
    M = stats.gram.numpy() * (1.0 + np.eye(d) * 3.0 / 7.0)
    R = stats.cross.numpy()
    laws = {"Bernoulli(0.3)": sd.Bernoulli(0.3), "GridBlock(0.3, 4)": sd.GridBlock(0.3, 4)}

    def floor() -> None:
        factor = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
        scipy.linalg.cho_solve(factor, R.T, check_finite=False)

    runs = {"Cholesky solve (floor)": floor}
    for name, law in laws.items():
        runs[f"report, {name}"] = lambda law=law: sd.head_report(stats, weight, law)
    for run in runs.values():
        run()
    times = interleaved(runs, rounds=max(3, options.rounds // 2))
    base = statistics.median(times["Cholesky solve (floor)"])
    print(f"\nhead_report, d = {d}, a = {a}, N = {n} (goal: at most 1 s)")
    print(f"{'computation':<28} {'time (s)':>9} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>9.3f} {median / base:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    eval_pass(options)
    report_cost(options)


if __name__ == "__main__":
    main()
