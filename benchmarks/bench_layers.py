"""Structured dropout layers against torchvision, timm and ``dropblock`` (ratios in one process).

1. Forward + backward time of 2-D DropBlock, block 7, p = 0.1, against
   ``torchvision.ops.drop_block2d``, timm's ``drop_block_2d`` (default: channels share a mask;
   and per channel), ``dropblock.DropBlock2D`` (CPU only: it draws on the CPU) and ``F.dropout``,
   the memory-bandwidth floor. CPU: (32, 256, 14, 14) and (32, 64, 56, 56) in float32, eager.
   CUDA: those and (128, 256, 28, 28), float32 and bfloat16, eager and compiled
   (``torch.compile(fullgraph=True)``, ours against the others compiled alike).
2. Every speed goal of the layers as a ratio measured in the same run, marked ``ok`` or ``miss``:
   CPU eager: ours (independent) <= 0.25x torchvision and <= 0.25x ``F.dropout``, ours
   (shared channels) <= 1.0x timm's default. CUDA eager: ours (independent) <= 1.0x
   torchvision, ours (shared) <= 1.0x timm's default; CUDA compiled: ours (independent)
   <= 1.2x compiled ``F.dropout`` at (128, 256, 28, 28).
3. ``block_dropout`` (the paper's grid DropBlock) against ``F.dropout`` on (256, 4096).
4. What a forward pass keeps for its backward pass on a CPU (the sparse sampler's dropped
   windows, int64 positions), against the bytes of the input.
5. The drop rate each library actually applies at 14x14 and 7x7, block 7, p = 0.1: the mean over
   the map, the corner unit and the centre unit, estimated from many masks (docs/theory.md, "What
   existing layers get wrong"), beside our exact values.

CPU timings take the median of rounds of calls (``_timing.best_time``); CUDA timings time a
round of calls between two CUDA events, with no host sync inside the round. Large CPU buffers
(25 MB at (32, 64, 56, 56)) are kept by the C allocator after they are freed (``mallopt``), so
that no layer's time depends on whether its output happened to need fresh pages from the system;
``--system-malloc`` leaves the allocator as it is.

Run: ``python benchmarks/bench_layers.py [--device cuda] [--quick] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _timing import best_time
from structdrop.nn.functional import drop_block2d, drop_block_keep_prob, window_drop_prob

P, BLOCK = 0.1, 7
CPU_SHAPES = ((32, 256, 14, 14), (32, 64, 56, 56))
CUDA_SHAPES = ((32, 256, 14, 14), (32, 64, 56, 56), (128, 256, 28, 28))
QUICK_SHAPES = ((8, 64, 14, 14), (8, 16, 28, 28))
GOAL_SHAPE = (128, 256, 28, 28)
#: CPU eager goal: ours (independent) forward + backward at most this times ``F.dropout``.
DROPOUT_GOAL = 0.25
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

Layer = Callable[[torch.Tensor], torch.Tensor]


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from its heap and keep freed memory (no page faults)."""
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        for size in (1 << 30, 1 << 25):
            if libc.mallopt(m_mmap_threshold, size):
                return bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        pass
    return False


# ----------------------------------------------------------------------------------------------
# Layers


def _baselines(device: str) -> dict[str, Layer]:
    """The other libraries' 2-D DropBlock as functions of the input (absent ones skipped)."""
    found: dict[str, Layer] = {}
    try:
        from torchvision.ops import drop_block2d as tv_drop_block2d

        found["torchvision drop_block2d"] = lambda x: tv_drop_block2d(x, P, BLOCK)
    except ImportError:
        print("torchvision not installed: skipped")
    try:
        from timm.layers import drop_block_2d

        found["timm drop_block_2d (default)"] = lambda x: drop_block_2d(x, P, BLOCK)
        found["timm drop_block_2d (per channel)"] = lambda x: drop_block_2d(
            x, P, BLOCK, couple_channels=False
        )
    except ImportError:
        print("timm not installed: skipped")
    if device == "cpu":  # it draws its masks on the CPU and copies them to the device
        try:
            from dropblock import DropBlock2D

            found["dropblock.DropBlock2D"] = DropBlock2D(drop_prob=P, block_size=BLOCK).train()
        except ImportError:
            print("dropblock not installed: skipped")
    return found


def _ours(device: str) -> dict[str, Layer]:
    ours: dict[str, Layer] = {
        "ours (independent)": lambda x: drop_block2d(x, P, BLOCK),
        "ours (independent, clipped)": lambda x: drop_block2d(x, P, BLOCK, boundary="clipped"),
        "ours (shared channels)": lambda x: drop_block2d(x, P, BLOCK, shared_channels=True),
    }
    if device == "cpu":  # the sync-free sampler that accelerators use
        ours["ours (independent, dense)"] = lambda x: drop_block2d(x, P, BLOCK, method="dense")
    return ours


def eager_layers(device: str) -> dict[str, Layer]:
    floors: dict[str, Layer] = {"F.dropout": lambda x: F.dropout(x, P)}
    if device == "cpu":
        floors["F.dropout2d"] = lambda x: F.dropout2d(x, P)
    return {**floors, **_baselines(device), **_ours(device)}


COMPILED = (
    "F.dropout",
    "torchvision drop_block2d",
    "timm drop_block_2d (default)",
    "timm drop_block_2d (per channel)",
    "ours (independent)",
    "ours (shared channels)",
)


# ----------------------------------------------------------------------------------------------
# Timing


def cuda_time(function: Callable[[], None], *, repeat: int = 7, min_seconds: float = 0.05) -> float:
    """Median seconds per call over ``repeat`` rounds, each timed by two CUDA events around
    enough calls to last ``min_seconds`` (no host sync inside a round)."""
    torch.cuda.synchronize()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            function()
        torch.cuda.synchronize()
        if time.perf_counter() - start >= min_seconds:
            break
        calls *= 2
    rounds = []
    for _ in range(repeat):
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            function()
        end.record()
        end.synchronize()
        rounds.append(begin.elapsed_time(end) / 1e3 / calls)
    return statistics.median(rounds)


def _forward_backward(layer: Layer, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        layer(x).backward(grad)
        x.grad = None

    return run


def _time(layer: Layer, x: torch.Tensor, grad: torch.Tensor) -> float:
    run = _forward_backward(layer, x, grad)
    for _ in range(3):  # warm-up: caches, allocator, compilation
        run()
    if x.is_cuda:
        return cuda_time(run)
    return best_time(run, repeat=5, min_seconds=0.2)


def _compiled(layer: Layer) -> Layer:
    return torch.compile(layer, fullgraph=True, dynamic=False)


Config = tuple[str, tuple[int, ...], str]  # (mode, shape, dtype name)


def time_layers(
    device: str, shapes, dtypes: list[str], compiled_shapes
) -> dict[Config, dict[str, float]]:
    """Seconds per forward + backward for every layer and configuration (NaN: failed)."""
    layers = eager_layers(device)
    configs = [("eager", s, d) for d in dtypes for s in shapes]
    configs += [("compiled", s, d) for d in dtypes for s in compiled_shapes]
    times: dict[Config, dict[str, float]] = {}
    for mode, shape, dtype in configs:
        x = torch.randn(shape, device=device, dtype=DTYPES[dtype], requires_grad=True)
        grad = torch.randn(shape, device=device, dtype=DTYPES[dtype])
        names = list(layers) if mode == "eager" else [n for n in COMPILED if n in layers]
        times[(mode, shape, dtype)] = row = {}
        for name in names:
            torch._dynamo.reset()
            layer = layers[name] if mode == "eager" else _compiled(layers[name])
            try:
                row[name] = _time(layer, x, grad)
            except Exception as error:  # a baseline that does not compile: reported, not fatal
                print(f"{mode} {name} {shape} {dtype} failed: {type(error).__name__}: {error}")
                row[name] = math.nan
        print(f"timed {mode} {shape} {dtype}", flush=True)
    return times


# ----------------------------------------------------------------------------------------------
# Tables


def print_times(times: dict[Config, dict[str, float]]) -> None:
    print(f"\nDropBlock2d forward+backward, block {BLOCK}, p = {P}: ms and time / F.dropout\n")
    configs = list(times)
    names = list(dict.fromkeys(name for row in times.values() for name in row))
    head = " | ".join(f"{mode} {dtype} {shape}" for mode, shape, dtype in configs)
    print(f"| layer | {head} |")
    print("|" + "---|" * (1 + len(configs)))
    for name in names:
        cells = []
        for config in configs:
            t, floor = times[config].get(name, math.nan), times[config]["F.dropout"]
            cells.append("-" if math.isnan(t) else f"{1e3 * t:.3f} ({t / floor:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")


def _goals(device: str, times: dict[Config, dict[str, float]]) -> list[tuple]:
    """(mode, ours, baseline, goal, configurations) of the layers' speed goals."""
    eager = [c for c in times if c[0] == "eager"]
    if device == "cpu":
        return [
            ("eager", "ours (independent)", "torchvision drop_block2d", 0.25, eager),
            ("eager", "ours (independent)", "F.dropout", DROPOUT_GOAL, eager),
            ("eager", "ours (shared channels)", "timm drop_block_2d (default)", 1.0, eager),
        ]
    compiled = [c for c in times if c[0] == "compiled" and c[1] == GOAL_SHAPE]
    return [
        ("eager", "ours (independent)", "torchvision drop_block2d", 1.0, eager),
        ("eager", "ours (shared channels)", "timm drop_block_2d (default)", 1.0, eager),
        ("compiled", "ours (independent)", "F.dropout", 1.2, compiled),
    ]


def print_goals(device: str, times: dict[Config, dict[str, float]]) -> int:
    """Print every goal as ``ok`` or ``miss``; return the number missed."""
    print("\nGoals (ours / baseline, same run)\n")
    print("| mode | ours | baseline | dtype | shape | ratio | goal | result |")
    print("|---|---|---|---|---|---|---|---|")
    missed = 0
    for mode, ours, base, goal, configs in _goals(device, times):
        for config in configs:
            row = times[config]
            if base not in row or ours not in row:
                continue
            ratio = row[ours] / row[base]
            result = "ok" if ratio <= goal else "miss"
            missed += result == "miss"
            print(
                f"| {mode} | {ours} | {base} | {config[2]} | {config[1]} | {ratio:.2f}x | "
                f"<= {goal}x | {result} |"
            )
    return missed


def time_block_dropout(device: str, quick: bool) -> None:
    from structdrop.nn.functional import block_dropout

    shape, block = ((64, 1024) if quick else (256, 4096)), 8
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    ours = _time(lambda t: block_dropout(t, P, block), x, grad)
    floor = _time(lambda t: F.dropout(t, P), x, grad)
    print(f"\nBlockDropout vs F.dropout, forward+backward, {shape}, block {block}, p = {P}\n")
    print("| block_dropout ms | F.dropout ms | ratio | goal |")
    print("|---|---|---|---|")
    mark = "ok" if ours <= floor else "miss"
    print(f"| {1e3 * ours:.3f} | {1e3 * floor:.3f} | {ours / floor:.2f}x {mark} | <= 1.0x |")


# ----------------------------------------------------------------------------------------------
# Drop rates


def kept_for_backward(shapes: tuple[tuple[int, ...], ...]) -> None:
    """The bytes that an eager CPU forward keeps for its backward pass: the positions of the
    dropped windows (the autograd node's ``kept``), against the input's float32 bytes."""
    print(f"\nKept for the backward pass (CPU, float32, block {BLOCK}, p = {P})\n")
    print("| shape | dropped windows | bytes kept | input bytes | kept / input |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        x = torch.randn(shape, requires_grad=True)
        output = drop_block2d(x, P, BLOCK)
        positions = output.grad_fn.kept[1]  # type: ignore[union-attr]
        kept = positions.numel() * positions.element_size()
        size = x.numel() * x.element_size()
        print(
            f"| {shape} | {positions.numel()} | {kept / 1024:.1f} KiB | {size / 2**20:.1f} MiB "
            f"| {kept / size:.2%} |"
        )


def _rate_layers(device: str) -> dict[str, Layer]:
    layers = dict(_baselines(device))
    layers["ours (valid, gamma=mean)"] = lambda x: drop_block2d(x, P, BLOCK)
    layers["ours (clipped, gamma=mean)"] = lambda x: drop_block2d(x, P, BLOCK, boundary="clipped")
    layers["ours (valid, gamma=interior)"] = lambda x: drop_block2d(x, P, BLOCK, gamma="interior")
    return layers


def _exact(name: str, size: int) -> tuple[float, float, float] | None:
    options = {
        "ours (valid, gamma=mean)": ("valid", "mean"),
        "ours (clipped, gamma=mean)": ("clipped", "mean"),
        "ours (valid, gamma=interior)": ("valid", "interior"),
    }
    if name not in options:
        return None
    boundary, rule = options[name]
    gamma = window_drop_prob(P, BLOCK, (size, size), boundary, rule)
    drop = 1.0 - drop_block_keep_prob((size, size), BLOCK, boundary, gamma)
    return float(drop.mean()), float(drop[0, 0]), float(drop[size // 2, size // 2])


def drop_rates(device: str, masks: int) -> None:
    """Drop rates from ``masks`` one-channel samples (every library draws one mask each)."""
    print(
        f"\nMeasured drop rate, block {BLOCK}, p = {P}, {masks} masks per cell "
        "(standard error of a unit's rate <= "
        f"{0.5 / math.sqrt(masks):.3f}); exact values of ours in brackets\n"
    )
    print("| layer | 14x14 mean | corner | centre | 7x7 mean | corner | centre |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for name, layer in _rate_layers(device).items():
        cells = []
        for size in (14, 7):
            x = torch.ones(masks, 1, size, size, device=device)
            with torch.no_grad():
                dropped = (layer(x) == 0).double().mean(0)[0]
            measured = (
                float(dropped.mean()),
                float(dropped[0, 0]),
                float(dropped[size // 2, size // 2]),
            )
            exact = _exact(name, size)
            for k, value in enumerate(measured):
                cells.append(f"{value:.3f}" + ("" if exact is None else f" [{exact[k]:.3f}]"))
        print(f"| {name} | " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes, few masks")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--dtypes", default=None, help="comma-separated (default: cpu float32, cuda both)"
    )
    parser.add_argument(
        "--compiled-shapes",
        default=None,
        choices=["none", "goal", "all"],
        help="shapes timed compiled (default: cpu none, cuda goal = (128, 256, 28, 28))",
    )
    parser.add_argument("--no-rates", action="store_true", help="skip the drop-rate table")
    parser.add_argument(
        "--system-malloc", action="store_true", help="do not ask glibc to keep freed memory"
    )
    args = parser.parse_args()
    kept = False if args.system_malloc else keep_freed_memory()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    where = torch.cuda.get_device_name() if cuda else platform.processor()
    print(
        f"torch {torch.__version__}, device {args.device} ({where or 'cpu'}), "
        f"{torch.get_num_threads()} threads, freed memory kept by malloc: {kept}"
    )
    shapes = QUICK_SHAPES if args.quick else (CUDA_SHAPES if cuda else CPU_SHAPES)
    dtypes = (args.dtypes or ("float32,bfloat16" if cuda else "float32")).split(",")
    compiled_mode = args.compiled_shapes or ("goal" if cuda else "none")
    compiled_shapes = {"none": (), "goal": (shapes[-1],), "all": shapes}[compiled_mode]
    times = time_layers(args.device, shapes, dtypes, compiled_shapes)
    print_times(times)
    missed = print_goals(args.device, times)
    time_block_dropout(args.device, args.quick)
    if not cuda:
        kept_for_backward(shapes)
    if not args.no_rates:
        drop_rates(args.device, 2000 if args.quick else 20000)
    print(f"\ngoals missed: {missed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
