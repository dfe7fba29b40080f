"""How much Fig. 2's gap moves with the seed, the CPU kernels and the thread count.

Runs ``structdrop reproduce deep`` (the settings of ``make reproduce``) for each data set over
seeds and over machine settings, and prints the gap of each run and the spread as a Markdown
table (docs/deep.md, "Spread across seeds and machines"). Machine settings: torch's CPU kernels
are oneDNN's (convolutions) and MKL's (matrix products), chosen by the instruction set, so
``ONEDNN_MAX_CPU_ISA`` and ``MKL_ENABLE_INSTRUCTIONS`` pick other kernels (NumPy's
``OPENBLAS_CORETYPE`` as well, for the theory); ``--threads`` sets the intra-op threads.

    python benchmarks/fig2_spread.py                    # seeds 0-4, digits and MNIST (~25 min)
    python benchmarks/fig2_spread.py --seeds 0 --cells default avx2 one-thread

Every run writes its own folder under ``--out``; a finished run is not redone (the command
skips it), so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: The runs of ``make reproduce`` (the Makefile's options).
DATASETS: dict[str, list[str]] = {
    "digits": [],
    "mnist": ["--dataset", "mnist", "--image-size", "16", "--epochs", "100"],
}
#: Machine settings: name -> (environment, torch threads).
CELLS: dict[str, tuple[dict[str, str], int]] = {
    "default": ({}, 2),
    "one-thread": ({}, 1),
    "avx2": (
        {
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "OPENBLAS_CORETYPE": "Haswell",
        },
        2,
    ),
}


def run(dataset: str, seed: int, cell: str, out: Path) -> dict:
    """One Fig. 2 run; its JSON result."""
    folder = out / f"{dataset}-seed{seed}-{cell}"
    environment, threads = CELLS[cell]
    env = {**os.environ, **environment, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "structdrop", "reproduce", "deep", "--no-progress"]
    command += [*DATASETS[dataset], "--seed", str(seed), "--out", str(folder)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    name = "fig2.json" if dataset == "digits" else f"fig2_{dataset}.json"
    return json.loads((folder / name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--cells", nargs="+", default=["default"], choices=list(CELLS))
    parser.add_argument("--extra-cells-seed", type=int, default=0, help="seed of the other cells")
    parser.add_argument("--out", type=Path, default=Path("results/fig2_spread"))
    args = parser.parse_args()
    print("| data set | seed | machine | gap | singular values within |")
    print("|---|---|---|---|---|")
    for dataset in args.datasets:
        gaps = []
        plan = [(seed, "default") for seed in args.seeds if "default" in args.cells]
        plan += [(args.extra_cells_seed, cell) for cell in args.cells if cell != "default"]
        for seed, cell in plan:
            data = run(dataset, seed, cell, args.out)
            gaps.append(data["gap"])
            print(
                f"| {dataset} | {seed} | {cell} | {data['gap']:.2%} | "
                f"{data['singular_value_error']:.1%} |",
                flush=True,
            )
        print(
            f"| {dataset} | all | all | {min(gaps):.2%} to {max(gaps):.2%} "
            f"(spread {max(gaps) - min(gaps):.2%}) | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
