"""REPORT.md (experiments/report.py): light to import, and built from the figure table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import structdrop as sd


def test_the_report_loads_neither_torch_nor_numba(tmp_path: Path) -> None:
    """Reading figure data into Markdown needs NumPy only: the run functions are imported
    lazily, so the compiled training loops (numba) and torch stay unloaded."""
    src = Path(sd.__file__).resolve().parents[1]
    code = (
        "import sys, structdrop.experiments.report as r; r.build_report(sys.argv[1]); "
        "assert 'torch' not in sys.modules and 'numba' not in sys.modules, "
        "sorted(m for m in ('torch', 'numba') if m in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_deep_verdict_says_whether_the_measured_spread_can_flip_it() -> None:
    from structdrop.experiments import report

    spread = report.MEASURED_GAP_SPREAD
    base = {"theory": {"value": 1.0}, "singular_value_error": 0.02}
    far = report._deep_verdict({**base, "gap": report.HOLDS_GAP - 2 * spread})
    assert far[0] == "holds after correction" and "cannot change this verdict" in far[1]
    near = report._deep_verdict({**base, "gap": report.HOLDS_GAP - spread / 2})
    assert near[0] == "holds after correction" and "may give the neighbouring" in near[1]
    above = report._deep_verdict({**base, "gap": report.HOLDS_GAP + spread / 2})
    assert above[0] == "close" and "may give the neighbouring" in above[1]
    assert report._deep_verdict({**base, "gap": 0.5})[0] == "not converged"


def _section(gap: float) -> str:
    """Fig. 2's REPORT.md section for a run whose relative gap is ``gap``."""
    from structdrop.experiments import report

    data = {
        "figure": "fig2.png",
        "config": {"trunk": "tiny", "width": 10, "epochs": 1, "batch_size": 5, "seed": 0},
        "dataset": {"name": "digits", "train_size": 20, "classes": 10, "image_size": 8},
        "scheme": sd.GridBlock(0.5, 5).to_dict(),
        "final": {"objective": 1.0, "fit": 0.5, "penalty": 0.5, "singular_values": [1.0]},
        "theory": {"value": 1.0, "beta": 0.1, "block_size": 5, "singular_values": [1.0]},
        "gap": gap,
        "excess": gap,
        "singular_value_error": 0.02,
        "balance": 0.1,
    }
    return report.deep_section(data)


def test_the_distance_to_the_nearest_threshold_is_in_percentage_points() -> None:
    """Near each threshold, the text gives the distance to that one (not to the other) in
    percentage points (not as a fraction), and says whether the spread can flip the verdict."""
    from structdrop.experiments import report

    assert (report.HOLDS_GAP, report.CLOSE_GAP, report.MEASURED_GAP_SPREAD) == (0.05, 0.25, 0.006)
    near_close = _section(0.249)  # 0.1 points under the "close" threshold, 20 from the other
    assert "Verdict: **close**" in near_close
    assert (
        "The gap is only 0.1 percentage points from a threshold, within the 0.6 points that "
        "seeds and machines move it" in near_close
    )
    near_holds = _section(0.03)  # 2.0 points under the "holds" threshold, 22 from the other
    assert "Verdict: **holds after correction**" in near_holds
    assert (
        "The gap is 2.0 percentage points from the nearest threshold (5% or 25%); seeds and "
        "machines move it by at most 0.6 points" in near_holds
    )
    assert "cannot change this verdict" in near_holds
    above_holds = _section(0.053)
    assert "The gap is only 0.3 percentage points from a threshold" in above_holds
    far = _section(0.15)  # 10 points from either threshold
    assert "The gap is 10.0 percentage points from the nearest threshold" in far
