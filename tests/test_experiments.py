"""Tests of the synthetic reproduction: formulas, resume, convergence, files (experiments/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import structdrop as sd
from structdrop.experiments import _io, formulas, report, runs, sliding, synthetic
from structdrop.experiments.config import make_data
from structdrop.linear import DivergenceError, fit_sgd, record_points
from structdrop.linear import sgd as sgd_module

# Small runs: the paper's dimensions, few iterations, everything in this process.
TINY = dataclasses.replace(
    synthetic.Config().quick_version(),
    iterations=3_000,
    record=12,
    mc_samples=50,
    dropconnect_iterations=400,
    snapshots=6,
    n_jobs=1,
)


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def _kill_after(monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    original = sgd_module.save_checkpoint
    calls = {"n": 0}

    def save(*args: Any, **kwargs: Any) -> Any:
        written = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == saves:
            raise Killed
        return written

    monkeypatch.setattr(sgd_module, "save_checkpoint", save)


# ------------------------------------------------------------------------------------------------
# Formulas
# ------------------------------------------------------------------------------------------------
def test_paper_dropconnect_formula_is_dropouts_objective_not_dropconnects() -> None:
    """Thm 4.1 as printed equals Dropout's expected loss (Cor. 3.2), which is the DropConnect
    expectation only for diagonal X X^T (docs/theory.md). On weights aligned with the data (V: the
    top eigenvectors of X X^T, as training makes them) its penalty is off on Gaussian inputs,
    and far more on correlated ones."""
    settings = synthetic.Config()
    for correlated, low, high in ((False, 0.05, 0.5), (True, 0.5, 5.0)):
        data = make_data(settings, correlated=correlated)
        Y, U, X = data.Y, data.U0, data.X
        V = np.linalg.eigh(X @ X.T)[1][:, ::-1][:, : settings.width]
        paper = formulas.paper_dropconnect_objective(Y, U, V, X, sd.DropConnect(0.5))
        dropout = float(sd.expected_loss(Y, U, V, X, sd.Bernoulli(0.5)))
        assert paper == pytest.approx(dropout, rel=1e-10)
        fit = float(np.sum((Y - U @ V.T @ X) ** 2))
        exact_penalty = float(sd.linear_penalty(U, V, X, sd.DropConnect(0.5)))
        assert low < abs((paper - fit) / exact_penalty - 1) < high


def test_paper_formula_is_exact_for_diagonal_gram() -> None:
    """With orthogonal input rows (X X^T diagonal) Thm 4.1's formula is right."""
    rng = np.random.default_rng(3)
    X = np.linalg.qr(rng.standard_normal((40, 6)))[0].T * np.arange(1.0, 7.0)[:, None]
    Y, U, V = rng.standard_normal((3, 40)), rng.standard_normal((3, 4)), rng.standard_normal((6, 4))
    paper = formulas.paper_dropconnect_objective(Y, U, V, X, sd.DropConnect(0.3))
    assert paper == pytest.approx(float(sd.expected_loss(Y, U, V, X, sd.DropConnect(0.3))))


def test_data_follow_section_51() -> None:
    settings = synthetic.Config()
    data = make_data(settings)
    assert data.X.shape == (100, 1000) and data.Y.shape == (80, 1000)
    assert data.U0.shape == (80, 50) and data.V0.shape == (100, 50)
    assert np.linalg.matrix_rank(data.Y) == 50
    again = make_data(settings, truth_rank=80)
    np.testing.assert_array_equal(again.X, data.X)  # the rank flag changes only the truth
    np.testing.assert_array_equal(again.U0, data.U0)
    assert np.linalg.matrix_rank(again.Y) == 80
    correlated = make_data(settings, correlated=True)
    sample_corr = np.corrcoef(correlated.X)[0, 1]
    assert sample_corr == pytest.approx(settings.correlation, abs=0.05)


def test_sliding_variants_of_section_53() -> None:
    """The paper's theta' equals the exact gamma at p = 0.5 only (docs/theory.md)."""
    half = sliding.sliding_variants(0.5, 5)
    assert half["paper"].gamma == pytest.approx(half["exact"].gamma)
    other = sliding.sliding_variants(0.3, 5)
    d = 50
    interior = {name: 1 - np.min(s.mean(d)) for name, s in other.items()}
    assert interior["exact"] == pytest.approx(0.3)
    assert interior["paper"] == pytest.approx(0.7)
    assert interior["same_theta"] == pytest.approx(1 - 0.7**5)


def test_late_relative_difference_and_ema() -> None:
    t = [0, 10, 20]
    assert formulas.late_relative_difference(t, [5.0, 2.0, 2.0], [2.0, 2.0, 2.0]) == 0.0
    smooth = formulas.ema([0, 100, 110, 1000], [0.0, 1.0, 3.0, 3.0], fraction=0.1)
    assert smooth[0] == 0.0 and smooth[1] == pytest.approx(1.0, abs=1e-3)  # no lag
    assert 1.0 < smooth[2] < 3.0 and smooth[3] == pytest.approx(3.0, abs=1e-3)


def test_segmented_dropconnect_matches_one_run() -> None:
    """Running fit_sgd between record points (to evaluate Thm 4.1 on the iterates) follows the
    schedule and random stream of one long run."""
    data = make_data(synthetic.Config())
    lr, iterations, decay = 2e-5, 600, 100.0
    law = sd.DropConnect(0.5)
    segmented = runs.dropconnect_run(data, law, lr, iterations, decay, seed=7, snapshots=5)
    single = fit_sgd(
        data.X,
        data.Y,
        data.U0,
        data.V0,
        law,
        lr=lr,
        iterations=iterations,
        lr_decay=decay,
        seed=7,
        record=record_points(iterations, 5).tolist(),
    )
    np.testing.assert_array_equal(segmented["iterations"], single.iterations)
    np.testing.assert_allclose(segmented["corrected"], single.expected, rtol=1e-9)
    np.testing.assert_allclose(segmented["stochastic"], single.stochastic, rtol=1e-9)
    assert sd.Scheme.from_dict(segmented["scheme"]) == law


@pytest.mark.parametrize("law", [sd.Bernoulli(0.5), sd.GridBlock(0.5, 5), sd.SlidingBlock(0.5, 5)])
def test_dropconnect_run_refuses_a_law_on_units(law: sd.Scheme) -> None:
    """The segments evaluate Thm 4.1, a statement about masks on V's entries: a law on the
    hidden units is refused, by name, before anything runs."""
    data = make_data(synthetic.Config())
    with pytest.raises(ValueError, match=f"acts_on == 'weights'.*{type(law).__name__}"):
        runs.dropconnect_run(data, law, 2e-5, 10, 100.0, seed=0, snapshots=2)
    with pytest.raises(TypeError, match="Scheme"):
        runs.dropconnect_run(data, 0.5, 2e-5, 10, 100.0, seed=0, snapshots=2)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Runs: resume, convergence, divergence
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_fig1_resumes_with_identical_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = synthetic.run_figure("fig1", TINY, tmp_path / "reference")
    out = tmp_path / "killed"
    with monkeypatch.context() as patch:
        _kill_after(patch, saves=5)
        with pytest.raises(Killed):
            synthetic.run_figure("fig1", TINY, out)
    assert not (out / "fig1.json").exists() and not (out / "fig1.png").exists()
    assert list((out / "checkpoints" / "fig1").glob("*.npz"))  # the state to resume from
    resumed = synthetic.run_figure("fig1", TINY, out)
    assert resumed == reference
    assert (out / "fig1.json").read_bytes() == (tmp_path / "reference" / "fig1.json").read_bytes()
    assert not (out / "checkpoints").exists()  # dropped once the figure is written


@pytest.mark.slow
def test_killed_dropconnect_figure_resumes_with_identical_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = synthetic.run_figure("fig3", TINY, tmp_path / "reference")
    out = tmp_path / "killed"
    with monkeypatch.context() as patch:
        _kill_after(patch, saves=4)  # inside the segments of the first DropConnect run
        with pytest.raises(Killed):
            synthetic.run_figure("fig3", TINY, out)
    resumed = synthetic.run_figure("fig3", TINY, out)
    assert resumed == reference


@pytest.mark.slow
def test_fig1_full_scale_reaches_the_global_minimum(tmp_path: Path) -> None:
    """Thm 2.7 (corrected): 1e6 steps of Algorithm 1 at the paper's scale end within 1e-2 of F*.
    This is the full-mode fig1 run (about 5-15 s on two slow cores)."""
    config = dataclasses.replace(synthetic.Config(), mc_samples=20)
    data = synthetic.run_figure("fig1", config, tmp_path)
    assert data["config"]["iterations"] == 1_000_000
    assert data["final_gap"] < 1e-2
    assert data["run"]["gap"][0] > 1.0  # it did start far away


def test_divergence_is_reported_and_writes_nothing(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, lr_factor=1e3)  # lr about 1e-2, far past the threshold
    with pytest.raises(DivergenceError, match="lr="):
        synthetic.run_figure("fig1", config, tmp_path)
    assert not any(tmp_path.rglob("*.json")) and not any(tmp_path.rglob("*.png"))
    assert not any(tmp_path.rglob("*.npz"))


def test_run_skips_finished_figures_unless_forced(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, gap_widths=(50,), gd_max_iterations=5)
    assert synthetic.run(["gap"], tmp_path, config=config) == {"gap": "done"}
    first = (tmp_path / "gap.json").read_text()
    assert synthetic.run(["gap"], tmp_path, config=config) == {"gap": "skipped"}
    assert (tmp_path / "gap.json").read_text() == first
    with pytest.raises(_io.InputError, match="--force"):  # other settings: results kept
        synthetic.run(["gap"], tmp_path, config=config, seed=1)
    assert (tmp_path / "gap.json").read_text() == first
    assert synthetic.run(["gap"], tmp_path, config=config, seed=1, force=True) == {"gap": "done"}


def test_unknown_figure_is_refused() -> None:
    with pytest.raises(_io.InputError, match="unknown figure 'fig2'"):
        synthetic.check_figures(["fig1", "fig2"])
    assert synthetic.check_figures(["gap", "fig1"]) == ["fig1", "gap"]


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def test_json_is_written_atomically_and_is_strict(tmp_path: Path) -> None:
    path = _io.write_json(tmp_path / "a" / "x.json", {"v": np.float64(np.nan), "a": np.arange(3)})
    assert json.loads(path.read_text()) == {"v": None, "a": [0, 1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary left


def test_load_matrix_formats_and_refusals(tmp_path: Path) -> None:
    matrix = np.arange(6.0).reshape(2, 3)
    np.save(tmp_path / "m.npy", matrix)
    np.savez(tmp_path / "both.npz", X=matrix, Y=matrix + 1)
    np.savetxt(tmp_path / "m.csv", matrix, delimiter=",")
    np.testing.assert_array_equal(_io.load_matrix(tmp_path / "m.npy", "X"), matrix)
    np.testing.assert_array_equal(_io.load_matrix(tmp_path / "both.npz", "Y"), matrix + 1)
    np.testing.assert_array_equal(_io.load_matrix(tmp_path / "m.csv", "X"), matrix)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(_io.InputError, match="never loaded"):
        _io.load_matrix(tmp_path / "objects.npy", "X")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(_io.InputError, match="finite"):
        _io.load_matrix(tmp_path / "nan.npy", "X")
    with pytest.raises(_io.InputError, match="no such file"):
        _io.load_matrix(tmp_path / "missing.npy", "X")
    with pytest.raises(_io.InputError, match="expected one array"):
        _io.load_matrix(tmp_path / "both.npz", "Z")


def test_report_without_figures_says_what_to_run(tmp_path: Path) -> None:
    text = report.build_report(tmp_path)
    assert "`--figure fig1`" in text and "not run" in text
    assert "| Thm 2.3 |" in text and "**fails**" in text  # needs no figure
