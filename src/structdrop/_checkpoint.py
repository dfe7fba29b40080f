"""Checkpoints: arrays and metadata bound in one file, verified as a unit on load.

A checkpoint is a NumPy ``.npz`` archive (never pickled) holding the arrays of a state and one
metadata entry: the format, the kind of run, the run's identity, the state's structure (nested
dicts, lists, tuples, numbers and strings, with references to the arrays) and a SHA-256 digest
over all of it, arrays included (through the CRC-32 that the zip format keeps for each array and
checks on every read). It is written atomically (:func:`write_atomically`), so a killed
run leaves either the previous checkpoint or the new one, never half of one.

On load, everything is checked before anything is used: that the file is a readable archive
(zip CRCs), that it is a structdrop checkpoint of the expected kind and format, that the digest
matches (arrays and metadata belong together), that it belongs to this run (identity), that every
floating array is finite, and any shape or dtype the caller requires (``check``). A file that
fails any of these raises one :class:`CheckpointError` naming the file, the problem and how to
start afresh; NumPy's, zipfile's or JSON's own exceptions never reach the caller.

torch tensors (state dicts) are stored as arrays too (bfloat16 through a 16-bit view) and come
back as CPU tensors; torch is imported only when a checkpoint holds tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._backend import is_tensor
from ._files import NotAFileError, file_kind, open_regular, write_atomically

__all__ = [
    "CheckpointError",
    "check_array",
    "load_checkpoint",
    "npy_header",
    "save_checkpoint",
]

FORMAT = 1
META = "__structdrop_checkpoint__"
ZIP_MAGIC = b"PK\x03\x04"
_ARRAY, _TENSOR, _DICT, _TUPLE = "__array__", "__tensor__", "__dict__", "__tuple__"
_MARKERS = (_ARRAY, _TENSOR, _DICT, _TUPLE)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not a checkpoint, of another run, or
    inconsistent. The message names the file and says how to start afresh."""

    def __init__(self, path: str | os.PathLike[str], problem: str, remedy: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy or "delete it to start afresh (on the command line: --force)"
        super().__init__(f"checkpoint {self.path}: {problem}; {self.remedy}")

    def __reduce__(self) -> tuple[type[CheckpointError], tuple[Path, str, str]]:
        # Pickling rebuilds an exception from ``self.args`` (here the one formatted message),
        # which this constructor cannot take: a CheckpointError raised in a worker process of a
        # sweep would fail to unpickle in the parent, and the pool would report it as a worker
        # that "terminated abruptly" instead of this one-line error.
        return (type(self), (self.path, self.problem, self.remedy))


# ------------------------------------------------------------------------------------------------
# State trees <-> (JSON skeleton, arrays)
# ------------------------------------------------------------------------------------------------
def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {_ARRAY: key}
    if is_tensor(value):
        import torch  # loaded: value is a tensor

        tensor = value.detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        key = f"a{len(arrays)}"
        arrays[key] = tensor.numpy()
        return {_TENSOR: key, "dtype": dtype}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and k not in _MARKERS for k in value):
            return {k: _encode(v, arrays) for k, v in value.items()}
        for k in value:
            if isinstance(k, bool) or not isinstance(k, str | int):
                raise TypeError(f"checkpoint dict keys must be str or int, got {k!r}")
        return {_DICT: [[k, _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(item, arrays) for item in value]}
    if isinstance(value, list):
        return [_encode(item, arrays) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__} values, got {value!r}")


def decode_state(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The state tree that ``value`` (the JSON skeleton of a checkpoint's state) describes, with
    the references to ``arrays`` resolved (tensors come back as CPU tensors)."""
    if isinstance(value, list):
        return [decode_state(item, arrays) for item in value]
    if not isinstance(value, dict):
        return value
    if _ARRAY in value:
        return arrays[value[_ARRAY]]
    if _TENSOR in value:
        import torch

        tensor = torch.from_numpy(arrays[value[_TENSOR]])  # a fresh array from np.load
        if value["dtype"] == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        return tensor
    if _DICT in value:
        return {k: decode_state(v, arrays) for k, v in value[_DICT]}
    if _TUPLE in value:
        return tuple(decode_state(item, arrays) for item in value[_TUPLE])
    return {k: decode_state(v, arrays) for k, v in value.items()}


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()


def _digest(header: Mapping[str, Any], members: Mapping[str, tuple[str, list[int], int]]) -> str:
    """SHA-256 over the metadata and, for each array, its name, dtype, shape and the CRC-32 of
    its bytes in the archive. The zip format checks every array's bytes against that CRC when
    it is read, so the digest binds the metadata to the arrays without a second pass over
    them (a ResNet-50 checkpoint is about 280 MB)."""
    digest = hashlib.sha256(_canonical(header))
    for key in sorted(members):
        digest.update(_canonical([key, *members[key]]))
    return digest.hexdigest()


def _write_archive(
    stream: IO[bytes], header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """The arrays as ``.npy`` members (as ``np.savez`` writes them), then the metadata, whose
    digest covers the CRC-32 that the zip format computed for each array."""
    members = {}
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
            crc = archive.getinfo(f"{key}.npy").CRC
            members[key] = (array.dtype.str, list(array.shape), crc)
        meta = dict(header, digest=_digest(header, members))
        text = json.dumps(meta, allow_nan=False).encode()  # keeps the order of the state's keys
        with archive.open(f"{META}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.frombuffer(text, dtype=np.uint8))


def _normalized(identity: Any) -> Any:
    """``identity`` as it reads back from JSON (tuples as lists, NumPy scalars as numbers)."""
    return json.loads(_canonical(_encode(identity, {})))


# ------------------------------------------------------------------------------------------------
# Saving and loading
# ------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike[str], *, kind: str, identity: Any, state: Any) -> Path:
    """Write ``state`` (a tree of dicts, lists, tuples, numbers, strings, NumPy arrays and torch
    tensors) as one checkpoint file, atomically.

    Args:
        path: the checkpoint file.
        kind: what run it is (e.g. ``"fit_sgd"``): a checkpoint of another kind is refused on load.
        identity: what makes two runs the same run (JSON-able: settings, a fingerprint of the
            data): a checkpoint of another identity is refused on load.
        state: everything the run needs to continue.
    """
    arrays: dict[str, np.ndarray] = {}
    header = {
        "format": FORMAT,
        "kind": kind,
        "identity": _normalized(identity),
        "state": _encode(state, arrays),
    }
    return write_atomically(path, lambda stream: _write_archive(stream, header, arrays))


def npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any], int | None]:
    """The shape and dtype that the ``.npy`` header at ``stream``'s position declares, and the
    number of bytes of data that they take (None for Python objects, whose size no header
    tells); ``stream`` is left at the first byte of the data. Nothing of the data is read, so a
    header declaring a huge shape costs nothing.

    Raises:
        ValueError: the bytes are not a ``.npy`` header (the message says what is wrong).
    """
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        # 3.0 differs from 2.0 only in the encoding of field names, not in the sizes
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"has .npy format {version}, not one of 1.0, 2.0 and 3.0")
    shape = tuple(int(n) for n in shape)
    return shape, dtype, None if dtype.hasobject else dtype.itemsize * math.prod(shape)


def _check_member_size(path: Path, archive: zipfile.ZipFile, name: str) -> None:
    """Raise a CheckpointError unless the ``.npy`` member ``name`` holds exactly the bytes that
    its header declares (shape times item size): read before the array, so that a damaged
    header declaring a huge shape is refused without allocating it."""
    info = archive.getinfo(name)
    with archive.open(info) as member:
        try:
            shape, dtype, declared = npy_header(member)
        except ValueError as error:
            raise CheckpointError(path, f"is damaged: member {name!r} {error}") from None
        header = member.tell()
    if declared is None:
        return  # refused by np.load (allow_pickle=False)
    available = info.file_size - header
    if declared != available:
        raise CheckpointError(
            path,
            f"is damaged: member {name!r} declares an array of shape {shape} and dtype "
            f"{dtype} ({declared} bytes) but holds {available} bytes",
        )


def _open(path: Path) -> IO[bytes]:
    """``path`` opened for reading, or a CheckpointError when it is no regular file: a FIFO
    (reading it would wait for a writer for ever), a device or a socket is refused before
    anything is read."""
    try:
        return open_regular(path)
    except NotAFileError as error:
        if error.kind == file_kind(stat.S_IFDIR):
            raise CheckpointError(
                path, "is a folder, not a checkpoint file", "choose a file path"
            ) from None
        raise CheckpointError(
            path,
            f"is {error.kind}, not a checkpoint file",
            "remove it, or choose another checkpoint path",
        ) from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CheckpointError(path, f"cannot be read ({reason})") from None


def read_archive(
    path: Path,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, tuple[str, list[int], int]]]:
    """The metadata, the arrays and each array's (dtype, shape, CRC-32) of the archive at
    ``path``, or a CheckpointError; nothing is verified beyond the zip CRCs and the sizes that
    the arrays' headers declare (see :func:`load_checkpoint`). A path that is not a regular
    file (a folder, a FIFO, a device, a socket) is refused before it is read."""
    with _open(path) as stream:
        try:
            head = stream.read(len(ZIP_MAGIC))
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise CheckpointError(path, f"cannot be read ({reason})") from None
        if head != ZIP_MAGIC:
            what = "it is empty" if not head else "it is not an .npz archive"
            raise CheckpointError(path, f"is not a structdrop checkpoint ({what})")
        try:
            stream.seek(0)
            loaded = np.load(stream, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise CheckpointError(path, "is not a structdrop checkpoint (not an .npz archive)")
            with loaded as archive:
                if META not in archive.files:
                    raise CheckpointError(path, "is not a structdrop checkpoint (no metadata)")
                for key in archive.files:
                    _check_member_size(path, archive.zip, f"{key}.npy")
                arrays = {key: archive[key] for key in archive.files}  # checks every CRC-32
                crcs = {key: archive.zip.getinfo(f"{key}.npy").CRC for key in archive.files}
        except CheckpointError:
            raise
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, RuntimeError) as error:
            problem = " ".join(str(error).split())[:200]
            if "allow_pickle" in problem:
                raise CheckpointError(
                    path, "holds Python objects (pickled data), which are never loaded"
                ) from None
            raise CheckpointError(
                path, f"cannot be read ({type(error).__name__}{': ' + problem if problem else ''})"
            ) from None
    raw = arrays.pop(META)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("metadata is not a byte string")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(path, f"has unreadable metadata ({error})") from None
    members = {
        key: (array.dtype.str, list(array.shape), crcs[key]) for key, array in arrays.items()
    }
    return meta, arrays, members


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str,
    identity: Any,
    check: Callable[[Any], None] | None = None,
) -> Any | None:
    """The state saved at ``path`` by :func:`save_checkpoint`, verified; None if there is no file.

    Args:
        path: the checkpoint file.
        kind: the kind of run expected.
        identity: this run's identity; the checkpoint must hold the same.
        check: called with the decoded state; it raises ``ValueError``, ``KeyError``,
            ``TypeError`` or ``IndexError`` when a shape, dtype or entry is wrong (see
            :func:`check_array`).

    Raises:
        CheckpointError: the file is unreadable, not a structdrop checkpoint, of another kind,
            format or run, inconsistent (digest), holds non-finite numbers, or fails ``check``.
    """
    path = Path(path)
    if not path.exists():
        return None
    meta, arrays, members = read_archive(path)
    if meta.get("format") != FORMAT or "digest" not in meta:
        raise CheckpointError(
            path, f"has format {meta.get('format')!r}, not {FORMAT} (another structdrop version)"
        )
    if meta.get("kind") != kind:
        raise CheckpointError(path, f"is a checkpoint of {meta.get('kind')!r}, not of {kind!r}")
    header = {key: meta.get(key) for key in ("format", "kind", "identity", "state")}
    try:
        consistent = _digest(header, members) == meta["digest"]
    except (TypeError, ValueError):
        consistent = False
    if not consistent:
        raise CheckpointError(
            path, "is inconsistent: its arrays do not match its metadata (damaged or edited)"
        )
    if meta["identity"] != _normalized(identity):
        raise CheckpointError(
            path,
            "belongs to another run (different data, initial weights, seed or settings)",
            "delete it, or choose another checkpoint path, to start afresh (on the command "
            "line: --force)",
        )
    for key, array in arrays.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise CheckpointError(path, f"holds non-finite numbers (array {key})")
    try:
        state = decode_state(meta["state"], arrays)
        if check is not None:
            check(state)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointError(path, f"is inconsistent: {error}") from None
    return state


def check_array(value: Any, name: str, shape: tuple[int, ...], dtype: Any) -> None:
    """Raise ValueError unless ``value`` is a NumPy array or torch tensor of ``shape`` and
    ``dtype`` (a NumPy dtype, or a torch dtype for tensors)."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise ValueError(f"{name} is a {type(value).__name__}, expected an array")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    expected = dtype if type(dtype).__module__ == "torch" else np.dtype(dtype)
    if str(value.dtype) != str(expected):
        raise ValueError(f"{name} has dtype {value.dtype}, expected {expected}")
