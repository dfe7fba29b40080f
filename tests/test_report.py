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
