"""Structured dropout layers against torchvision, timm and ``dropblock`` (ratios in one process).

1. Forward + backward time of 2-D DropBlock at (32, 256, 14, 14) and (32, 64, 56, 56), block 7,
   p = 0.1, with ``F.dropout`` / ``F.dropout2d`` as the floor: every library's time over
   ``F.dropout``'s, then ours over each baseline, against the goals of the issue (independent
   channels <= 0.25x torchvision and <= 1.2x ``F.dropout``; shared channels <= timm's default).
2. ``block_dropout`` (the paper's grid DropBlock) against ``F.dropout`` on (256, 4096).
3. The drop rate each library actually applies at 14x14 and 7x7, block 7, p = 0.1: the mean over
   the map, the corner unit and the centre unit, estimated from many masks (NOTES.md, "What
   existing layers get wrong"), beside our exact values.

Large CPU buffers (25 MB at (32, 64, 56, 56)) are kept by the C allocator after they are freed
(``mallopt``), so that no layer's time depends on whether its output happened to need fresh pages
from the system; ``--system-malloc`` leaves the allocator as it is.

Run: ``python benchmarks/bench_layers.py [--device cuda] [--quick] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _timing import best_time
from structdrop.nn._dropblock import drop_block2d, drop_block_keep_prob, window_drop_prob

P, BLOCK = 0.1, 7
FULL_SHAPES = ((32, 256, 14, 14), (32, 64, 56, 56))
QUICK_SHAPES = ((8, 64, 14, 14), (8, 16, 28, 28))


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


def _baselines() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The other libraries' 2-D DropBlock as functions of the input (absent ones skipped)."""
    found: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
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
    try:
        from dropblock import DropBlock2D

        layer = DropBlock2D(drop_prob=P, block_size=BLOCK).train()
        found["dropblock.DropBlock2D"] = layer
    except ImportError:
        print("dropblock not installed: skipped")
    return found


def _ours() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {
        "ours (independent)": lambda x: drop_block2d(x, P, BLOCK),
        "ours (independent, clipped)": lambda x: drop_block2d(x, P, BLOCK, placement="clipped"),
        "ours (shared channels)": lambda x: drop_block2d(x, P, BLOCK, shared_channels=True),
    }


def _forward_backward(
    layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        layer(x).backward(grad)
        x.grad = None
        if x.is_cuda:
            torch.cuda.synchronize()

    return run


def time_dropblock(shapes, device: str) -> None:
    layers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "F.dropout": lambda x: F.dropout(x, P),
        "F.dropout2d": lambda x: F.dropout2d(x, P),
        **_baselines(),
        **_ours(),
    }
    times: dict[tuple[int, ...], dict[str, float]] = {}
    for shape in shapes:
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        times[shape] = {}
        for name, layer in layers.items():
            run = _forward_backward(layer, x, grad)
            run()  # warm-up: caches, allocator
            times[shape][name] = best_time(run, repeat=5, min_seconds=0.2)
    _print_times(shapes, layers, times)
    _print_goals(shapes, times)


def _print_times(shapes, layers, times) -> None:
    print(f"\nDropBlock2d forward+backward, block {BLOCK}, p = {P}: time and time / F.dropout\n")
    head = "| layer | " + " | ".join(f"{tuple(s)} ms | / F.dropout" for s in shapes) + " |"
    print(head)
    print("|" + "---|" * (1 + 2 * len(shapes)))
    for name in layers:
        cells = []
        for shape in shapes:
            t = times[shape][name]
            cells += [f"{1e3 * t:.2f}", f"{t / times[shape]['F.dropout']:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _print_goals(shapes, times) -> None:
    checks = [
        ("ours (independent)", "torchvision drop_block2d", 0.25),
        ("ours (independent)", "timm drop_block_2d (per channel)", None),
        ("ours (independent)", "F.dropout", 1.2),
        ("ours (independent, clipped)", "F.dropout", None),
        ("ours (shared channels)", "timm drop_block_2d (default)", 1.0),
        ("ours (shared channels)", "dropblock.DropBlock2D", None),
    ]
    print("\nOurs / baseline (same run; goal from the issue where there is one)\n")
    print("| ours | baseline | " + " | ".join(str(tuple(s)) for s in shapes) + " | goal |")
    print("|" + "---|" * (3 + len(shapes)))
    for ours, base, goal in checks:
        if base not in times[shapes[0]]:
            continue
        ratios = [times[s][ours] / times[s][base] for s in shapes]
        cells = []
        for r in ratios:
            mark = "" if goal is None else (" ok" if r <= goal else " MISSED")
            cells.append(f"{r:.2f}x{mark}")
        goal_text = "-" if goal is None else f"<= {goal}x"
        print(f"| {ours} | {base} | " + " | ".join(cells) + f" | {goal_text} |")


def time_block_dropout(device: str, quick: bool) -> None:
    try:
        from structdrop.nn.functional import block_dropout
    except ImportError:
        print("\nstructdrop.nn.functional.block_dropout not available: skipped")
        return
    shape, block = ((64, 1024) if quick else (256, 4096)), 8
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    ours = best_time(_forward_backward(lambda t: block_dropout(t, P, block), x, grad))
    floor = best_time(_forward_backward(lambda t: F.dropout(t, P), x, grad))
    print(f"\nBlockDropout vs F.dropout, forward+backward, {shape}, block {block}, p = {P}\n")
    print("| block_dropout ms | F.dropout ms | ratio | goal |")
    print("|---|---|---|---|")
    mark = "ok" if ours <= floor else "MISSED"
    print(f"| {1e3 * ours:.3f} | {1e3 * floor:.3f} | {ours / floor:.2f}x {mark} | <= 1.0x |")


def _rate_layers() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    layers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    base = _baselines()
    for name in base:
        layers[name] = base[name]
    layers["ours (valid, gamma=mean)"] = lambda x: drop_block2d(x, P, BLOCK)
    layers["ours (clipped, gamma=mean)"] = lambda x: drop_block2d(x, P, BLOCK, placement="clipped")
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
    placement, rule = options[name]
    gamma = window_drop_prob(P, BLOCK, (size, size), placement, rule)
    drop = 1.0 - drop_block_keep_prob((size, size), BLOCK, placement, gamma)
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
    for name, layer in _rate_layers().items():
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes, few masks")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--system-malloc", action="store_true", help="do not ask glibc to keep freed memory"
    )
    args = parser.parse_args()
    kept = False if args.system_malloc else keep_freed_memory()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    print(
        f"torch {torch.__version__}, device {args.device} ({where or 'cpu'}), "
        f"{torch.get_num_threads()} threads, freed memory kept by malloc: {kept}"
    )
    time_dropblock(QUICK_SHAPES if args.quick else FULL_SHAPES, args.device)
    time_block_dropout(args.device, args.quick)
    drop_rates(args.device, 2000 if args.quick else 20000)


if __name__ == "__main__":
    main()
