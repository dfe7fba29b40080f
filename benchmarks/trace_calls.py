"""The Python calls into structdrop along one eager forward pass of a layer, or a quick Fig. 2 run.

``layer``: a layer is called once to warm its caches, then once more under ``sys.setprofile``:
every call of a function defined in ``src/structdrop`` is counted, with its file and its depth
(calls of structdrop functions below it). Prints the count, the distinct functions, the files
and the depth, and the calls in order. Torch's own functions are not counted.

``fig2``: ``structdrop reproduce deep --quick --trunk tiny`` into a temporary folder, in this
process, under the same profiler (every thread): the distinct structdrop functions that the run
executes (functions and methods, not module bodies, lambdas or comprehensions) and the files
they are in.

Run: ``python benchmarks/trace_calls.py layer [--layer DropBlock2d] [--backward]`` or
``python benchmarks/trace_calls.py fig2``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import threading
from pathlib import Path

import torch

import structdrop as sd
from structdrop import nn as sdnn

SRC = str(Path(sd.__file__).resolve().parent)

LAYERS = {
    "DropBlock2d": (lambda: sdnn.DropBlock2d(0.1, 7), (32, 256, 14, 14)),
    "BlockDropout": (lambda: sdnn.BlockDropout(0.1, 8), (32, 256)),
    "StructuredDropout": (lambda: sdnn.StructuredDropout(sd.GridBlock(0.1, 8)), (32, 256)),
    "DropConnectLinear": (lambda: sdnn.DropConnectLinear(256, 128, 0.1), (32, 256)),
}


def trace(run) -> list[tuple[int, str, str]]:
    """``(depth, file, function)`` of every structdrop call that ``run()`` makes; the body of a
    module or a class (run once, by an import) is named ``<body>``."""
    calls: list[tuple[int, str, str]] = []
    depth = [0]

    def profile(frame, event, arg) -> None:
        filename = frame.f_code.co_filename
        if not filename.startswith(SRC):
            return
        if event == "call":
            code = frame.f_code
            name = code.co_qualname if code.co_flags & inspect.CO_NEWLOCALS else "<body>"
            calls.append((depth[0], filename[len(SRC) + 1 :], name))
            depth[0] += 1
        elif event == "return":
            depth[0] -= 1

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return calls


def trace_layer(name: str, backward: bool) -> None:
    make, shape = LAYERS[name]
    layer = make()
    x = torch.randn(shape, requires_grad=backward)

    def run() -> None:
        y = layer(x)
        if backward:
            y.sum().backward()

    run()  # warm-up: caches filled
    calls = trace(run)
    files = sorted({file for _, file, _ in calls})
    functions = {(file, name) for _, file, name in calls}
    what = "forward and backward" if backward else "forward"
    print(
        f"{name}{shape} {what}: {len(calls)} calls into structdrop, "
        f"{len(functions)} distinct functions, {len(files)} files, "
        f"{1 + max((d for d, _, _ in calls), default=-1)} deep"
    )
    print("files: " + ", ".join(files))
    for depth, file, function in calls:
        print(f"{'  ' * depth}{function}  ({file})")


def trace_fig2() -> None:
    from typer.main import get_command

    from structdrop.cli import app

    command = get_command(app)
    with tempfile.TemporaryDirectory() as folder:
        args = ["reproduce", "deep", "--quick", "--trunk", "tiny", "--out", folder]
        calls = trace(lambda: command.main(args, standalone_mode=False))
    # functions and methods: not the bodies of modules and classes, lambdas, comprehensions
    functions = {(file, name) for _, file, name in calls if name.rpartition(".")[2][0] != "<"}
    files = sorted({file for file, _ in functions})
    print(
        f"structdrop {' '.join(args[:-2])}: {len(functions)} distinct structdrop functions "
        f"in {len(files)} files ({len(calls)} calls)"
    )
    for file in files:
        count = sum(1 for f, _ in functions if f == file)
        print(f"  {file}: {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    layer = commands.add_parser("layer", help="one eager forward (and backward) of a layer")
    layer.add_argument("--layer", default="DropBlock2d", choices=sorted(LAYERS))
    layer.add_argument("--backward", action="store_true", help="trace the backward too")
    commands.add_parser("fig2", help="a quick Fig. 2 run from the command line")
    options = parser.parse_args()
    if options.command == "layer":
        trace_layer(options.layer, options.backward)
    else:
        trace_fig2()


if __name__ == "__main__":
    main()
