"""Training step of ResNets with DropBlock: converted to ours against the original (ratios).

1. One training step (``zero_grad``, forward, cross-entropy loss, backward, a
   ``torch.optim.SGD(lr=0.01)`` step) of each model with its original DropBlock layers against
   a deep copy (same weights) converted by ``structdrop.nn.convert_dropblock``, eager and
   compiled (``torch.compile(model)``, default inductor; ``--fullgraph`` adds
   ``fullgraph=True``). Models, ``num_classes=10``, no pretrained weights, nothing downloaded:

   * timm ``resnet18`` and ``resnet50`` with ``drop_block_rate=0.1`` (timm puts its
     ``DropBlock2d`` in every block of layer3, block 5, and layer4, block 3);
   * torchvision ``resnet18`` with ``torchvision.ops.DropBlock2d(0.1, 3)`` after layer3 and
     after layer4.

   Inputs: CPU, a batch of 8 random 3x96x96 images; CUDA, 64 of 3x128x128 (``--batch``,
   ``--size``). Not 64x64 or 32x32 on the CPU: there layer4's (or layer3's) map is 2x2, where
   torchvision's layer shrinks its block to 2 and raises (even block size); the torchvision
   model is skipped, with the reason printed, at such sizes.
2. ``structdrop.nn.DropBlock2d(0.1, 7)`` compiled (``fullgraph=True``), forward + backward on
   (32, 256, 14, 14) float32, against the same layer eager and against compiled
   ``F.dropout(x, 0.1)``.

Every comparison runs in one process on the same inputs: the variants take turns round by
round (A B A B ...), each round of a variant starting from the same seed, so that a busy
machine slows them alike. A round is as many calls as make the first variant's round last
``--min-seconds`` (CUDA: ``torch.cuda.synchronize`` before and after it); times are medians
over ``--rounds`` rounds and each ratio is the median of the per-round ratios (their range is
printed beside it; the load average at the start and the end tells whether other processes
shared the CPU). Compiled models
are warmed up (their first steps compile) before timing; the compile time, the first compiled
step, is printed apart. Goals, marked ``ok`` or ``miss``: converted / original <= 1.05x per
model, eager and compiled; compiled DropBlock2d <= 1.2x eager DropBlock2d and <= 1.2x compiled
``F.dropout``. Large CPU buffers are kept by the C allocator after they are freed (``mallopt``,
as in ``bench_layers.py``); ``--system-malloc`` leaves the allocator as it is.

Run: ``python benchmarks/bench_models.py [--device cuda] [--quick] [--threads 2]``
(CPU, 2 cores, idle: about 6 minutes with an empty inductor cache, 4 of them compiling; 2 to 3
when the cache already holds the graphs). On a CPU shared with other busy processes,
``--threads 1``: with as many threads as cores, every parallel region waits for a thread the
system has descheduled, which made steps up to 60x slower here and the ratios meaningless.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _timing import device_sync, interleaved, round_ratios
from structdrop import nn as sdnn

try:
    from _timing import keep_freed_memory
except ImportError:
    from bench_layers import keep_freed_memory

P = 0.1
CLASSES = 10
MODEL_GOAL, LAYER_GOAL = 1.05, 1.2
LAYER_BLOCK = 7
LAYER_SHAPE, QUICK_LAYER_SHAPE = (32, 256, 14, 14), (8, 64, 14, 14)
QUICK_MODELS = ("timm resnet18", "torchvision resnet18")

Step = Callable[[], None]


# ----------------------------------------------------------------------------------------------
# Models


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES, drop_block_rate=P)

    return build


def _torchvision_resnet18() -> nn.Module:
    from torchvision.models import resnet18
    from torchvision.ops import DropBlock2d

    model = resnet18(weights=None, num_classes=CLASSES)
    model.layer3 = nn.Sequential(model.layer3, DropBlock2d(P, 3))
    model.layer4 = nn.Sequential(model.layer4, DropBlock2d(P, 3))
    return model


MODELS: dict[str, Callable[[], nn.Module]] = {
    "timm resnet18": _timm("resnet18"),
    "timm resnet50": _timm("resnet50"),
    "torchvision resnet18": _torchvision_resnet18,
}


def _skip_reason(name: str, size: int) -> str | None:
    """Why a model cannot run at ``size`` (None when it can)."""
    if not name.startswith("torchvision"):
        return None
    maps = {"layer3": math.ceil(size / 16), "layer4": math.ceil(size / 32)}
    small = [f"{layer} {side}x{side}" for layer, side in maps.items() if side == 2]
    if small:
        return (
            f"torchvision's DropBlock2d raises on a 2x2 map ({', '.join(small)} at "
            f"{size}x{size}: block 3 shrinks to 2, an even size); use --size <= 16 or >= 65"
        )
    return None


def _dropblock_layers(model: nn.Module) -> tuple[int, int]:
    """(DropBlock layers of other packages, our DropBlock2d layers) in ``model``."""
    ours = sum(isinstance(m, sdnn.DropBlock2d) for m in model.modules())
    others = sum(
        type(m).__name__.lower().startswith("dropblock") and not isinstance(m, sdnn.DropBlock2d)
        for m in model.modules()
    )
    return others, ours


def twins(name: str, device: str) -> tuple[nn.Module, nn.Module, int]:
    """The model with its original DropBlock, its converted deep copy (same weights) and the
    number of layers replaced; both in training mode on ``device``."""
    torch.manual_seed(0)
    original = MODELS[name]()
    converted = sdnn.convert_dropblock(copy.deepcopy(original))
    before, _ = _dropblock_layers(original)
    left, ours = _dropblock_layers(converted)
    if before == 0 or left or ours != before:
        raise RuntimeError(
            f"{name}: {before} DropBlock layers before conversion, {left} left and {ours} of "
            "ours after"
        )
    return original.to(device).train(), converted.to(device).train(), ours


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


# ----------------------------------------------------------------------------------------------
# Timing


def _ratio_cells(ratios: list[float]) -> str:
    """The median of the per-round ratios and their range, as two table cells."""
    return f"{statistics.median(ratios):.3f}x | {min(ratios):.2f}-{max(ratios):.2f}"


def warm_up(step: Step, sync: Callable[[], None], calls: int = 2) -> float:
    """Run ``step`` once and return its seconds (a compiled model's compile time), then
    ``calls`` more times (caches, allocator)."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    seconds = time.perf_counter() - start
    for _ in range(calls):
        step()
    sync()
    return seconds


# ----------------------------------------------------------------------------------------------
# Benchmarks

# model, mode, layers, original s, converted s, per-round converted / original
Row = tuple[str, str, int, float, float, list[float]]


def time_models(args: argparse.Namespace, names: list[str]) -> tuple[list[Row], list[tuple]]:
    """Rows of the model table and (model, original compile s, converted compile s)."""
    sync = device_sync(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(args.device)
    y = torch.randint(0, CLASSES, (args.batch,), generator=generator).to(args.device)
    rows: list[Row] = []
    compile_times: list[tuple] = []
    for name in names:
        reason = _skip_reason(name, args.size)
        if reason is not None:
            print(f"{name}: skipped: {reason}", flush=True)
            continue
        try:
            original, converted, layers = twins(name, args.device)
        except ImportError as error:
            print(f"{name}: skipped: {error}", flush=True)
            continue
        for mode in args.modes:
            torch._dynamo.reset()
            if mode == "compiled":
                models = {
                    "original": torch.compile(original, fullgraph=args.fullgraph),
                    "converted": torch.compile(converted, fullgraph=args.fullgraph),
                }
            else:
                models = {"original": original, "converted": converted}
            steps = {key: train_step(model, x, y) for key, model in models.items()}
            torch.manual_seed(args.seed)
            first = {key: warm_up(step, sync) for key, step in steps.items()}
            if mode == "compiled":
                compile_times.append((name, first["original"], first["converted"]))
            times = interleaved(
                steps,
                rounds=args.rounds,
                min_seconds=args.min_seconds,
                sync=sync,
                seed=args.seed,
            )
            rows.append(
                (
                    name,
                    mode,
                    layers,
                    statistics.median(times["original"]),
                    statistics.median(times["converted"]),
                    round_ratios(times, "converted", "original"),
                )
            )
            print(f"timed {name} {mode}", flush=True)
    torch._dynamo.reset()
    return rows, compile_times


LayerTimes = tuple[tuple[int, ...], dict[str, float], dict[str, list[float]]]


def time_layer(args: argparse.Namespace) -> LayerTimes:
    """The shape, the median seconds of the three variants, and compiled DropBlock2d / each
    baseline in each round."""
    sync = device_sync(args.device)
    shape = QUICK_LAYER_SHAPE if args.quick else LAYER_SHAPE
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(shape, generator=generator).to(args.device).requires_grad_()
    grad = torch.randn(shape, generator=generator).to(args.device)
    layer = sdnn.DropBlock2d(P, LAYER_BLOCK).train()
    torch._dynamo.reset()
    variants = {
        "compiled DropBlock2d": torch.compile(layer, fullgraph=True, dynamic=False),
        "eager DropBlock2d": layer,
        "compiled F.dropout": torch.compile(
            lambda t: F.dropout(t, P), fullgraph=True, dynamic=False
        ),
    }

    def forward_backward(function: Callable[[torch.Tensor], torch.Tensor]) -> Step:
        def step() -> None:
            function(x).backward(grad)
            x.grad = None

        return step

    steps = {name: forward_backward(function) for name, function in variants.items()}
    for step in steps.values():
        warm_up(step, sync)
    times = interleaved(
        steps,
        rounds=args.rounds,
        min_seconds=args.min_seconds,
        sync=sync,
        seed=args.seed,
    )
    torch._dynamo.reset()
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {
        base: round_ratios(times, "compiled DropBlock2d", base)
        for base in ("eager DropBlock2d", "compiled F.dropout")
    }
    return shape, medians, ratios


# ----------------------------------------------------------------------------------------------
# Tables


def _mark(ratio: float, goal: float) -> str:
    return "ok" if ratio <= goal else "miss"


def print_models(args: argparse.Namespace, rows: list[Row], compile_times: list[tuple]) -> int:
    """Print the model table with its goals; return the number of goals missed."""
    compiled = "torch.compile(fullgraph=True)" if args.fullgraph else "torch.compile"
    print(
        f"\nTraining step (zero_grad, forward, cross-entropy, backward, SGD lr=0.01), batch "
        f"{args.batch} of 3x{args.size}x{args.size}, float32, {args.device}, compiled = "
        f"{compiled}: median ms over {args.rounds} interleaved rounds, converted / original "
        "(median of per-round ratios)\n"
    )
    print(
        "| model | mode | DropBlock layers | original ms | converted ms | converted / original "
        "| rounds' range | goal | result |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    missed = 0
    for name, mode, layers, original, converted, ratios in rows:
        mark = _mark(statistics.median(ratios), MODEL_GOAL)
        missed += mark == "miss"
        print(
            f"| {name} | {mode} | {layers} | {1e3 * original:.2f} | {1e3 * converted:.2f} | "
            f"{_ratio_cells(ratios)} | <= {MODEL_GOAL}x | {mark} |"
        )
    if compile_times:
        print("\nCompile time (the first compiled training step, not in the times above)\n")
        print("| model | original s | converted s |")
        print("|---|---|---|")
        for name, original, converted in compile_times:
            print(f"| {name} | {original:.1f} | {converted:.1f} |")
    return missed


def print_layer(layer: LayerTimes, rounds: int) -> int:
    """Print the layer table with its goals; return the number of goals missed."""
    shape, medians, ratios = layer
    print(
        f"\nDropBlock2d({P}, {LAYER_BLOCK}) forward+backward, {shape} float32, compiled with "
        f"fullgraph=True: median ms over {rounds} interleaved rounds\n"
    )
    print("| " + " | ".join(f"{name} ms" for name in medians) + " |")
    print("|" + "---|" * len(medians))
    print("| " + " | ".join(f"{1e3 * t:.3f}" for t in medians.values()) + " |")
    print("\n| ours | baseline | ratio | rounds' range | goal | result |")
    print("|---|---|---|---|---|---|")
    missed = 0
    for base, per_round in ratios.items():
        mark = _mark(statistics.median(per_round), LAYER_GOAL)
        missed += mark == "miss"
        print(
            f"| compiled DropBlock2d | {base} | {_ratio_cells(per_round)} | <= {LAYER_GOAL}x | "
            f"{mark} |"
        )
    return missed


def _load() -> str:
    """The system's 1-minute load average ("?" where there is none), flagged when it exceeds
    the threads used (other processes then shared the CPU)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "?"
    busy = load > torch.get_num_threads() + 0.5
    return f"{load:.1f}" + (" (more than the threads used: the CPU was shared)" if busy else "")


# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--quick", action="store_true", help="batch 2, the resnet18s, 3 rounds, a smaller layer"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--batch", type=int, default=None, help="default: cpu 8, cuda 64")
    parser.add_argument(
        "--size", type=int, default=None, help="image side (default: cpu 96, cuda 128)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="default: 9 (quick: 3)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help="least seconds of a round (default: 0.3, quick: 0.05)",
    )
    parser.add_argument(
        "--models", default=None, help=f"comma-separated, of: {', '.join(MODELS)} (default: all)"
    )
    parser.add_argument(
        "--modes", default="eager,compiled", help="comma-separated: eager, compiled"
    )
    parser.add_argument(
        "--fullgraph", action="store_true", help="compile the models with fullgraph=True"
    )
    parser.add_argument("--no-layer", action="store_true", help="skip the DropBlock2d table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--system-malloc", action="store_true", help="do not ask glibc to keep freed memory"
    )
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.quick:
        defaults = {"batch": 2, "size": 96, "rounds": 3, "min_seconds": 0.05}
    else:
        defaults = {"batch": 64 if cuda else 8, "size": 128 if cuda else 96, "rounds": 9}
        defaults["min_seconds"] = 0.3
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else MODELS)
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; the models are {list(MODELS)}")
    args.modes = args.modes.split(",")
    if not set(args.modes) <= {"eager", "compiled"} or not args.modes:
        parser.error("--modes: eager, compiled or both")
    if args.batch < 2 or args.size < 1 or args.rounds < 1 or args.min_seconds < 0:
        parser.error("--batch >= 2 (batch norm), --size >= 1, --rounds >= 1, --min-seconds >= 0")
    kept = False if args.system_malloc else keep_freed_memory()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if cuda else platform.processor()
    versions = []
    for package in ("torchvision", "timm"):
        try:
            versions.append(f"{package} {__import__(package).__version__}")
        except ImportError:
            versions.append(f"{package} not installed")
    print(
        f"torch {torch.__version__}, {', '.join(versions)}, device {args.device} "
        f"({where or 'cpu'}), {torch.get_num_threads()} threads, freed memory kept by malloc: "
        f"{kept}, {args.rounds} rounds of >= {args.min_seconds} s, load average {_load()}"
    )
    started = time.perf_counter()
    rows, compile_times = time_models(args, names)
    layer = None if args.no_layer else time_layer(args)
    missed = print_models(args, rows, compile_times)
    if layer is not None:
        missed += print_layer(layer, args.rounds)
    print(
        f"\ngoals missed: {missed}; wall time {time.perf_counter() - started:.0f} s; load average "
        f"{_load()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
