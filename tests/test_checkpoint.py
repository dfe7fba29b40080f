"""Checkpoints as one verified unit (_checkpoint.py), atomic writes without litter (_files.py),
and Algorithm 1's resume under faults: a kill between any two writes, a kill inside a write,
and every kind of file that is not this run's checkpoint."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import structdrop as sd
from oracles import low_rank_problem
from structdrop import CheckpointError
from structdrop import _checkpoint as ckpt
from structdrop._files import (
    remove_stale_temporaries,
    remove_stale_temporaries_under,
    write_atomically,
)
from structdrop.linear import DivergenceError, fit_sgd
from structdrop.linear import sgd as sgd_module

SRC = Path(sd.__file__).resolve().parents[1]


SETTINGS = dict(lr=1e-3, iterations=6_000, lr_decay=1e3, seed=2, record=8)
SCHEME = sd.GridBlock(0.5, 3)


def reference_run():
    X, Y, U0, V0 = low_rank_problem()
    return fit_sgd(X, Y, U0, V0, SCHEME, **SETTINGS)


def assert_same_run(a: sd.linear.Trajectory, b: sd.linear.Trajectory) -> None:
    np.testing.assert_array_equal(a.iterations, b.iterations)
    np.testing.assert_array_equal(a.expected, b.expected)
    np.testing.assert_array_equal(a.stochastic, b.stochastic)
    np.testing.assert_array_equal(a.U, b.U)
    np.testing.assert_array_equal(a.V, b.V)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------
# The container
# ------------------------------------------------------------------------------------------------
def test_state_round_trips_with_arrays_tensors_int_keys_and_tuples(tmp_path: Path) -> None:
    state = {
        "U": np.arange(6.0).reshape(2, 3),
        "mask": np.array([True, False]),
        "model": {"w": torch.randn(3, 2), "half": torch.randn(4).bfloat16(), "n": torch.tensor(7)},
        "optimizer": {0: {"step": torch.tensor(3.0)}, 1: {"betas": (0.9, 0.999)}},
        "history": [1.5, None, "x", True, 2**70],
        "__array__": "a key that looks like a marker",
    }
    path = ckpt.save_checkpoint(tmp_path / "c.npz", kind="k", identity={"seed": 1}, state=state)
    back = ckpt.load_checkpoint(path, kind="k", identity={"seed": 1})
    np.testing.assert_array_equal(back["U"], state["U"])
    np.testing.assert_array_equal(back["mask"], state["mask"])
    for name, tensor in state["model"].items():
        assert back["model"][name].dtype == tensor.dtype
        assert torch.equal(back["model"][name], tensor)
    assert back["optimizer"][1]["betas"] == (0.9, 0.999)
    assert torch.equal(back["optimizer"][0]["step"], torch.tensor(3.0))
    assert back["history"] == state["history"]
    assert back["__array__"] == state["__array__"]
    assert list(back) == list(state)  # key order is kept (result files stay byte-identical)


def test_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert ckpt.load_checkpoint(tmp_path / "none.npz", kind="k", identity=0) is None


def _valid(tmp_path: Path) -> Path:
    state = {"U": np.linspace(0, 1, 200).reshape(20, 10), "step": 3}
    return ckpt.save_checkpoint(tmp_path / "c.npz", kind="k", identity="run", state=state)


def _npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def _torch_bytes() -> bytes:
    stream = io.BytesIO()
    torch.save({"epoch": 1, "w": torch.ones(2)}, stream)
    return stream.getvalue()


BAD_FILES = {
    "random bytes": lambda good: np.random.default_rng(0).bytes(5000),
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "tail cut": lambda good: good[:-30],
    "text": lambda good: b"U,V\n1,2\n",
    "pickle": lambda good: pickle.dumps({"U": [1.0]}),
    "torch.save": lambda good: _torch_bytes(),
    "plain .npy": lambda good: _npy_bytes(np.ones((3, 3))),
    "foreign .npz": lambda good: _npz_bytes(U=np.ones((3, 3)), V=np.ones((3, 3))),
    "object .npz": lambda good: _npz_bytes(U=np.array([{"a": 1}], dtype=object)),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_unusable_files_raise_one_clear_error(tmp_path: Path, name: str) -> None:
    good = _valid(tmp_path).read_bytes()
    path = tmp_path / "c.npz"
    path.write_bytes(BAD_FILES[name](good))
    with pytest.raises(CheckpointError) as caught:
        ckpt.load_checkpoint(path, kind="k", identity="run")
    message = str(caught.value)
    assert str(path) in message and "--force" in message and "delete it" in message
    assert "\n" not in message and "allow_pickle" not in message
    assert "weights_only" not in message


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "c.npz").mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        ckpt.load_checkpoint(tmp_path / "c.npz", kind="k", identity="run")


def test_a_flipped_bit_is_caught(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    data = bytearray(path.read_bytes())
    offset = data.index(np.linspace(0, 1, 200)[57].tobytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"cannot be read|inconsistent"):
        ckpt.load_checkpoint(path, kind="k", identity="run")


def test_arrays_swapped_under_the_metadata_are_caught(tmp_path: Path) -> None:
    """An archive whose array was replaced (valid zip, valid CRC) no longer matches its digest."""
    path = _valid(tmp_path)
    with np.load(path) as archive:
        members = {key: archive[key] for key in archive.files}
    members["a0"] = members["a0"] * 2.0
    path.write_bytes(_npz_bytes(**members))
    with pytest.raises(CheckpointError, match="its arrays do not match its metadata"):
        ckpt.load_checkpoint(path, kind="k", identity="run")


def test_kind_identity_format_and_finiteness_are_checked(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    with pytest.raises(CheckpointError, match="is a checkpoint of 'k', not of 'other'"):
        ckpt.load_checkpoint(path, kind="other", identity="run")
    with pytest.raises(CheckpointError, match="belongs to another run"):
        ckpt.load_checkpoint(path, kind="k", identity="another run")
    nan = {"U": np.array([1.0, np.nan])}
    ckpt.save_checkpoint(path, kind="k", identity="run", state=nan)
    with pytest.raises(CheckpointError, match="non-finite"):
        ckpt.load_checkpoint(path, kind="k", identity="run")
    meta = json.dumps({"format": 99, "kind": "k"}).encode()
    path.write_bytes(_npz_bytes(**{ckpt.META: np.frombuffer(meta, dtype=np.uint8)}))
    with pytest.raises(CheckpointError, match="format 99"):
        ckpt.load_checkpoint(path, kind="k", identity="run")


def test_the_callers_check_is_reported_as_inconsistent(tmp_path: Path) -> None:
    path = _valid(tmp_path)

    def check(state: dict) -> None:
        ckpt.check_array(state["U"], "U", (20, 11), np.float64)

    with pytest.raises(CheckpointError, match=r"inconsistent: U has shape \(20, 10\)"):
        ckpt.load_checkpoint(path, kind="k", identity="run", check=check)


# ------------------------------------------------------------------------------------------------
# Atomic writes leave nothing behind
# ------------------------------------------------------------------------------------------------
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_atomically(path, lambda stream: stream.write(b"old"))

    def broken(stream: io.BufferedWriter) -> None:
        stream.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, broken)
    assert path.read_bytes() == b"old"
    assert temporaries(tmp_path) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "fig2.pt"
    dead = tmp_path / f".fig2.pt.{_dead_pid()}.abcd1234.tmp"
    legacy = tmp_path / ".fig2.pt.k3j_x9q1.tmp"  # named without a process id
    alive = tmp_path / f".fig2.pt.{os.getppid()}.zz99.tmp"  # a writer that still runs
    other = tmp_path / ".other.json.123.ab.tmp"
    for stale in (dead, legacy, alive, other):
        stale.write_bytes(b"x" * 100)
    write_atomically(path, lambda stream: stream.write(b"new"))
    assert path.read_bytes() == b"new"
    assert not dead.exists() and not legacy.exists()
    assert alive.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "other.json") == [other]


# ------------------------------------------------------------------------------------------------
# Algorithm 1: a kill between any two writes, or inside one, resumes to the same run
# ------------------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for the process dying at a chosen point of a checkpoint write."""


def _writes_of_a_run(tmp_path: Path) -> int:
    calls = {"n": 0}
    original = ckpt.write_atomically

    def counting(path, write):
        calls["n"] += 1
        return original(path, write)

    X, Y, U0, V0 = low_rank_problem()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ckpt, "write_atomically", counting)
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=tmp_path / "count.npz", **SETTINGS)
    return calls["n"]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["before", "during", "after"])
def test_a_kill_at_every_write_resumes_to_the_uninterrupted_run(
    tmp_path: Path, moment: str
) -> None:
    """For each checkpoint write k of a run, kill the run just before it, in the middle of
    writing it, or just after it; the rerun must equal the run that was never interrupted."""
    reference = reference_run()
    writes = _writes_of_a_run(tmp_path)
    assert writes == reference.iterations.size - 1  # one file per record point, no pairs
    X, Y, U0, V0 = low_rank_problem()
    original = ckpt.write_atomically
    for k in range(1, writes + 1):
        folder = tmp_path / f"{moment}-{k}"
        calls = {"n": 0}

        def dying(path, write, k=k, calls=calls):
            calls["n"] += 1
            if calls["n"] < k:
                return original(path, write)
            if moment == "before":
                raise Killed
            if moment == "during":

                def half(stream):
                    write(stream)
                    stream.truncate(stream.tell() // 2)
                    raise Killed

                return original(path, half)
            original(path, write)
            raise Killed

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ckpt, "write_atomically", dying)
            with pytest.raises(Killed):
                fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=folder / "run.npz", **SETTINGS)
        resumed = fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=folder / "run.npz", **SETTINGS)
        assert_same_run(resumed, reference)
        assert temporaries(folder) == []


KILLER = """
import os, signal, sys
import numpy as np
import structdrop as sd
from structdrop import _files
from structdrop.linear import fit_sgd
sys.path.insert(0, {tests!r})
from oracles import low_rank_problem
from test_checkpoint import SCHEME, SETTINGS
k, moment, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
calls = [0]
replace = os.replace
def dying(source, target):
    calls[0] += 1
    if calls[0] == k and moment == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    replace(source, target)
    if calls[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
_files.os.replace = dying
X, Y, U0, V0 = low_rank_problem()
fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("k", "moment"), [(2, "before"), (5, "after")])
def test_sigkill_during_a_run_resumes_identically_and_leaves_no_litter(
    tmp_path: Path, k: int, moment: str
) -> None:
    """A real ``kill -9`` of the training process just before or just after it renames a
    checkpoint into place; the rerun equals the uninterrupted run and removes the orphaned
    temporary file."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(tests=str(Path(__file__).parent)))
    path = tmp_path / "run.npz"
    environment = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, str(script), str(k), moment, str(path)], env=environment, timeout=300
    )
    assert done.returncode == -signal.SIGKILL
    assert path.exists()
    if moment == "before":
        assert len(temporaries(tmp_path)) == 1  # what the killed writer could not remove
    X, Y, U0, V0 = low_rank_problem()
    resumed = fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)
    assert_same_run(resumed, reference_run())
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Algorithm 1: files that are not this run's checkpoint
# ------------------------------------------------------------------------------------------------
def _finished_checkpoint(tmp_path: Path) -> Path:
    X, Y, U0, V0 = low_rank_problem()
    path = tmp_path / "run.npz"
    fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)
    return path


def test_a_foreign_npz_in_place_of_the_checkpoint_is_refused(tmp_path: Path) -> None:
    path = _finished_checkpoint(tmp_path)
    path.write_bytes(_npz_bytes(U=np.ones((3, 3)), V=np.ones((3, 3))))
    X, Y, U0, V0 = low_rank_problem()
    with pytest.raises(CheckpointError, match="not a structdrop checkpoint"):
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)


def test_a_checkpoint_of_a_wider_network_is_refused(tmp_path: Path) -> None:
    X, Y, U0, V0 = low_rank_problem()
    wide = low_rank_problem(d=21)
    path = tmp_path / "run.npz"
    _first_checkpoint(path, *wide)
    with pytest.raises(CheckpointError, match="belongs to another run"):
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)


def _first_checkpoint(path: Path, X, Y, U0, V0) -> None:
    """A run of fit_sgd killed right after it wrote its first checkpoint at ``path``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sgd_module.RunState, "save", _stop_after_first_save())
        with pytest.raises(Killed):
            fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)


def _stop_after_first_save():
    original = sgd_module.RunState.save

    def save(self, path, fingerprint):
        original(self, path, fingerprint)
        raise Killed

    return save


def _rewrite_state(path: Path, **changes) -> None:
    """Rewrite a fit_sgd checkpoint with its identity intact and some entries changed, as a
    damaged-but-consistent file would be."""
    meta, arrays, _ = ckpt.read_archive(path)
    state = ckpt.decode_state(meta["state"], arrays)
    state.update(changes)
    ckpt.save_checkpoint(
        path, kind=sgd_module.CHECKPOINT_KIND, identity=meta["identity"], state=state
    )


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"U": np.full((5, 6), np.nan)}, "non-finite"),
        ({"U": np.ones((3, 3))}, r"U has shape \(3, 3\), expected \(5, 6\)"),
        ({"V": np.ones((7, 6), dtype=np.float32)}, "V has dtype float32"),
        ({"position": 99}, "outside the"),
        ({"expected": [1.0]}, "expected does not hold"),
    ],
    ids=["nan-weights", "shape", "dtype", "position", "history"],
)
def test_a_consistent_but_wrong_state_is_refused(tmp_path: Path, changes: dict, match: str) -> None:
    """NaN weights are a damaged checkpoint (not a DivergenceError blaming the learning rate);
    weights of another shape never train silently."""
    X, Y, U0, V0 = low_rank_problem()
    path = tmp_path / "run.npz"
    _first_checkpoint(path, X, Y, U0, V0)
    _rewrite_state(path, **changes)
    with pytest.raises(CheckpointError, match=match) as caught:
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)
    assert not isinstance(caught.value, DivergenceError)


def test_discrete_laws_of_one_shape_do_not_share_checkpoints(tmp_path: Path) -> None:
    X, Y, U0, V0 = low_rank_problem()
    masks = np.array([[1.0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]])
    first, second = sd.Discrete(masks, [0.5, 0.5]), sd.Discrete(masks, [0.6, 0.4])
    assert repr(first) != repr(second)
    path = tmp_path / "run.npz"
    fit_sgd(X, Y, U0, V0, first, checkpoint=path, **SETTINGS)
    with pytest.raises(CheckpointError, match="belongs to another run"):
        fit_sgd(X, Y, U0, V0, second, checkpoint=path, **SETTINGS)


@pytest.mark.parametrize("checkpoint", ["", "   "])
def test_an_empty_checkpoint_path_says_what_is_wrong(checkpoint: str) -> None:
    X, Y, U0, V0 = low_rank_problem()
    with pytest.raises(ValueError, match="checkpoint must be a file path or None, got"):
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=checkpoint, **SETTINGS)


def test_a_folder_as_checkpoint_says_what_is_wrong(tmp_path: Path) -> None:
    X, Y, U0, V0 = low_rank_problem()
    with pytest.raises(CheckpointError, match="is a folder where a checkpoint file should be"):
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=tmp_path, **SETTINGS)


def _returns_or_raises_without_blocking(call, fifo: Path):
    """What ``call()`` returns or raises, run in a thread. Should it block on opening ``fifo``
    (waiting for a writer that never comes), a writer is let in to release it and the test
    fails, so that the suite goes on."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a reader waits: this opens
        thread.join(60)
        pytest.fail(f"reading the FIFO {fifo} blocked")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_as_checkpoint_is_refused_without_blocking(tmp_path: Path) -> None:
    X, Y, U0, V0 = low_rank_problem()
    fifo = tmp_path / "run.npz"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError) as caught:
        _returns_or_raises_without_blocking(
            lambda: fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=fifo, **SETTINGS), fifo
        )
    message = str(caught.value)
    assert str(fifo) in message and "is a FIFO (named pipe)" in message
    assert "remove it" in message and "\n" not in message


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_a_device_is_not_a_checkpoint() -> None:
    with pytest.raises(CheckpointError, match="is a character device") as caught:
        ckpt.load_checkpoint("/dev/null", kind="k", identity="run")
    assert "/dev/null" in str(caught.value) and "remove it" in str(caught.value)


def _no_steps(*args: object, **kwargs: object) -> int:
    raise AssertionError("the run started before its checkpoint path was checked")


@pytest.mark.parametrize("below", [["run.npz"], ["sub", "run.npz"]], ids=["in", "under"])
def test_a_checkpoint_path_under_a_file_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below: list[str]
) -> None:
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("not a folder")
    path = in_the_way.joinpath(*below)
    monkeypatch.setattr(sgd_module, "run_chunk", _no_steps)
    X, Y, U0, V0 = low_rank_problem()
    with pytest.raises(CheckpointError) as caught:
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)
    message = str(caught.value)
    assert str(path) in message and f"lies under {in_the_way}, which is a regular file" in message
    assert "\n" not in message
    assert in_the_way.read_text() == "not a folder"


@pytest.mark.parametrize(
    "rng_state",
    [
        np.random.Generator(np.random.MT19937(0)).bit_generator.state,
        {},
        {"bit_generator": "PCG64"},
        {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}, "has_uint32": 0,
         "uinteger": 0},
        {"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}, "has_uint32": 0,
         "uinteger": 0},
    ],
    ids=["MT19937", "empty", "no-state", "text", "negative"],
)  # fmt: skip
def test_a_checkpoint_with_a_foreign_generator_state_is_refused(
    tmp_path: Path, rng_state: dict
) -> None:
    X, Y, U0, V0 = low_rank_problem()
    path = tmp_path / "run.npz"
    _first_checkpoint(path, X, Y, U0, V0)
    _rewrite_state(path, rng_state=rng_state)
    with pytest.raises(CheckpointError) as caught:
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)
    message = str(caught.value)
    assert str(path) in message and "rng_state is not a PCG64 generator state" in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------------------
# Sweeps: no orphan workers
# ------------------------------------------------------------------------------------------------
def test_zip_archive_checks_are_what_catches_a_torn_file(tmp_path: Path) -> None:
    """The archive's own CRC catches a torn write; the error still names the file."""
    path = _valid(tmp_path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=str(path)):
        ckpt.load_checkpoint(path, kind="k", identity="run")


def test_stale_temporaries_under_a_folder_are_found_recursively(tmp_path: Path) -> None:
    dead = _dead_pid()
    deep_folder = tmp_path / "checkpoints" / "fig5"
    deep_folder.mkdir(parents=True)
    stale = deep_folder / f".gridblock-p0.1.npz.{dead}.o5mr3ydx.tmp"
    live = deep_folder / f".gridblock-p0.3.npz.{os.getppid()}.abcdefgh.tmp"
    mine = tmp_path / f".fig1.json.{dead}.x1.tmp"
    for path in (stale, live, mine):
        path.write_bytes(b"half")
    removed = remove_stale_temporaries_under(tmp_path)
    assert sorted(removed) == sorted([stale, mine])
    assert live.exists() and not stale.exists() and not mine.exists()


# ------------------------------------------------------------------------------------------------
# Metadata edited under valid arrays
# ------------------------------------------------------------------------------------------------
def _edit_metadata(path: Path, change) -> None:
    """Rewrite the metadata member of the archive at ``path`` with ``change(meta)`` applied,
    copying every array member byte for byte (the arrays and their CRCs stay valid)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    meta_name = f"{ckpt.META}.npy"
    meta = json.loads(np.load(io.BytesIO(members[meta_name])).tobytes().decode())
    change(meta)
    members[meta_name] = _npy_bytes(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(stream.getvalue())


def _set_step(meta: dict) -> None:
    meta["state"]["step"] = 4


def _set_identity(meta: dict) -> None:
    meta["identity"] = "another run"


def _rename_array(meta: dict) -> None:
    meta["state"]["U"] = {"__array__": "a9"}


@pytest.mark.parametrize(
    ("change", "identity"),
    [(_set_step, "run"), (_set_identity, "another run"), (_rename_array, "run")],
    ids=["state", "identity", "array-reference"],
)
def test_a_checkpoint_whose_metadata_was_edited_is_refused(
    tmp_path: Path, change, identity: str
) -> None:
    path = _valid(tmp_path)
    _edit_metadata(path, lambda meta: None)  # the rewriting itself keeps a valid checkpoint
    back = ckpt.load_checkpoint(path, kind="k", identity="run")
    assert back["step"] == 3
    np.testing.assert_array_equal(back["U"], np.linspace(0, 1, 200).reshape(20, 10))
    _edit_metadata(path, change)
    with pytest.raises(CheckpointError, match="its arrays do not match its metadata"):
        ckpt.load_checkpoint(path, kind="k", identity=identity)


def test_a_run_whose_checkpoint_claims_more_progress_than_its_arrays_is_refused(
    tmp_path: Path,
) -> None:
    """A checkpoint written at record point 2 whose metadata was edited to say record point 5
    (with a history that fits position 5) is refused, never resumed from point 5."""
    X, Y, U0, V0 = low_rank_problem()
    path = tmp_path / "run.npz"
    original = sgd_module.RunState.save
    saves = {"n": 0}

    def save(self, path, fingerprint):
        original(self, path, fingerprint)
        saves["n"] += 1
        if saves["n"] == 2:
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sgd_module.RunState, "save", save)
        with pytest.raises(Killed):
            fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)
    meta, _, _ = ckpt.read_archive(path)
    assert meta["state"]["position"] == 2

    def claim_position_5(meta: dict) -> None:
        state = meta["state"]
        state["position"] = 5
        for name in ("expected", "stochastic"):
            state[name] = state[name] + [state[name][-1]] * 3

    _edit_metadata(path, claim_position_5)
    with pytest.raises(CheckpointError, match="its arrays do not match its metadata"):
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)


def test_a_checkpoint_missing_an_entry_is_refused(tmp_path: Path) -> None:
    X, Y, U0, V0 = low_rank_problem()
    path = tmp_path / "run.npz"
    _first_checkpoint(path, X, Y, U0, V0)
    meta, arrays, _ = ckpt.read_archive(path)
    state = ckpt.decode_state(meta["state"], arrays)
    del state["rng_state"]
    ckpt.save_checkpoint(
        path, kind=sgd_module.CHECKPOINT_KIND, identity=meta["identity"], state=state
    )
    with pytest.raises(CheckpointError, match=r"is inconsistent: 'rng_state'"):
        fit_sgd(X, Y, U0, V0, SCHEME, checkpoint=path, **SETTINGS)


def _with_member(good: bytes, name: str, member: bytes) -> bytes:
    """The archive ``good`` with its member ``name`` replaced by the bytes ``member``."""
    stream = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(stream, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, member if info.filename == name else source.read(info))
    return stream.getvalue()


@pytest.mark.parametrize("shape", [(1 << 45,), (1 << 20, 1 << 20), (21, 10), (19, 10)])
def test_a_member_declaring_another_size_is_refused_before_it_is_read(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    """A ``.npy`` member whose header declares a shape that its bytes do not hold (a huge one
    included) is refused from its header, without allocating the array."""
    path = _valid(tmp_path)
    good = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        name = next(n for n in archive.namelist() if n != f"{ckpt.META}.npy")
        data = archive.read(name)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    body = data[len(data) - 200 * 8 :]  # the 20 x 10 float64 array's bytes
    path.write_bytes(_with_member(good, name, header.getvalue() + body))
    with pytest.raises(CheckpointError, match="declares an array of shape") as caught:
        ckpt.load_checkpoint(path, kind="k", identity="run")
    message = str(caught.value)
    assert str(path) in message and name in message and "1600 bytes" in message
