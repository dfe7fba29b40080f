"""The files a user names (experiments/_io.py): an output folder that cannot be used and a
matrix file that cannot be read are refused in one line that names the option or the file and
says why (the command line prints it as ``Error: ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from structdrop.experiments import _io


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


@pytest.mark.parametrize("below", [[], ["sub"]], ids=["last", "inner"])
def test_an_out_name_too_long_for_the_file_system_is_one_input_error(
    tmp_path: Path, below: list[str]
) -> None:
    long_name = "r" * max(300, _name_max(tmp_path) + 1)
    out = tmp_path.joinpath(long_name, *below)
    with pytest.raises(_io.InputError) as caught:
        _io.check_out_dir(out)
    message = str(caught.value)
    assert message.startswith(f"--out {out} ") and "File name too long" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_an_out_under_a_file_or_at_a_file_names_it(tmp_path: Path) -> None:
    target = tmp_path / "results"
    target.write_text("not a folder")
    with pytest.raises(_io.InputError, match=r"is a file, not a folder"):
        _io.check_out_dir(target)
    with pytest.raises(_io.InputError, match=r"cannot be created: Not a directory"):
        _io.check_out_dir(target / "sub")
    assert target.read_text() == "not a folder"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_an_out_that_is_a_fifo_says_what_it_is(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "results")
    with pytest.raises(_io.InputError, match=r"is a FIFO \(named pipe\), not a folder"):
        _io.check_out_dir(tmp_path / "results")


def test_an_out_folder_is_created_and_returned(tmp_path: Path) -> None:
    out = _io.check_out_dir(tmp_path / "a" / "b")
    assert out == tmp_path / "a" / "b" and out.is_dir()
    assert _io.check_out_dir(out) == out


def test_a_matrix_whose_header_fits_its_bytes_loads(tmp_path: Path) -> None:
    """The size check reads the header only: every .npy that NumPy writes passes it."""
    matrix = np.arange(12.0).reshape(3, 4)
    for order in ("C", "F"):
        np.save(tmp_path / "m.npy", np.asarray(matrix, order=order))
        np.testing.assert_array_equal(_io.load_matrix(tmp_path / "m.npy", "X"), matrix)
    np.save(tmp_path / "ints.npy", np.arange(4, dtype=np.int32))
    np.testing.assert_array_equal(_io.load_matrix(tmp_path / "ints.npy", "X"), [[0, 1, 2, 3]])
    np.savez_compressed(tmp_path / "packed.npz", X=matrix)
    np.testing.assert_array_equal(_io.load_matrix(tmp_path / "packed.npz", "X"), matrix)


def test_a_npy_with_bytes_beyond_its_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.ones((2, 2)))
    path.write_bytes(path.read_bytes() + bytes(8))
    with pytest.raises(_io.InputError, match=r"\(32 bytes\) but the file holds 40 bytes"):
        _io.load_matrix(path, "X")
