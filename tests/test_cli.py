"""End-to-end tests of the ``structdrop`` command line (cli.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import warnings
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

import structdrop as sd
from structdrop.cli import app
from structdrop.experiments import synthetic
from structdrop.experiments.deep.config import DeepConfig, default_text

runner = CliRunner()
FIGURES = ("fig1", "fig3", "fig4", "fig5", "fig6", "head", "gap")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick reproduction of every figure (about 20-30 s), shared by the tests below."""
    out = tmp_path_factory.mktemp("results")
    result = runner.invoke(app, ["reproduce", "synthetic", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.slow
def test_quick_reproduction_writes_every_figure_and_the_report(quick_results: Path) -> None:
    for name in FIGURES:
        assert (quick_results / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        data = json.loads((quick_results / f"{name}.json").read_text())
        assert data["figure"] == name
        assert data["config"]["quick"] is True and data["config"]["seed"] == 0
    fig1 = json.loads((quick_results / "fig1.json").read_text())
    assert fig1["run"]["gap"][-1] == fig1["final_gap"] < fig1["run"]["gap"][0]
    fig5 = json.loads((quick_results / "fig5.json").read_text())
    assert set(fig5["final_gaps"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    fig3 = json.loads((quick_results / "fig3.json").read_text())
    correlated = next(r for r in fig3["runs"] if r["dataset"] == "correlated")
    assert correlated["paper_vs_corrected_final"] > 0.2  # Thm 4.1 fails on correlated inputs
    gap = json.loads((quick_results / "gap.json").read_text())
    assert gap["width_gap"] > 1e-2 > gap["closed_gap"]
    text = (quick_results / "REPORT.md").read_text()
    for name in FIGURES:
        assert f"![{name}]({name}.png)" in text
    assert "| Thm 4.1 / Cor. 4.2 |" in text and "**fails**" in text
    assert not (quick_results / "checkpoints").exists()
    assert not [p for p in quick_results.iterdir() if p.name.startswith(".")]  # no temporaries


def test_rerun_skips_finished_figures(quick_results: Path) -> None:
    before = {name: (quick_results / f"{name}.json").stat().st_mtime_ns for name in FIGURES}
    result = runner.invoke(app, ["reproduce", "synthetic", "--quick", "--out", str(quick_results)])
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped") == len(FIGURES)
    after = {name: (quick_results / f"{name}.json").stat().st_mtime_ns for name in FIGURES}
    assert after == before


def test_force_recomputes_with_identical_results(quick_results: Path) -> None:
    path = quick_results / "gap.json"
    before, stamp = path.read_bytes(), path.stat().st_mtime_ns
    result = runner.invoke(
        app,
        [
            "reproduce",
            "synthetic",
            "--quick",
            "--figure",
            "gap",
            "--force",
            "--out",
            str(quick_results),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "gap: done" in result.output
    assert path.stat().st_mtime_ns != stamp
    assert path.read_bytes() == before  # same seed, same bytes: timings live in timings.json
    timings = json.loads((quick_results / "timings.json").read_text())
    assert timings["gap"]["elapsed_s"] > 0


@pytest.mark.parametrize("arguments", [["--figure", "fig2"], ["--figure", "fig1", "-f", "nope"]])
def test_unknown_figure_exits_2_and_writes_nothing(tmp_path: Path, arguments: list[str]) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["reproduce", "synthetic", *arguments, "--out", str(out)])
    assert result.exit_code == 2
    assert "unknown figure" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_diverging_lr_exits_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synthetic, "safe_lr", lambda *args: 1e-2)
    result = runner.invoke(
        app, ["reproduce", "synthetic", "--quick", "--figure", "fig1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "diverged" in result.output and "lr=0.01" in result.output
    assert _files(tmp_path) == set()


# ------------------------------------------------------------------------------------------------
# optimum
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 40))
    Y = rng.standard_normal((6, 3)) @ rng.standard_normal((3, 12)) @ X
    return X, Y


def _save(folder: Path, kind: str, X: np.ndarray, Y: np.ndarray) -> tuple[Path, Path]:
    if kind == "npy":
        np.save(folder / "x.npy", X), np.save(folder / "y.npy", Y)
        return folder / "x.npy", folder / "y.npy"
    if kind == "npz":
        np.savez(folder / "data.npz", X=X, Y=Y)
        return folder / "data.npz", folder / "data.npz"
    np.savetxt(folder / "x.csv", X, delimiter=",", fmt="%.17g")
    np.savetxt(folder / "y.csv", Y, delimiter=",", fmt="%.17g")
    return folder / "x.csv", folder / "y.csv"


@pytest.mark.parametrize("kind", ["npy", "npz", "csv"])
@pytest.mark.parametrize("block_size", [1, 2])
def test_optimum_matches_global_minimum(
    tmp_path: Path, problem: tuple[np.ndarray, np.ndarray], kind: str, block_size: int
) -> None:
    X, Y = problem
    x, y = _save(tmp_path, kind, X, Y)
    arguments = ["optimum", "--x", str(x), "--y", str(y), "--p", "0.5", "--width", "4"]
    result = runner.invoke(app, [*arguments, "--block-size", str(block_size)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    scheme = sd.Bernoulli(0.5) if block_size == 1 else sd.GridBlock(0.5, block_size)
    expected = sd.global_minimum(X, Y, scheme, 4)
    assert printed["value"] == pytest.approx(expected.value, rel=1e-12)
    assert printed["beta"] == pytest.approx(expected.beta)
    assert (printed["rho"], printed["rank"]) == (expected.rho, expected.rank)
    np.testing.assert_allclose(printed["singular_values"], expected.singular_values, atol=1e-9)
    np.testing.assert_allclose(
        printed["target_singular_values"], expected.target_singular_values, rtol=1e-12
    )
    assert printed["residual"] == pytest.approx(expected.residual, abs=1e-8)


def _bad_inputs(folder: Path, X: np.ndarray, Y: np.ndarray) -> dict[str, tuple[list[str], str]]:
    np.save(folder / "x.npy", X)
    np.save(folder / "y.npy", Y)
    np.save(folder / "short.npy", Y[:, :-1])
    bad = X.copy()
    bad[1, 2] = np.nan
    np.save(folder / "nan.npy", bad)
    np.save(folder / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    (folder / "text.csv").write_text("1,2\nthree,4\n")
    x, y = str(folder / "x.npy"), str(folder / "y.npy")
    return {
        "missing file": (["--x", str(folder / "nope.npy"), "--y", y], "no such file"),
        "pickled objects": (["--x", str(folder / "objects.npy"), "--y", y], "never loaded"),
        "not finite": (["--x", str(folder / "nan.npy"), "--y", y], "must be finite"),
        "shapes": (["--x", x, "--y", str(folder / "short.npy")], "same number of samples"),
        "not numbers": (["--x", str(folder / "text.csv"), "--y", y], "cannot read"),
        "bad p": (["--x", x, "--y", y, "--p", "1.5"], "p must be in [0, 1)"),
        "bad width": (["--x", x, "--y", y, "--block-size", "3"], "block_size must divide"),
    }


def test_optimum_bad_inputs_exit_2_with_one_line(
    tmp_path: Path, problem: tuple[np.ndarray, np.ndarray]
) -> None:
    X, Y = problem
    for case, (arguments, message) in _bad_inputs(tmp_path, X, Y).items():
        options = {"--p": "0.5", "--width": "4"}
        for key, value in options.items():
            if key not in arguments:
                arguments = [*arguments, key, value]
        result = runner.invoke(app, ["optimum", *arguments])
        assert result.exit_code == 2, (case, result.output)
        assert message in result.output, (case, result.output)
        assert len(result.output.strip().splitlines()) == 1, (case, result.output)


def _huge_npy(path: Path) -> bytes:
    """A ``.npy`` whose header declares a 1e5 x 1e5 float64 array (80 GB), and a few bytes."""
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)}
    )
    return stream.getvalue() + bytes(64)


def _unreadable_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not a matrix, and what the one line says of each."""
    huge = folder / "huge.npy"
    huge.write_bytes(_huge_npy(huge))
    with zipfile.ZipFile(folder / "huge.npz", "w") as archive:
        archive.writestr("X.npy", _huge_npy(huge))
    (folder / "folder.npy").mkdir()
    np.savez(folder / "empty.npz")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "comments.csv").write_text("# no numbers here\n")
    cases = {
        "huge .npy header": (huge, "declares an array of shape (100000, 100000)"),
        "huge .npz member": (folder / "huge.npz", "declares an array of shape (100000, 100000)"),
        "folder": (folder / "folder.npy", "is a folder, not a regular file"),
        "empty .npz": (folder / "empty.npz", "holds no arrays"),
        "empty .csv": (folder / "empty.csv", "holds no numbers"),
        "comments only": (folder / "comments.csv", "holds no numbers"),
    }
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.npy")
        cases["FIFO"] = (folder / "fifo.npy", "is a FIFO (named pipe), not a regular file")
    if Path("/dev/zero").exists():
        cases["device"] = (Path("/dev/zero"), "is a character device, not a regular file")
    return cases


def _invoke_or_release(arguments: list[str], fifo: Path | None) -> Result:
    """``runner.invoke(app, arguments)`` in a thread; should it block on opening ``fifo``, a
    writer is let in to release it and the test fails, so that the suite goes on."""
    outcome: list[Result] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.invoke(app, arguments)))
    thread.daemon = True
    thread.start()
    thread.join(60)
    if thread.is_alive() and fifo is not None:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a reader waits: this opens
        thread.join(60)
        pytest.fail(f"reading the FIFO {fifo} blocked")
    return outcome[0]


@pytest.mark.parametrize(
    "case",
    ["huge .npy header", "huge .npz member", "folder", "FIFO", "device", "empty .npz",
     "empty .csv", "comments only"],
)  # fmt: skip
def test_optimum_refuses_files_that_hold_no_matrix_in_one_line(
    tmp_path: Path, problem: tuple[np.ndarray, np.ndarray], case: str
) -> None:
    """Nothing is allocated from a header before the file is seen to hold it, nothing that is
    not a regular file is read (a FIFO would block, /dev/zero never ends), and no warning is
    printed before the error."""
    cases = _unreadable_inputs(tmp_path)
    if case not in cases:
        pytest.skip(f"this system has no {case}")
    path, message = cases[case]
    np.save(tmp_path / "y.npy", problem[1])
    arguments = ["optimum", "--x", str(path), "--y", str(tmp_path / "y.npy")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be printed before the error
        result = _invoke_or_release(
            [*arguments, "--p", "0.5", "--width", "4"], path if case == "FIFO" else None
        )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: X: "), result.output
    assert message in result.output and str(path) in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


# ------------------------------------------------------------------------------------------------
# reproduce deep
# ------------------------------------------------------------------------------------------------
SMALL_DEEP = ["reproduce", "deep", "--quick", "--trunk", "tiny", "--image-size", "8"]


def _deep_command() -> click.Command:
    group = typer.main.get_command(app)
    return group.commands["reproduce"].commands["deep"]  # type: ignore[attr-defined]


def test_deep_options_are_the_configuration_fields() -> None:
    """One option per DeepConfig field, with the field's help text, next to the run's own."""
    options = {param.name: param for param in _deep_command().params}
    for setting in dataclasses.fields(DeepConfig):
        option = options[setting.name]
        assert option.help == setting.metadata["help"]
        flag = "--" + setting.name.replace("_", "-")
        assert flag in option.opts, (flag, option.opts)
    run = {"quick", "out", "force", "download", "progress", "checkpoint_every", "name", "sweep"}
    run |= {"list_cells", "collect"}
    assert set(options) == {f.name for f in dataclasses.fields(DeepConfig)} | run
    assert options["amp"].secondary_opts == ["--no-amp"]
    for law in ("Bernoulli", "GridBlock", "SlidingBlock", "DropConnect", "grid", "bernoulli"):
        assert law in options["scheme"].help


def test_docs_hold_the_deep_options_table() -> None:
    """docs/deep.md's options table: every DeepConfig field, its default and its help text."""
    rows = ["| option | default | what it sets |", "|---|---|---|"]
    for setting in dataclasses.fields(DeepConfig):
        flag = "--" + setting.name.replace("_", "-")
        flags = f"`{flag}`"
        if isinstance(setting.default, bool):
            flags += f" / `--no-{flag[2:]}`"
        default = default_text(setting) or setting.default
        rows.append(f"| {flags} | {default} | {setting.metadata['help']} |")
    docs = (Path(__file__).resolve().parents[1] / "docs" / "deep.md").read_text()
    table = docs.split("<!-- options table -->\n")[1].split("\n<!-- end of options table -->")[0]
    assert table == "\n".join(rows)


def test_deep_help_reads_well() -> None:
    result = runner.invoke(app, ["reproduce", "deep", "--help"], terminal_width=100)
    assert result.exit_code == 0
    for phrase in ("--trunk", "--batch-size", "--download", "--no-amp", "torchrun", "resnet50"):
        assert phrase in result.output, phrase
    assert "Traceback" not in result.output


def test_deep_command_runs_the_law_it_is_given(tmp_path: Path) -> None:
    arguments = [*SMALL_DEEP, "--scheme", "Bernoulli", "--p", "0.3", "--no-progress"]
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "fig2 (digits): gap to the theoretical minimum" in result.output
    data = json.loads((tmp_path / "fig2.json").read_text())
    assert data["config"]["scheme"] == "bernoulli" and data["config"]["p"] == 0.3
    assert data["config"]["trunk"] == "tiny" and data["config"]["epochs"] == 2
    assert sd.Scheme.from_dict(data["scheme"]) == sd.Bernoulli(0.3)
    assert "Figure 2" in (tmp_path / "REPORT.md").read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "imagenet"], "dataset must be one of"),
        (["--p", "1.5"], "p must be in [0, 1), got 1.5"),
        (["--scheme", "dropblock"], "scheme must be one of"),
        (["--width", "81"], "block_size must divide"),
        (["--trunk", "vgg"], "trunk must be one of"),
        (["--train-size", "-2"], "train_size must be >= 1"),
    ],
)
def test_deep_bad_options_exit_2_with_one_line(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*SMALL_DEEP, *arguments, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


def _environment() -> dict[str, str]:
    src = Path(sd.__file__).resolve().parents[1]
    return {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


def test_python_dash_m_structdrop_runs_the_command_line() -> None:
    for arguments in (["--help"], ["reproduce", "deep", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "structdrop", *arguments],
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "Usage: structdrop" in result.stdout
    assert "--batch-size" in result.stdout


def test_the_command_line_loads_without_torch() -> None:
    """The options of ``reproduce deep`` come from DeepConfig without loading torch: it loads
    when a command that needs it runs."""
    code = "import sys, structdrop.cli; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=_environment(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_torchrun_runs_the_command_line_on_two_processes(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m structdrop reproduce deep``: torch's launcher runs the
    package's ``__main__`` in each process, which join one gloo group; process 0 alone writes
    the results and prints."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "structdrop", *SMALL_DEEP]
    command += ["--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    result = subprocess.run(
        command, env=_environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("fig2 (digits): gap") == 1, result.stdout
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["fig2"]["processes"] == 2
    data = json.loads((tmp_path / "fig2.json").read_text())
    assert len(data["history"]["step_loss"]) == 2 * 2 and data["gap"] >= 0


@pytest.mark.slow
def test_logs_get_one_line_per_figure_and_no_progress_bars(tmp_path: Path) -> None:
    """Run as `make reproduce` runs it (output to a pipe, not a terminal): no progress bar
    redraws (carriage returns), one summary line per figure."""
    commands = {
        "synthetic": ["reproduce", "synthetic", "--quick", "--figure", "gap", "--figure", "head"],
        "deep": ["reproduce", "deep", "--quick", "--trunk", "tiny"],
    }
    for name, arguments in commands.items():
        completed = subprocess.run(
            [sys.executable, "-m", "structdrop", *arguments, "--out", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        log = completed.stdout + completed.stderr
        assert "\r" not in log, log
        lines = [line for line in log.splitlines() if line.strip()]
        if name == "synthetic":
            assert [line.split(":")[0] for line in lines] == ["head", "gap", "report"], lines
        else:
            assert len(lines) == 2 and lines[0].startswith("fig2 (digits): gap"), lines


def test_version_is_the_installed_distributions() -> None:
    import importlib.metadata

    import structdrop

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    installed = importlib.metadata.version("structdrop")
    assert result.output.strip() == f"structdrop {installed}"
    assert structdrop.__version__ == installed
