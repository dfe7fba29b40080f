"""The command line and the experiments under faults of the user's environment: output folders
that cannot be written, damaged or foreign checkpoints and result files, files that are not
what their name says, a missing device. Each is one line on stderr and exit status 2; errors of
the program itself keep their traceback. Same seed, same bytes in every result file."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import structdrop as sd
from cli_checks import one_line_error
from structdrop import CheckpointError
from structdrop import _checkpoint as ckpt
from structdrop.cli import app
from structdrop.experiments import _io, report, synthetic
from structdrop.experiments.deep import experiment
from structdrop.experiments.deep.experiment import run_deep
from structdrop.experiments.deep.recipe import CHECKPOINT_KIND, Interrupted, train
from structdrop.linear import run_sweep, sgd
from test_deep import tiny

runner = CliRunner()
QUICK_FIG1 = ["reproduce", "synthetic", "--quick", "--figure", "fig1"]


# ------------------------------------------------------------------------------------------------
# Same seed, same bytes
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_quick_runs_write_the_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    for name in ("fig1.json", "fig1.png", "REPORT.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    timings = json.loads((tmp_path / "a" / "timings.json").read_text())
    assert timings["fig1"]["elapsed_s"] > 0
    data = json.loads((tmp_path / "a" / "fig1.json").read_text())
    assert "elapsed_s" not in json.dumps(data)
    assert sd.Scheme.from_dict(data["run"]["scheme"]) == sd.GridBlock(0.5, 5)


@pytest.mark.slow
def test_a_figure_of_another_configuration_is_refused_then_recomputed(tmp_path: Path) -> None:
    """The figure cache compares every setting, not only the mode and the seed: other settings
    are refused (their results would be lost) and recomputed with --force."""
    base = dataclasses.replace(synthetic.Config(), n_jobs=1)
    assert synthetic.run(["fig1"], tmp_path, quick=True, config=base) == {"fig1": "done"}
    again = synthetic.run(
        ["fig1"], tmp_path, quick=True, config=dataclasses.replace(base, n_jobs=2)
    )
    assert again == {"fig1": "skipped"}  # processes do not change the numbers
    other = dataclasses.replace(base, lr_factor=2.0)
    with pytest.raises(ValueError, match="--force"):
        synthetic.run(["fig1"], tmp_path, quick=True, config=other)
    assert json.loads((tmp_path / "fig1.json").read_text())["config"]["lr_factor"] == 3.0
    forced = synthetic.run(["fig1"], tmp_path, quick=True, config=other, force=True)
    assert forced == {"fig1": "done"}
    assert json.loads((tmp_path / "fig1.json").read_text())["config"]["lr_factor"] == 2.0


# ------------------------------------------------------------------------------------------------
# Output folders
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [QUICK_FIG1, ["reproduce", "deep", "--quick"]])
def test_out_that_is_a_file_exits_2(tmp_path: Path, command: list[str]) -> None:
    target = tmp_path / "results"
    target.write_text("not a folder")
    one_line_error(runner.invoke(app, [*command, "--out", str(target)]), "is a file")
    one_line_error(
        runner.invoke(app, [*command, "--out", str(target / "sub")]), "cannot be created"
    )
    assert target.read_text() == "not a folder"


def test_out_that_is_not_writable_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_io.tempfile, "TemporaryFile", refuse)
    result = runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path)])
    one_line_error(result, "is not writable", "Permission denied")


# ------------------------------------------------------------------------------------------------
# Checkpoints and result files in the way
# ------------------------------------------------------------------------------------------------
def test_a_damaged_synthetic_checkpoint_exits_2_and_force_starts_afresh(tmp_path: Path) -> None:
    damaged = tmp_path / "checkpoints" / "fig1" / "gridblock-p0.5.npz"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(np.random.default_rng(0).bytes(3000))
    one_line_error(
        runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path)]), str(damaged), "--force"
    )
    assert not (tmp_path / "fig1.json").exists()
    result = runner.invoke(app, [*QUICK_FIG1, "--force", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig1.json").exists() and not (tmp_path / "checkpoints").exists()


def test_a_checkpoint_of_another_kind_exits_2(tmp_path: Path) -> None:
    foreign = tmp_path / "checkpoints" / "fig1" / "gridblock-p0.5.npz"
    ckpt.save_checkpoint(foreign, kind="something else", identity=0, state={"U": np.ones(2)})
    one_line_error(
        runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path)]), "something else", "--force"
    )


def test_a_checkpoint_refused_in_a_worker_process_is_the_checkpoint_error(tmp_path: Path) -> None:
    """fig5's runs go over two processes: a checkpoint that a worker refuses reaches the caller as
    that CheckpointError (one line on the command line), not as a broken process pool."""
    foreign = tmp_path / "checkpoints" / "fig5" / "gridblock-p0.1.npz"
    ckpt.save_checkpoint(foreign, kind=sgd.CHECKPOINT_KIND, identity="another run", state={})
    config = dataclasses.replace(synthetic.Config(), n_jobs=2)
    with pytest.raises(CheckpointError, match="belongs to another run") as caught:
        synthetic.run(["fig5"], tmp_path, quick=True, config=config)
    assert caught.value.path == foreign


class _Unrebuildable(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")


def _raise_unrebuildable(index: int) -> int:
    if index == 1:
        raise _Unrebuildable(7, "no way back")
    return index


@pytest.mark.slow
def test_an_exception_that_cannot_be_unpickled_is_named_not_a_broken_pool() -> None:
    with pytest.raises(RuntimeError, match="_Unrebuildable: code 7: no way back"):
        run_sweep(_raise_unrebuildable, [{"index": i} for i in range(2)], n_jobs=2)


def test_a_foreign_figure_json_exits_2_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "fig1.json").write_text('{"mine": true}\n')
    (tmp_path / "fig4.json").write_text("not json at all")
    one_line_error(
        runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path)]),
        "fig1.json is not a structdrop figure",
        "--force",
    )
    assert (tmp_path / "fig1.json").read_text() == '{"mine": true}\n'
    result = runner.invoke(app, [*QUICK_FIG1, "--force", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "fig1.json").read_text())["figure"] == "fig1"
    # A foreign file of a figure that was not asked for is left alone and reported as not run.
    assert (tmp_path / "fig4.json").read_text() == "not json at all"
    assert "Not run yet: `structdrop reproduce synthetic --figure fig4`" in report.build_report(
        tmp_path
    )


def test_a_damaged_deep_checkpoint_exits_2_without_unpickling(tmp_path: Path) -> None:
    damaged = tmp_path / "checkpoints" / "fig2.pt"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(pickle.dumps({"epoch": 1}) + np.random.default_rng(1).bytes(500))
    result = runner.invoke(app, ["reproduce", "deep", "--quick", "--out", str(tmp_path)])
    one_line_error(result, str(damaged), "--force")
    assert "weights_only" not in result.output and "Unpickling" not in result.output


def test_a_foreign_fig2_json_exits_2(tmp_path: Path) -> None:
    (tmp_path / "fig2.json").write_text("[1, 2, 3]")
    result = runner.invoke(app, ["reproduce", "deep", "--quick", "--out", str(tmp_path)])
    one_line_error(result, "is not Fig. 2 data", "--force")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without CUDA")
def test_device_cuda_without_cuda_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["reproduce", "deep", "--quick", "--device", "cuda", "--out", str(tmp_path)]
    )
    one_line_error(result, "--device cuda", "no CUDA device")


def test_internal_errors_are_not_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(experiment, "run_deep", broken)
    result = runner.invoke(app, ["reproduce", "deep", "--quick", "--out", str(tmp_path)])
    assert result.exit_code != 2
    assert isinstance(result.exception, ValueError)


def test_an_interrupted_deep_run_exits_130_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM, which the command turns into one) during a deep run: exit 130, a
    message saying how to resume, and the temporaries of dead writers removed."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "checkpoints" / f".fig2.pt.{dead.pid}.a1b2c3d4.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 100)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_deep", interrupted)
    result = runner.invoke(app, ["reproduce", "deep", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 130
    assert "interrupted before the first checkpoint" in result.output
    assert not stale.exists()
    assert not (tmp_path / "checkpoints").exists()  # left empty: removed
    # with a checkpoint of this run, the message names it
    checkpoint = tmp_path / "checkpoints" / "fig2.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"state")
    result = runner.invoke(app, ["reproduce", "deep", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 130
    assert f"rerun the same command to resume from {checkpoint}" in result.output


def test_deep_resume_refuses_damaged_and_wrong_shaped_state(tmp_path: Path) -> None:
    config = tiny()
    path = tmp_path / "fig2.pt"
    with pytest.raises(Interrupted):
        train(config, checkpoint=path, interrupt_after=1)
    meta, arrays, _ = ckpt.read_archive(path)
    state = ckpt.decode_state(meta["state"], arrays)
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(3, 3)
    ckpt.save_checkpoint(path, kind=CHECKPOINT_KIND, identity=meta["identity"], state=state)
    with pytest.raises(CheckpointError, match=f"inconsistent: weight {name} has shape"):
        train(config, checkpoint=path)
    path.write_bytes(np.random.default_rng(2).bytes(1000))
    with pytest.raises(CheckpointError, match="not a structdrop checkpoint"):
        train(config, checkpoint=path)


def test_a_finished_deep_run_leaves_no_litter(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / f".fig2.pt.{dead.pid}.q1w2e3r4.tmp"
    stale.write_bytes(b"\0" * 4096)  # what a kill during a checkpoint write leaves
    run_deep(tiny(), tmp_path, progress=False)
    assert not folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fig2.json",
        "fig2.png",
        "timings.json",
    ]


# ------------------------------------------------------------------------------------------------
# Input files that are not what their name says; numbers that do not fit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "phrases"),
    [
        (b"1,2,3\n4,5,6\n", ("is not a NumPy .npy file", "name it .csv")),
        (pickle.dumps([[1.0, 2.0]]), ("pickled data", "never loaded")),
        (b"", ("is empty",)),
    ],
    ids=["text", "pickle", "empty"],
)
def test_a_file_that_is_not_npy_says_what_it_is(
    tmp_path: Path, content: bytes, phrases: tuple[str, ...]
) -> None:
    (tmp_path / "X.npy").write_bytes(content)
    np.save(tmp_path / "Y.npy", np.ones((2, 3)))
    arguments = ["optimum", "--x", str(tmp_path / "X.npy"), "--y", str(tmp_path / "Y.npy")]
    result = runner.invoke(app, [*arguments, "--p", "0.5", "--width", "2"])
    one_line_error(result, *phrases)
    if b"," in content:
        assert "pickled" not in result.output


def test_optimum_never_prints_null_for_a_number(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = 1e200 * rng.standard_normal((6, 20))
    Y = 1e200 * rng.standard_normal((3, 20))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", Y)
    arguments = ["optimum", "--x", str(tmp_path / "X.npy"), "--y", str(tmp_path / "Y.npy")]
    result = runner.invoke(app, [*arguments, "--p", "0.5", "--width", "2"])
    one_line_error(result, "overflow")
    assert "null" not in result.output


# ------------------------------------------------------------------------------------------------
# Killing the command
# ------------------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``: its children (a fork server, say) and theirs (workers)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_sigterm_stops_workers_and_keeps_checkpoints_resumable(tmp_path: Path) -> None:
    """``kill`` (SIGTERM) of ``structdrop reproduce synthetic`` during a sweep: exit 130, the
    pool's workers gone, no temporary file, and the rerun finishes from the checkpoints."""
    src = Path(sd.__file__).resolve().parents[1]
    command = [sys.executable, "-m", "structdrop", "reproduce", "synthetic", "--quick"]
    command += ["--figure", "fig5", "--out", str(tmp_path)]
    # the killed run gets this process's environment: the rerun below runs in this process, and
    # a checkpoint's identity holds the learning rates and data to the last bit, which the BLAS
    # kernel (OPENBLAS_CORETYPE, say) decides; with another one the rerun refuses every checkpoint
    environment = {**os.environ, "PYTHONPATH": str(src)}
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        folder = tmp_path / "checkpoints" / "fig5"
        workers: list[int] = []
        for _ in range(1200):
            workers = [pid for pid in _descendants(process.pid) if _running(pid)]
            if len(workers) >= 3 and folder.is_dir() and list(folder.glob("*.npz")):
                break
            assert process.poll() is None, process.stderr.read().decode()
            subprocess.run(["sleep", "0.1"], check=True)
        else:
            pytest.fail("the sweep did not start its workers")
        process.terminate()
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr.decode()
        assert "rerun the same command to resume" in stderr.decode()
        assert "Traceback" not in stderr.decode()
        for _ in range(100):
            if not any(_running(pid) for pid in workers):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert not [pid for pid in workers if _running(pid)]
        assert not list(tmp_path.rglob("*.tmp"))
        assert list(folder.glob("*.npz"))  # what the rerun resumes from
    finally:
        process.kill()
    result = runner.invoke(
        app, ["reproduce", "synthetic", "--quick", "--figure", "fig5", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "checkpoints").exists()


def test_a_deep_run_at_p_0_writes_its_result_and_report(tmp_path: Path) -> None:
    """p = 0 is valid: the theoretical minimum is 0, so there is no relative gap, only the
    excess of the objective over it."""
    out = tmp_path / "p0"
    command = ["reproduce", "deep", "--quick", "--trunk", "tiny", "--p", "0", "--out", str(out)]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "fig2.json").read_text())
    assert data["theory"]["value"] == 0.0
    assert data["gap"] is None
    assert data["excess"] == pytest.approx(data["final"]["objective"])
    assert "(the minimum is 0)" in (out / "REPORT.md").read_text()


# ------------------------------------------------------------------------------------------------
# One line, not a traceback: divergence, OS errors, folders for files, bounds, signals
# ------------------------------------------------------------------------------------------------
TINY_DEEP = ["reproduce", "deep", "--quick", "--trunk", "tiny"]


def test_a_diverging_deep_run_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, [*TINY_DEEP, "--lr", "1e10", "--out", str(tmp_path / "out")])
    one_line_error(result, "diverged", "lower --lr")


def _with_file_size_limit(limit: int) -> None:
    """In the child before it runs: files may not grow past ``limit`` bytes (EFBIG, as a full
    disk gives ENOSPC: a write fails half-way). Python ignores SIGXFSZ, so the write fails
    instead of the process dying."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize(
    ("command", "limit"),
    [(QUICK_FIG1, 4096), ([*TINY_DEEP, "--checkpoint-every", "0"], 4096)],
    ids=["synthetic", "deep"],
)
def test_a_full_disk_is_one_line_and_leaves_no_folder(
    tmp_path: Path, command: list[str], limit: int
) -> None:
    """Writes that fail half-way (the first checkpoint or result, in the command's process or
    a sweep's worker): one line naming the file, and no empty folder left behind."""
    out = tmp_path / "out"
    src = str(Path(sd.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-m", "structdrop", *command, "--out", str(out)],
        env={**os.environ, "PYTHONPATH": src},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _with_file_size_limit(limit),
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert str(out) in lines[0] and "File too large" in lines[0], lines[0]
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))


@pytest.mark.parametrize("command", [QUICK_FIG1, TINY_DEEP], ids=["synthetic", "deep"])
def test_a_read_only_checkpoint_folder_is_one_line(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "out" / "checkpoints"
    folder.mkdir(parents=True)
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        result = runner.invoke(app, [*command, "--out", str(tmp_path / "out")])
        one_line_error(result, str(folder), "ermission denied")
    finally:
        folder.chmod(0o700)


def test_an_unreadable_data_dir_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0)
    try:
        if os.access(data, os.R_OK):
            pytest.skip("chmod does not stop this user (root) from reading")
        options = ["--dataset", "mnist", "--data-dir", str(data), "--out", str(tmp_path / "o")]
        result = runner.invoke(app, [*TINY_DEEP, *options])
        one_line_error(result)
    finally:
        data.chmod(0o700)


def test_a_folder_in_place_of_a_synthetic_checkpoint_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "checkpoints" / "fig1" / "gridblock-p0.5.npz"
    folder.mkdir(parents=True)
    result = runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path / "out")])
    one_line_error(result, str(folder), "remove it")


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["resume", "force"])
def test_a_folder_in_place_of_a_deep_checkpoint_is_one_line(
    tmp_path: Path, force: list[str]
) -> None:
    folder = tmp_path / "out" / "checkpoints" / "fig2.pt"
    folder.mkdir(parents=True)
    result = runner.invoke(app, [*TINY_DEEP, *force, "--out", str(tmp_path / "out")])
    one_line_error(result, str(folder), "remove it")
    assert "choose a file path" not in result.output


@pytest.mark.parametrize(
    ("option", "value", "name", "phrase"),
    [
        ("--seed", "18446744073709551616", "seed", "2**63"),
        ("--checkpoint-every", "inf", "checkpoint-every", "finite"),
        ("--image-size", "1000000", "image_size", "1024"),
        ("--width", "1000000000000", "width", str(2**20)),
    ],
)
def test_out_of_bounds_deep_options_are_one_line(
    tmp_path: Path, option: str, value: str, name: str, phrase: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*TINY_DEEP, option, value, "--out", str(out)])
    one_line_error(result, name, phrase)
    assert not out.exists()


def test_an_out_of_bounds_synthetic_seed_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*QUICK_FIG1, "--seed", str(2**64), "--out", str(out)])
    one_line_error(result, "--seed", "2**63")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")
def test_a_failed_deep_run_leaves_no_empty_out_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*TINY_DEEP, "--device", "cuda", "--out", str(out)])
    one_line_error(result, "cuda")
    assert not out.exists()
    data = tmp_path / "no-data"
    data.mkdir()
    result = runner.invoke(
        app, [*TINY_DEEP, "--dataset", "cifar10", "--data-dir", str(data), "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert not out.exists()


def test_sigterm_while_deep_starts_says_interrupted(tmp_path: Path) -> None:
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "structdrop", *TINY_DEEP, "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.8)  # the command has started; torch is still importing
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    # 130, or death by SIGINT when the interrupt is raised again while the half-imported
    # modules are torn down: a shell reports both as 130
    assert process.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "interrupted before the first checkpoint: rerun the same command to start again"
    ], err
    assert not (tmp_path / "out").exists()  # created by the command, and left empty


# ------------------------------------------------------------------------------------------------
# Runs that race, resume or change their mind
# ------------------------------------------------------------------------------------------------
SRC_PATH = str(Path(sd.__file__).resolve().parents[1])


def _start(*arguments: str) -> subprocess.Popen[str]:
    """``structdrop ...`` in another process."""
    return subprocess.Popen(
        [sys.executable, "-m", "structdrop", *arguments],
        env={**os.environ, "PYTHONPATH": SRC_PATH},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(condition, process: subprocess.Popen[str], what: str) -> None:
    import time

    deadline = time.monotonic() + 180
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.communicate()}")
        assert time.monotonic() < deadline, f"no {what} after 180 s"
        time.sleep(0.02)


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    import signal

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def test_the_command_line_gives_back_the_sigterm_handler(tmp_path: Path) -> None:
    """In-process calls (a notebook, a test suite) keep their own SIGTERM handling: the
    command's handler is gone once it returns, whether it succeeded or failed, and a handler
    of the caller's is left alone."""
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what a plain process has
    try:
        assert runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path / "a")]).exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        failed = runner.invoke(app, [*TINY_DEEP, "--lr", "1e10", "--out", str(tmp_path / "b")])
        assert failed.exit_code == 2
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def mine(signum: int, frame: object) -> None:
            pass

        signal.signal(signal.SIGTERM, mine)
        assert runner.invoke(app, [*QUICK_FIG1, "--out", str(tmp_path / "a")]).exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_a_second_run_into_the_same_out_refuses_while_the_first_runs(tmp_path: Path) -> None:
    """Two processes, one --out, other settings: the second refuses in one line naming the
    first, deletes nothing; the first goes on and keeps its checkpoint."""
    out = tmp_path / "out"
    first = _start(*TINY_DEEP, "--epochs", "3000", "--checkpoint-every", "0", "--out", str(out))
    checkpoint = out / "checkpoints" / "fig2.pt"
    try:
        _wait_until(checkpoint.exists, first, "checkpoint")
        second = _start(*TINY_DEEP, "--epochs", "3", "--out", str(out))
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "being written by another run" in lines[0], err
        assert f"process {first.pid}" in lines[0] and "--epochs 3000" in lines[0], lines[0]
        # in-process too, for the synthetic command beside it: another name, no conflict
        assert runner.invoke(app, [*QUICK_FIG1, "--out", str(out)]).exit_code == 0
        assert checkpoint.exists() and first.poll() is None
        assert not (out / "fig2.json").exists()
    finally:
        code, err = _stop(first)
    assert code == 130, err
    assert f"resume from {checkpoint}" in err
    assert checkpoint.exists()
    assert not (out / ".fig2.lock").exists()


@pytest.mark.slow
def test_a_second_synthetic_run_of_the_same_figure_refuses(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _start("reproduce", "synthetic", "--quick", "--figure", "fig5", "--out", str(out))
    try:
        _wait_until((out / ".fig5.lock").exists, first, "lock")
        result = runner.invoke(
            app, ["reproduce", "synthetic", "--quick", "--figure", "fig5", "--seed", "1",
                  "--out", str(out)],
        )  # fmt: skip
        one_line_error(result, "fig5", "being written by another run", f"process {first.pid}")
    finally:
        assert first.wait(timeout=300) == 0, first.communicate()
    assert json.loads((out / "fig5.json").read_text())["config"]["seed"] == 0
    assert not list(out.glob(".*.lock"))


@pytest.mark.slow
@pytest.mark.parametrize("command", [QUICK_FIG1, TINY_DEEP], ids=["synthetic", "deep"])
def test_a_users_report_is_not_replaced_unless_forced(tmp_path: Path, command: list[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "REPORT.md").write_text("# My notes\n")
    result = runner.invoke(app, [*command, "--out", str(out)])
    one_line_error(result, "REPORT.md is not a structdrop report", "--force")
    assert (out / "REPORT.md").read_text() == "# My notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md"]  # refused before any work
    result = runner.invoke(app, [*command, "--force", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "REPORT.md").read_text().startswith(report.REPORT_HEADING)
    assert runner.invoke(app, [*command, "--out", str(out)]).exit_code == 0  # ours: replaced


def test_a_temporary_file_of_a_killed_writer_goes_with_the_next_run(tmp_path: Path) -> None:
    """SIGKILL right after a figure's JSON is written leaves the timings' temporary file; the
    next run skips the figure, writes no timings, and still removes it."""
    out = tmp_path / "out"
    assert runner.invoke(app, [*QUICK_FIG1, "--out", str(out)]).exit_code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".timings.json.{dead.pid}.k9x2m1q7.tmp"
    stale.write_bytes(b"")
    result = runner.invoke(app, [*QUICK_FIG1, "--out", str(out)])
    assert result.exit_code == 0 and "already done" in result.output, result.output
    assert not stale.exists()


@pytest.mark.slow
def test_an_interrupted_forced_deep_run_resumes(tmp_path: Path) -> None:
    """--force over results of other settings, interrupted: the same command resumes from the
    checkpoint, as the message says, and finishes."""
    out = tmp_path / "out"
    assert runner.invoke(app, [*TINY_DEEP, "--out", str(out)]).exit_code == 0
    forced = [*TINY_DEEP, "--epochs", "60", "--checkpoint-every", "0", "--force"]
    run = _start(*forced, "--out", str(out))
    checkpoint = out / "checkpoints" / "fig2.pt"
    _wait_until(checkpoint.exists, run, "checkpoint")
    code, err = _stop(run)
    if code == 0:
        pytest.skip("the run finished before it was interrupted")
    assert code == 130 and f"resume from {checkpoint}" in err, err
    result = runner.invoke(app, [*forced, "--out", str(out)])
    assert result.exit_code == 0, result.output
    timings = json.loads((out / "timings.json").read_text())
    assert timings["fig2"]["resumed_from_epoch"] >= 1
    assert json.loads((out / "fig2.json").read_text())["config"]["epochs"] == 60
    assert not checkpoint.exists()


@pytest.mark.slow
def test_an_interrupted_forced_synthetic_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force over a figure of another seed, interrupted: the same call resumes its runs
    from their checkpoints (instead of deleting them) and finishes."""
    out = tmp_path / "out"
    figure = ["reproduce", "synthetic", "--quick", "--figure", "fig5", "--out", str(out)]
    assert runner.invoke(app, figure).exit_code == 0
    forced = [*figure, "--seed", "1", "--force"]
    folder = out / "checkpoints" / "fig5"
    run = _start(*forced)
    _wait_until(lambda: any(folder.glob("*.npz")), run, "checkpoints")
    code, err = _stop(run)
    if code == 0:
        pytest.skip("the run finished before it was interrupted")
    assert code == 130 and "resume from" in err, err
    resumed: list[int] = []
    load = sgd.RunState.load

    def watched(*args: object, **kwargs: object) -> object:
        state = load(*args, **kwargs)
        resumed.append(0 if state is None else state.position)
        return state

    monkeypatch.setattr(sgd.RunState, "load", watched)
    config = dataclasses.replace(synthetic.Config(), n_jobs=1)  # the runs in this process
    status = synthetic.run(["fig5"], out, quick=True, seed=1, force=True, config=config)
    assert status == {"fig5": "done"}
    assert max(resumed) >= 1, resumed  # at least one run went on from its checkpoint
    assert json.loads((out / "fig5.json").read_text())["config"]["seed"] == 1
    assert not folder.exists()


@pytest.mark.parametrize(
    ("environment", "phrases"),
    [
        ({"WORLD_SIZE": "abc"}, ("WORLD_SIZE", "'abc'")),
        ({"WORLD_SIZE": "0"}, ("WORLD_SIZE", ">= 1")),
        ({"WORLD_SIZE": "2"}, ("WORLD_SIZE=2", "RANK", "torchrun")),
        (
            {"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"},
            ("RANK must be below WORLD_SIZE=2", "5"),
        ),
        ({"LOCAL_RANK": "x"}, ("LOCAL_RANK", "'x'")),
    ],
)
def test_a_bad_torchrun_environment_is_one_line(
    tmp_path: Path, environment: dict[str, str], phrases: tuple[str, ...]
) -> None:
    clean = {name: None for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out = tmp_path / "out"
    result = runner.invoke(app, [*TINY_DEEP, "--out", str(out)], env={**clean, **environment})
    one_line_error(result, *phrases)
    assert not out.exists()


@pytest.mark.parametrize("command", [QUICK_FIG1, TINY_DEEP], ids=["synthetic", "deep"])
def test_an_out_name_too_long_is_one_line(tmp_path: Path, command: list[str]) -> None:
    out = tmp_path / ("x" * 300)
    result = runner.invoke(app, [*command, "--out", str(out)])
    one_line_error(result, "--out", "File name too long")
