"""Image data sets for the deep-network experiment (Sec. 5.2, Fig. 2), offline.

Every data set is returned whole, as tensors in memory: ``images`` (N, 3, S, S) float32,
standardized to zero mean and unit variance over the training subset, and ``labels`` (N,) int64.
The training subset is drawn without replacement from the data set's training split by a
generator seeded with ``seed``, so a run is a function of its configuration.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download),
  upsampled bilinearly to S x S and repeated on 3 channels. The offline default.
* ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's data sets read from ``data_dir`` with
  ``download=False``; when the files are absent, :class:`MissingDataError` says which files to
  put where.
* ``synthetic32``: random class-conditional images (one smooth random template per class plus
  noise) generated from the seed: for timing runs where no data set is at hand.

Nothing is downloaded, ever: the paper's ``D_MNIST`` and ``D_CIFAR10`` are small subsets of
the training splits (Sec. 5.2), which ``train_size`` selects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "ImageData",
    "MissingDataError",
    "expected_files",
    "load_images",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic32")
DEFAULT_DATA_DIR = Path("data")

#: Files torchvision reads for each downloadable data set, relative to ``data_dir``.
_EXPECTED: dict[str, tuple[str, ...]] = {
    "mnist": (
        "MNIST/raw/train-images-idx3-ubyte",
        "MNIST/raw/train-labels-idx1-ubyte",
    ),
    "fashion-mnist": (
        "FashionMNIST/raw/train-images-idx3-ubyte",
        "FashionMNIST/raw/train-labels-idx1-ubyte",
    ),
    "cifar10": (
        *(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        "cifar-10-batches-py/batches.meta",
    ),
}

_SOURCES: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/ (the four *-ubyte.gz files, "
    "unpacked with gunzip)",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ "
    "(train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz, unpacked with gunzip)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpacked with tar xzf)",
}


class MissingDataError(FileNotFoundError):
    """A data set's files are not under ``data_dir`` (nothing is downloaded)."""


@dataclass(frozen=True)
class ImageData:
    """A training subset in memory.

    Attributes:
        images: (N, 3, S, S) float32, standardized over the subset.
        labels: (N,) int64 class indices in ``[0, classes)``.
        classes: number of classes ``a`` (rows of the one-hot target matrix Y).
        name: the data set's name.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: int
    name: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def targets(self) -> torch.Tensor:
        """The one-hot target matrix ``Y`` (a x N, float64), columns as samples (paper's
        convention)."""
        return F.one_hot(self.labels, self.classes).T.to(torch.float64)


def expected_files(name: str, data_dir: Path) -> list[Path]:
    """The files torchvision needs for data set ``name`` under ``data_dir``."""
    return [Path(data_dir) / relative for relative in _EXPECTED[name]]


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return name


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


def _digits(train_size: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    keep = _subset(labels.shape[0], train_size, seed)
    return images[keep], labels[keep], 10


def _synthetic32(train_size: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Ten smooth random 3x32x32 templates (upsampled 4x4 noise) plus white noise."""
    n, classes = train_size or 10_000, 10
    generator = torch.Generator().manual_seed(int(seed) + 7_919)
    coarse = torch.randn(classes, 3, 4, 4, generator=generator)
    templates = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.randint(classes, (n,), generator=generator)
    noise = torch.randn(n, 3, 32, 32, generator=generator)
    return templates[labels] + noise, labels, classes


def _torchvision(
    name: str, data_dir: Path, train_size: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    import torchvision

    data_dir = Path(data_dir)
    missing = [path for path in expected_files(name, data_dir) if not path.exists()]
    if missing:
        listing = "\n  ".join(str(path) for path in expected_files(name, data_dir))
        raise MissingDataError(
            f"dataset {name!r} not found under {str(data_dir)!r} (nothing is downloaded). "
            f"Put these files there:\n  {listing}\n"
            f"from {_SOURCES[name]}, or pass --data-dir pointing at the folder that holds "
            f"them; --dataset digits needs no files."
        )
    cls = {
        "mnist": torchvision.datasets.MNIST,
        "fashion-mnist": torchvision.datasets.FashionMNIST,
        "cifar10": torchvision.datasets.CIFAR10,
    }[name]
    try:
        dataset = cls(root=str(data_dir), train=True, download=False)
    except RuntimeError as error:  # present but incomplete or corrupt
        raise MissingDataError(
            f"dataset {name!r} under {str(data_dir)!r} could not be read ({error}); "
            f"expected files: {[str(p) for p in expected_files(name, data_dir)]}"
        ) from error
    data = torch.as_tensor(np.asarray(dataset.data))
    images = data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)  # CIFAR is NHWC
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    keep = _subset(labels.shape[0], train_size, seed)
    return images[keep], labels[keep], 10


def load_images(
    name: str,
    *,
    image_size: int,
    train_size: int | None,
    seed: int,
    data_dir: Path | None = None,
) -> ImageData:
    """Load a training subset of data set ``name`` (see the module docstring).

    Args:
        name: one of :data:`DATASETS`.
        image_size: side S of the square images given to the trunk.
        train_size: number of training samples (None: the whole training split; 10 000 for
            ``synthetic32``).
        seed: draws the subset (and generates ``synthetic32``).
        data_dir: where torchvision's files live (default ``./data``).

    Returns:
        An :class:`ImageData`.

    Raises:
        ValueError: unknown data set.
        MissingDataError: the data set's files are not under ``data_dir``.
    """
    name = _check_name(name)
    if name == "digits":
        images, labels, classes = _digits(train_size, seed)
    elif name == "synthetic32":
        images, labels, classes = _synthetic32(train_size, seed)
    else:
        directory = DEFAULT_DATA_DIR if data_dir is None else Path(data_dir)
        images, labels, classes = _torchvision(name, directory, train_size, seed)
    return ImageData(images=_finish(images, image_size), labels=labels, classes=classes, name=name)
