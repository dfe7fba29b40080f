"""Files of the experiments: atomic writes of results, and safe loading of user data.

Every result (JSON, PNG, Markdown) is written to a temporary file in the destination folder and
renamed over the target, so a reader never sees half a file and a killed run leaves none behind.
User matrices are read from ``.npy``, ``.npz`` or ``.csv`` files and never unpickled
(``allow_pickle=False``): a file holding Python objects is refused, not executed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_atomically

__all__ = [
    "InputError",
    "load_matrix",
    "read_json",
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
    """The JSON object stored at ``path``."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


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
    a single row.

    Args:
        path: the file.
        name: what the matrix is (``"X"``, ``"Y"``), used in messages and to pick an ``.npz`` entry.

    Raises:
        InputError: a missing file, an unknown suffix, pickled objects, non-numeric, non-finite or
            empty data, or not a matrix.
    """
    path = Path(path)
    source = f"{name} ({path})"
    if not path.is_file():
        raise InputError(f"{name}: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{name}: {path} must end in one of {', '.join(SUFFIXES)}")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                chosen = [k for k in keys if k.lower() == name.lower()]
                if len(keys) == 1:
                    chosen = keys
                if len(chosen) != 1:
                    raise InputError(
                        f"{name}: {path} holds arrays {keys}; expected one array or one named "
                        f"{name!r}"
                    )
                array = archive[chosen[0]]
        else:
            array = np.loadtxt(path, delimiter=",", ndmin=2, comments="#", dtype=np.float64)
    except InputError:
        raise
    except ValueError as error:
        if "allow_pickle" in str(error) or "Object arrays" in str(error):
            raise InputError(
                f"{name}: {path} holds Python objects (pickled data), which are never loaded; "
                "save a numeric array instead"
            ) from None
        raise InputError(f"{name}: cannot read {path}: {_first_line(error)}") from None
    except (OSError, EOFError, KeyError) as error:
        raise InputError(f"{name}: cannot read {path}: {_first_line(error)}") from None
    return _as_matrix(np.asarray(array), source)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
