"""Atomic file writes: every result and checkpoint is written to a temporary file beside its
destination and renamed onto it, so a killed run never leaves a half-written file.

A temporary file is named ``.<name>.<pid>.<random>.tmp``. A process killed outright (SIGKILL)
cannot remove its own; the next write to the same destination removes those whose process is
gone (:func:`remove_stale_temporaries`), so a rerun leaves no litter behind.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

__all__ = [
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


def write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(stream)`` on a temporary binary file next to ``path``, then rename it onto
    ``path`` (after an fsync). On any error the temporary file is removed and ``path`` is left as
    it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    _IN_FLIGHT.add(temporary)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        _IN_FLIGHT.discard(temporary)
    return path


def remove_temporaries_in_flight() -> None:
    """Remove the temporary files this process is writing right now: for a process that is
    about to end at once (``os._exit``) and so cannot unwind through :func:`write_atomically`."""
    for temporary in list(_IN_FLIGHT):
        Path(temporary).unlink(missing_ok=True)
        _IN_FLIGHT.discard(temporary)


def _alive(pid: int) -> bool:
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
    return pid is None or (int(pid) != os.getpid() and not _alive(int(pid)))


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
