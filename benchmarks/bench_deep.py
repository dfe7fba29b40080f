"""Cost of structured dropout in the Fig. 2 network (Sec. 5.2): one training step of
``ResNet-50 -> Linear(2048, 80) -> dropout -> Linear(80, 10)`` with and without the dropout.

Three variants, timed in the same process, interleaved round by round (so that a busy machine
slows them alike), median over rounds:

* ``none``: the network without dropout (the layer replaced by ``nn.Identity``);
* ``layer``: ``StructuredDropout(GridBlock(p, 5))`` drawing its masks in ``forward``;
* ``global masks``: the experiment's path, masks of the global batch drawn with a seeded
  generator outside the model and passed in (what makes DDP match one process).

A step is ``zero_grad``, forward, summed squared loss, backward and a fused Adam step. The goal
is an overhead under 5 %. Run: ``python benchmarks/bench_deep.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable

import torch
from torch import nn

from _timing import device_sync, interleaved
from structdrop.experiments.deep.config import DeepConfig
from structdrop.experiments.deep.model import build_model
from structdrop.experiments.deep.parallel import stream_generator


def _step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[torch.Tensor | None], None]:
    def run(scale: torch.Tensor | None) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):
            output = model(x, scale)
        ((output.float() - y) ** 2).sum().backward()
        optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trunk", default="resnet50")
    options = parser.parse_args()
    device = torch.device(options.device)

    config = DeepConfig(trunk=options.trunk, image_size=options.image_size)
    model = build_model(config, classes=10).to(device)
    without = build_model(config, classes=10).to(device)
    without.dropout = nn.Identity()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        without = without.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(
        options.batch_size, 3, options.image_size, options.image_size, generator=generator
    )
    x = x.to(device)
    y = torch.nn.functional.one_hot(torch.arange(options.batch_size) % 10, 10).to(device)
    steps = {
        "none": _step(without, torch.optim.Adam(without.parameters(), fused=True), x, y),
        "layer": _step(model, torch.optim.Adam(model.parameters(), fused=True), x, y),
    }
    layer_step = steps["layer"]
    counter = iter(range(10**9))

    def global_masks(_: torch.Tensor | None) -> None:
        ones = torch.ones(options.batch_size, config.width)
        scale = model.dropout(ones, generator=stream_generator(0, 2, next(counter)))
        layer_step(scale.to(device))

    steps["global masks"] = global_masks
    model.train()
    without.train()
    for step in steps.values():  # warm-up (allocator, oneDNN/cuDNN kernel choice)
        step(None)
        step(None)
    times = interleaved(
        {name: functools.partial(step, None) for name, step in steps.items()},
        rounds=options.rounds,
        sync=device_sync(device),
    )

    base = statistics.median(times["none"])
    print(
        f"{options.trunk}, batch {options.batch_size}, {options.image_size}x{options.image_size}, "
        f"{device}, {torch.get_num_threads()} threads, median of {options.rounds} rounds"
    )
    print(f"{'variant':<14} {'step (ms)':>10} {'ratio':>7} {'overhead':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<14} {1e3 * median:>10.1f} {median / base:>7.3f} "
            f"{100 * (median / base - 1):>8.1f}%"
        )


if __name__ == "__main__":
    main()
