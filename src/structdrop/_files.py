"""Atomic file writes: every result and checkpoint is written to a temporary file beside its
destination and renamed onto it, so a killed run never leaves a half-written file.

A temporary file is named ``.<name>.<pid>.<random>.tmp``. A process killed outright (SIGKILL)
cannot remove its own; the next write to the same destination removes those whose process is
gone (:func:`remove_stale_temporaries`), so a rerun leaves no litter behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

__all__ = [
    "NotAFileError",
    "file_kind",
    "open_regular",
    "process_alive",
    "remove_stale_temporaries",
    "remove_stale_temporaries_under",
    "remove_temporaries_in_flight",
    "write_atomically",
]

#: Temporary files being written by this process (see :func:`remove_temporaries_in_flight`).
_IN_FLIGHT: set[str] = set()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders created, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made: list[Path] = []
    try:
        for created in reversed(missing):
            created.mkdir(exist_ok=True)
            made.insert(0, created)
    except BaseException:
        _remove_empty(made)
        raise
    return made


def remove_if_empty(out: Path, existed: bool) -> None:
    """Remove an empty ``checkpoints`` folder in ``out``, and ``out`` itself if the caller
    created it (``existed`` False) and it is empty now."""
    for folder in (out / "checkpoints", *(() if existed else (out,))):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(stream)`` on a temporary binary file next to ``path``, then rename it onto
    ``path`` (after an fsync). On any error the temporary file is removed, ``path`` is left as
    it was, and so are the folders: those created for ``path`` are removed when empty (a full
    disk leaves no empty ``checkpoints/`` behind)."""
    path = Path(path)
    created = _make_parents(path.parent)
    temporary = None
    try:
        remove_stale_temporaries(path)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
        )
        _IN_FLIGHT.add(temporary)
        with os.fdopen(handle, "wb") as stream:
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        _remove_empty(created)
        raise
    finally:
        if temporary is not None:
            _IN_FLIGHT.discard(temporary)
    return path


def remove_temporaries_in_flight() -> None:
    """Remove the temporary files this process is writing right now: for a process that is
    about to end at once (``os._exit``) and so cannot unwind through :func:`write_atomically`."""
    for temporary in list(_IN_FLIGHT):
        Path(temporary).unlink(missing_ok=True)
        _IN_FLIGHT.discard(temporary)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _is_stale(temporary: Path, name: str | None = None) -> bool:
    """Whether ``temporary`` is a temporary file (of destination ``name``, if given) whose
    writer is gone: a process id that no longer runs, or none (an older naming)."""
    destination = ".+?" if name is None else re.escape(name)
    match = re.fullmatch(rf"\.{destination}\.(?:(?P<pid>\d+)\.)?[^.]+\.tmp", temporary.name)
    if match is None:
        return False
    pid = match["pid"]
    return pid is None or (int(pid) != os.getpid() and not process_alive(int(pid)))


def _remove_stale(candidates: Iterable[Path], name: str | None = None) -> list[Path]:
    removed = []
    for candidate in candidates:
        if _is_stale(candidate, name):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def remove_stale_temporaries_under(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove every temporary file under ``folder`` (recursively) whose writer is gone: after an
    interrupted run has stopped its workers, nothing half-written is left behind."""
    return _remove_stale(Path(folder).rglob(".*.tmp"))


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writers left beside ``path`` and return them.

    A temporary file of a process that still runs is kept (it may be writing right now); one of
    a process that is gone, or one without a process id, is removed.
    """
    path = Path(path)
    return _remove_stale(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), path.name)


class NotAFileError(OSError):
    """A path that exists but is not a regular file (a folder, a FIFO, a device, a socket):
    reading it would block for ever, never end, or fail later with a misleading message."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(f"{os.fspath(path)} is {kind}, not a regular file")
        self.filename = os.fspath(path)
        self.kind = kind

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[NotAFileError], tuple[str, str]]:
        return (type(self), (self.filename, self.kind))


_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` describes, in words: ``"a regular file"``, ``"a folder"``,
    ``"a FIFO (named pipe)"``, ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """``path`` opened for binary reading, when it is a regular file.

    The file is opened without blocking and checked on the open descriptor, so that a FIFO
    (whose opening waits for a writer) or a device (``/dev/zero`` never ends) is refused at
    once, and a file swapped for one of them between a check and the opening is refused too.

    Raises:
        NotAFileError: ``path`` is a folder, a FIFO, a device or a socket.
        OSError: ``path`` cannot be opened (no such file, permission denied, ...).
    """
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    descriptor = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFileError(path, file_kind(mode))
        if nonblocking:
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
