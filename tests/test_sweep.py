"""structdrop.linear.run_sweep: results in order, a failure stops the sweep at once and never
hangs, stopped workers are gone and leave no file behind, workers start clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from structdrop._files import write_atomically
from structdrop.linear import run_sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is not running
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _square(v: int) -> int:
    return v * v


def test_results_come_back_in_the_order_of_the_jobs() -> None:
    jobs = [{"v": v} for v in range(7)]
    assert run_sweep(_square, jobs, n_jobs=2) == [v * v for v in range(7)]


def _slow_or_failing(folder: str, index: int) -> int:
    if index == 1:
        while not (Path(folder) / "started").exists():
            time.sleep(0.02)
        raise ValueError("job 1 failed")
    (Path(folder) / "started").touch()
    time.sleep(60)
    (Path(folder) / "finished").touch()
    return index


def test_a_job_that_fails_after_a_slow_one_stops_the_sweep_at_once(tmp_path: Path) -> None:
    """The slow job comes first: the sweep does not wait for it to see the second one fail."""
    jobs = [{"folder": str(tmp_path), "index": i} for i in (0, 1)]
    with pytest.raises(ValueError, match="job 1 failed"):
        run_sweep(_slow_or_failing, jobs, n_jobs=2)
    assert (tmp_path / "started").exists() and not (tmp_path / "finished").exists()


def _stubborn(folder: str, index: int) -> int:
    """Job 0 ignores SIGTERM and never ends; job 1 fails once job 0 runs."""
    pid_file = Path(folder) / f"worker{index}.pid"
    pid_file.write_text(str(os.getpid()))
    if index == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.01)
    while not (Path(folder) / "worker0.pid").exists():
        time.sleep(0.02)
    raise RuntimeError("job 1 failed")


@pytest.mark.slow
def test_a_worker_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    jobs = [{"folder": str(tmp_path), "index": i} for i in (0, 1)]
    with pytest.raises(RuntimeError, match="job 1 failed"):
        run_sweep(_stubborn, jobs, n_jobs=2)
    stubborn = int((tmp_path / "worker0.pid").read_text())
    deadline = time.monotonic() + 10
    while _running(stubborn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(stubborn)


def _blas_threads() -> int:
    import numpy as np

    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS loaded
    return min(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


@pytest.mark.parametrize("threads", [1, 2])
def test_workers_take_the_callers_blas_threads(threads: int) -> None:
    """A job computes with the caller's BLAS settings (results depend on them), in a worker
    that did not inherit them by forking."""
    with threadpool_limits(limits=threads, user_api="blas"):
        assert run_sweep(_blas_threads, [{}, {}], n_jobs=2) == [threads, threads]


def test_a_single_threaded_blas_of_the_caller_leaves_the_workers_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each BLAS library of the caller counts on its own. One that keeps one thread whatever it
    is told (the OpenBLAS that SCS bundles, which cvxpy loads) is not the workers' count: it
    was, when it came last among the libraries (the sweep took the last one's count for all)."""
    import threadpoolctl

    real = threadpoolctl.threadpool_info
    single = {
        "user_api": "blas",
        "internal_api": "openblas",
        "prefix": "libopenblas",
        "filepath": "/nowhere/libopenblas-single.so",
        "num_threads": 1,
    }
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [*real(), single])
    with threadpool_limits(limits=2, user_api="blas"):
        assert run_sweep(_blas_threads, [{}, {}], n_jobs=2) == [2, 2]


def _handlers() -> tuple[bool, bool]:
    return (
        signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL,
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    )


def test_workers_do_not_inherit_the_callers_signal_handlers() -> None:
    """A handler of the caller (e.g. a command line's SIGTERM handler) never runs in a worker;
    a Ctrl-C, which reaches the whole process group, is left to the caller."""
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        assert run_sweep(_handlers, [{}, {}], n_jobs=2) == [(True, True), (True, True)]
    finally:
        signal.signal(signal.SIGUSR1, previous)


class _Unrebuildable(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"code {code}: {text}")


def _write_and_fail(folder: str, index: int, round: int) -> int:
    """Job 0 writes a file slowly (a temporary file in flight); job 1 fails once it has begun,
    alternately with an exception that pickles and one that cannot be rebuilt."""
    folder_path = Path(folder)
    (folder_path / f"worker{round}-{index}.pid").write_text(str(os.getpid()))
    if index == 0:

        def slowly(stream: object) -> None:
            (folder_path / f"writing{round}").touch()
            time.sleep(30)

        write_atomically(folder_path / f"result{round}.json", slowly)
        return index
    while not (folder_path / f"writing{round}").exists():
        time.sleep(0.005)
    if round % 2:
        raise _Unrebuildable(round, "no way back")
    raise ValueError(f"round {round} failed")


LOOP = """
import os, sys, time
from pathlib import Path
from structdrop.linear import run_sweep
import test_sweep

folder = Path(sys.argv[1])
for round in range(int(sys.argv[2])):
    jobs = [{"folder": str(folder), "index": i, "round": round} for i in (0, 1)]
    try:
        run_sweep(test_sweep._write_and_fail, jobs, n_jobs=2)
    except (ValueError, RuntimeError) as error:
        expected = "no way back" if round % 2 else f"round {round} failed"
        assert expected in str(error), error
    else:
        raise AssertionError("the sweep did not raise")
    pids = [int(p.read_text()) for p in folder.glob(f"worker{round}-*.pid")]
    deadline = time.monotonic() + 10
    while any(test_sweep._running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in pids if test_sweep._running(pid)], f"round {round}: a worker lives"
    litter = sorted(p.name for p in folder.glob(".*.tmp"))
    assert not litter, f"round {round}: {litter}"
    assert not (folder / f"result{round}.json").exists()
print("rounds", round + 1)
"""

BURN = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end:\n    pass\n"


@pytest.mark.slow
def test_the_failure_path_50_times_beside_other_work_never_hangs(tmp_path: Path) -> None:
    """A job fails while another writes a file, 50 times over, with a busy process beside the
    sweep: every sweep raises the job's error, its workers are gone within seconds, and no
    temporary file is left. A hang fails the test (timeout) instead of stalling the suite."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    burner = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(LOOP), str(tmp_path), "50"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        burner.kill()
        burner.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rounds 50" in done.stdout


def test_one_process_runs_the_jobs_here() -> None:
    assert run_sweep(_square, [{"v": 3}], n_jobs=4) == [9]
    assert run_sweep(_square, [{"v": 2}, {"v": 3}], n_jobs=1) == [4, 9]
    with pytest.raises(ValueError, match="n_jobs must be >= 1, got 0"):
        run_sweep(_square, [{"v": 1}], n_jobs=0)


WORKER = """
import os, time
def sleepy(folder, index):
    with open(os.path.join(folder, f"worker{index}.pid"), "w") as stream:
        stream.write(str(os.getpid()))
    time.sleep(120)
"""

PARENT = """
import sys
from structdrop.linear import run_sweep
from sleepy import sleepy

if __name__ == "__main__":
    folder = sys.argv[1]
    run_sweep(sleepy, [{"folder": folder, "index": i} for i in range(2)], n_jobs=2)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the sweep's process, which the pool never notices: its workers exit within
    seconds, no orphan keeps a core."""
    (tmp_path / "sleepy.py").write_text(textwrap.dedent(WORKER))
    (tmp_path / "parent.py").write_text(textwrap.dedent(PARENT))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(tmp_path)])}
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py"), str(tmp_path)], env=environment
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("worker*.pid"))) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            assert parent.poll() is None
            time.sleep(0.1)
        time.sleep(0.3)
        workers = [int(p.read_text()) for p in tmp_path.glob("worker*.pid")]
        assert all(_running(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _running(pid)]
    finally:
        parent.kill()
        for pid_file in tmp_path.glob("worker*.pid"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
