"""One run at a time per result: a run owns the names it writes in a folder while it runs.

A run that writes ``<out>/fig2.json`` holds the lock file ``<out>/.fig2.lock`` for as long as it
runs: an advisory lock of the operating system (``flock``), which the system releases when the
process ends, however it ends, so a killed run never leaves a result locked. The file records
who holds it (process id, command, start time), for the message that a second run gets: a run
that finds the name taken refuses at once, in one line naming the first, instead of computing
beside it and deleting its checkpoint or overwriting its result. The holder removes the file
when it is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ResultBusyError", "exclusive", "lock_path", "owning"]


class ResultBusyError(RuntimeError):
    """Another process is writing the same result right now; the message names it."""


def lock_path(out: str | os.PathLike[str], name: str) -> Path:
    """The lock file of result ``name`` in folder ``out``: ``<out>/.<name>.lock``."""
    return Path(out) / f".{name}.lock"


def _holder(descriptor: int) -> str:
    """Who holds the lock, as its file describes it (best effort: it may be being written)."""
    try:
        os.lseek(descriptor, 0, os.SEEK_SET)
        record = json.loads(os.read(descriptor, 4096).decode("utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"]))
        return f"process {record['pid']} ({record['command']}), running since {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _describe_self() -> bytes:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
    record = {"pid": os.getpid(), "command": command[:300], "started": time.time()}
    return json.dumps(record).encode("utf-8")


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(descriptor: int, wait: bool = False) -> bool:
        try:
            msvcrt.locking(descriptor, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(descriptor: int, wait: bool = False) -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _acquire(path: Path, what: str, wait: bool = False) -> int:
    """The descriptor of ``path``, locked by this process; ResultBusyError when another holds
    it (or, with ``wait``, once it is released). A file removed (or replaced) by its previous
    holder between the opening and the lock is opened again, so that two processes never both
    hold a lock on different files."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(descriptor, wait):
            holder = _holder(descriptor)
            os.close(descriptor)
            raise ResultBusyError(
                f"{what} is being written by another run: {holder}; wait for it to end, or "
                "choose another --out"
            )
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)


@contextlib.contextmanager
def owning(out: str | os.PathLike[str], names: list[str]) -> Iterator[None]:
    """Own the results ``names`` in folder ``out`` (which must exist) for the block.

    Args:
        out: the results folder.
        names: the results' names (``"fig2"``, ``"fig1"``, ...), each locked by its own file.

    Raises:
        ResultBusyError: another process owns one of the names; nothing is held then.
    """
    held: list[tuple[Path, int]] = []
    try:
        for name in names:
            path = lock_path(out, name)
            descriptor = _acquire(path, f"{Path(out) / name}.*")
            os.ftruncate(descriptor, 0)
            os.write(descriptor, _describe_self())
            held.append((path, descriptor))
        yield
    finally:
        for path, descriptor in reversed(held):
            with contextlib.suppress(OSError):
                path.unlink()  # while still locked: the next run creates a new file
            os.close(descriptor)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock file ``path`` for the block, waiting for another process that holds it:
    for short read-modify-write updates of a file that several runs share (``timings.json``)."""
    path = Path(path)
    descriptor = _acquire(path, str(path), wait=True)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(descriptor)
