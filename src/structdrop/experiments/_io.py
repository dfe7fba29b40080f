"""Files of the experiments: atomic writes of results, and safe loading of user data.

Every result (JSON, PNG, Markdown) is written to a temporary file in the destination folder and
renamed over the target, so a reader never sees half a file and a killed run leaves none behind.
User matrices are read from ``.npy``, ``.npz`` or ``.csv`` files and never unpickled
(``allow_pickle=False``): a file holding Python objects is refused, not executed. Only regular
files are read (a FIFO would block, a device never end), and an array's size is checked against
the bytes the file holds before the array is allocated, so a damaged header declaring a huge
shape is refused, not loaded.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from .._checkpoint import npy_header
from .._files import NotAFileError, file_kind, open_regular, write_atomically
from .._locks import exclusive, lock_path

__all__ = [
    "InputError",
    "check_out_dir",
    "load_matrix",
    "normalized",
    "read_experiment",
    "read_figure",
    "read_json",
    "record_timing",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]

SUFFIXES = (".npy", ".npz", ".csv")


class InputError(ValueError):
    """A user-supplied file or value that cannot be used; the message says why, in one line."""


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    return write_atomically(path, lambda stream: stream.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into Python numbers and lists, tuples into
    lists, and non-finite floats into None (JSON has no NaN or infinity)."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (see :func:`to_jsonable`)."""
    text = json.dumps(to_jsonable(data), indent=1, allow_nan=False)
    return write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object stored at ``path`` (a regular file: a FIFO or a device is an OSError,
    never read)."""
    with open_regular(path) as stream:
        return json.loads(stream.read().decode("utf-8"))


def read_experiment(path: str | os.PathLike[str], experiment: str) -> dict[str, Any] | None:
    """The data that an ``experiment`` run (its ``"experiment"`` field) stored at ``path``;
    None when the file is missing, unreadable, not JSON or another experiment's."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("experiment") == experiment else None


def normalized(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples as lists, NumPy numbers as Python's),
    for comparing settings with those stored in a file."""
    return json.loads(json.dumps(to_jsonable(value)))


def read_figure(path: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The data of figure ``name`` stored at ``path``; None when there is no such file.

    Raises:
        InputError: the file exists but is not a structdrop figure of that name (unreadable, not
            JSON, or without the ``figure`` and ``config`` entries every figure has).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a structdrop figure ({_first_line(error)})") from None
    if not isinstance(data, dict) or data.get("figure") != name:
        raise InputError(f"{path} is not a structdrop figure (no 'figure': {name!r} entry)")
    if not isinstance(data.get("config"), dict):
        raise InputError(f"{path} is not a structdrop figure (no 'config' entry)")
    return data


def record_timing(out: str | os.PathLike[str], name: str, timing: dict[str, Any]) -> Path:
    """Store how long figure ``name`` took in ``<out>/timings.json`` (atomically). Timings are
    kept out of the figures' data, so that the same seed gives the same bytes there."""
    path = Path(out) / "timings.json"
    with exclusive(lock_path(out, "timings")):  # runs of other results may write it too
        try:
            timings = read_json(path)
        except (OSError, ValueError):
            timings = {}
        if not isinstance(timings, dict):
            timings = {}
        timings[name] = timing
        return write_json(path, dict(sorted(timings.items())))


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """The output folder, created if missing and checked to be a writable folder.

    Raises:
        InputError: ``out`` is a file (or a FIFO, a device, ...), lies under a file, cannot be
            created or written, or the system refuses the path itself (a name too long for the
            file system, ...); the message names ``--out`` and the system's reason.
    """
    out = Path(out)
    try:
        mode: int | None = out.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # missing, or under a file: creating it says which
    except OSError as error:
        raise InputError(f"--out {out} cannot be used: {_reason(error)}") from None
    if mode is not None and not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else file_kind(mode)
        raise InputError(f"--out {out} is {what}, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out} cannot be created: {_reason(error)}") from None
    try:
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise InputError(f"--out {out} is not writable: {_reason(error)}") from None
    return out


def _as_matrix(array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype.kind not in "iuf":
        raise InputError(f"{source} must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]  # a single row: one output or input feature over N samples
    if array.ndim != 2:
        raise InputError(f"{source} must be a matrix (features x samples), got shape {array.shape}")
    if 0 in array.shape:
        raise InputError(f"{source} must not be empty, got shape {array.shape}")
    array = np.asarray(array, dtype=np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{source} must be finite, got {array[index]} at index {index}")
    return array


def load_matrix(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """A finite real matrix (features x samples, column-wise as in the paper) from a file.

    ``.npy``: the array (never unpickled). ``.npz``: its only array, or the one named ``name``
    (case-insensitive, e.g. ``X`` in a file holding ``X`` and ``Y``). ``.csv``: comma-separated
    numbers, one matrix row per line (lines starting with ``#`` are comments). A vector is read as
    a single row. The file is read only when it is a regular file, and an array only when the
    file holds the bytes that its header declares.

    Args:
        path: the file.
        name: what the matrix is (``"X"``, ``"Y"``), used in messages and to pick an ``.npz`` entry.

    Raises:
        InputError: a missing file, a folder, FIFO, device or socket, an unknown suffix, pickled
            objects, a header declaring more or fewer bytes than the file holds, an archive
            without arrays, non-numeric, non-finite or empty data, or not a matrix.
    """
    path = Path(path)
    source = f"{name} ({path})"
    try:
        stream = open_regular(path)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file: {path}") from None
    except NotAFileError as error:
        raise InputError(
            f"{name}: {path} is {error.kind}, not a regular file; give a .npy, .npz or .csv file"
        ) from None
    except OSError as error:
        raise InputError(f"{name}: cannot read {path}: {_reason(error)}") from None
    with stream:
        array = _read_matrix(stream, path, name)
    return _as_matrix(np.asarray(array), source)


def _read_matrix(stream: IO[bytes], path: Path, name: str) -> Any:
    """The array that the open file ``stream`` (at ``path``) holds, or an InputError."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{name}: {path} must end in one of {', '.join(SUFFIXES)}")
    try:
        _check_magic(stream, path, suffix, name)
        if suffix == ".npy":
            _check_size(stream, os.fstat(stream.fileno()).st_size, path, name)
            stream.seek(0)
            return np.load(stream, allow_pickle=False)
        if suffix == ".npz":
            with np.load(stream, allow_pickle=False) as archive:
                keys = list(archive.keys())
                chosen = [k for k in keys if k.lower() == name.lower()]
                if len(keys) == 1:
                    chosen = keys
                if len(chosen) != 1:
                    raise InputError(
                        f"{name}: {path} holds arrays {keys}; expected one array or one named "
                        f"{name!r}"
                    )
                _check_member_size(archive.zip, chosen[0], path, name)
                return archive[chosen[0]]
        with warnings.catch_warnings():
            # an empty file is refused below, in one line, not with NumPy's warning first
            warnings.filterwarnings("ignore", message=".*input contained no data")
            text = io.TextIOWrapper(stream, encoding="utf-8-sig")
            array = np.loadtxt(text, delimiter=",", ndmin=2, comments="#", dtype=np.float64)
        if array.size == 0:
            raise InputError(
                f"{name}: {path} holds no numbers (it is empty, or holds comments only); write "
                "one matrix row per line, numbers separated by commas"
            )
        return array
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{name}: {path} is too large to load into memory") from None
    except ValueError as error:
        if "allow_pickle" in str(error) or "Object arrays" in str(error):
            raise InputError(
                f"{name}: {path} holds Python objects (pickled data), which are never loaded; "
                "save a numeric array instead"
            ) from None
        raise InputError(f"{name}: cannot read {path}: {_first_line(error)}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise InputError(f"{name}: cannot read {path}: {_first_line(error)}") from None


def _check_size(stream: IO[bytes], size: int, path: Path, name: str, member: str = "") -> None:
    """Raise an InputError unless the ``.npy`` data of ``size`` bytes at ``stream``'s position
    hold exactly the bytes that their header declares (read before the array is, so that a
    header declaring a huge shape allocates nothing)."""
    start = stream.tell()
    shape, dtype, declared = npy_header(stream)
    available = size - (stream.tell() - start)
    if declared is not None and declared != available:  # objects: refused by np.load
        where = f"its array {member!r}" if member else "its header"
        holder = "the archive" if member else "the file"
        raise InputError(
            f"{name}: {path} is damaged: {where} declares an array of shape "
            f"{shape} and dtype {dtype} ({declared} bytes) but {holder} holds {available} bytes; "
            "save the matrix again"
        )


def _check_member_size(archive: zipfile.ZipFile, key: str, path: Path, name: str) -> None:
    """:func:`_check_size` for the ``.npz`` entry ``key`` (a ``.npy`` member, as ``np.savez``
    writes them; any other member is read as bytes and refused as not numeric)."""
    names = archive.namelist()
    member = key if key in names else f"{key}.npy"
    info = archive.getinfo(member)
    with archive.open(info) as data:
        if data.read(len(NPY_MAGIC)) != NPY_MAGIC:
            return
        data.seek(0)
        _check_size(data, info.file_size, path, name, key)


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"  # the end of an archive's directory, with nothing before it
PICKLE_PROTOCOL = b"\x80"


def _check_magic(stream: IO[bytes], path: Path, suffix: str, name: str) -> None:
    """Say what a ``.npy`` or ``.npz`` file really is when its first bytes are not NumPy's
    (``stream`` is left at the start)."""
    if suffix not in (".npy", ".npz"):
        return
    head = stream.read(8)
    stream.seek(0)
    expected = NPY_MAGIC if suffix == ".npy" else ZIP_MAGIC
    if head.startswith(expected):
        return
    if suffix == ".npz" and head.startswith(EMPTY_ZIP_MAGIC):
        raise InputError(
            f"{name}: {path} holds no arrays (an empty .npz archive); save the matrix in it, "
            f"e.g. np.savez(file, {name}=matrix)"
        )
    if head.startswith(PICKLE_PROTOCOL):
        raise InputError(
            f"{name}: {path} holds Python objects (pickled data), which are never loaded; save "
            "a numeric array instead"
        )
    what = "it is empty" if not head else "it does not start with NumPy's header"
    if suffix == ".npz":
        what = "it is empty" if not head else "it is not a zip archive"
    hint = " (a text file? name it .csv)" if head and _is_text(head) else ""
    raise InputError(f"{name}: {path} is not a NumPy {suffix} file: {what}{hint}")


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch.isspace() for ch in head.decode("utf-8"))


def _reason(error: OSError) -> str:
    """The system's reason for ``error`` ("File name too long"), without the path it names."""
    return error.strerror or _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
