"""The worked examples in examples/ run, as a user runs them (another process, small settings
where the script takes them), and print what their docstrings promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each example is a process that trains

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *arguments: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *arguments],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_head_monitor_example_reports_every_epoch() -> None:
    """ResNet-18 with a dropout head on the digits: the monitor finds the head and the law,
    reports after each epoch, and the last layer's gap to its best head shrinks."""
    output = run_example("head_monitor.py", "--epochs", "3", "--train-size", "300")
    assert "head fc.1, law Bernoulli(p=0.3)" in output
    epochs = re.findall(r"epoch (\d): .*gap to the best head ([\d.]+)%", output)
    assert [int(epoch) for epoch, _ in epochs] == [1, 2, 3]
    gaps = [float(gap) for _, gap in epochs]
    assert gaps[-1] < gaps[0]
    assert "capacity bound" in output and "attained at width d >= rank(A*)" in output


def test_the_penalty_example_reaches_the_optimum_both_ways() -> None:
    output = run_example("penalty_vs_masks.py")
    assert "Both forms minimize the same expected objective" in output
