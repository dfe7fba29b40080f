"""The install a user gets: the wheel, in a fresh virtual environment with the base
dependencies only (NumPy, SciPy, torch; torchvision as the user's own model library).

The environment reuses this interpreter's copies of those distributions (symbolic links to
them and everything they require, found from their metadata), so nothing is downloaded and
nothing large is copied; the wheel itself is built here and installed with ``--no-deps``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment

ROOT = Path(__file__).resolve().parents[1]
#: What the base install brings, and the user's model library.
BASE = ("numpy", "scipy", "torch", "torchvision")
#: The experiments extra's packages (torchvision aside: the user brings it).
EXTRA_ONLY = ("sklearn", "numba", "matplotlib", "tqdm", "typer", "threadpoolctl")


def _requirement_names(distribution: importlib.metadata.Distribution) -> list[str]:
    names = []
    for requirement in distribution.requires or []:
        if ";" in requirement and "extra ==" in requirement.split(";", 1)[1]:
            continue  # an optional dependency
        marker = requirement.split(";", 1)[1] if ";" in requirement else ""
        if "platform_system" in marker and "Linux" not in marker and "==" in marker:
            continue
        names.append(re.split(r"[ <>=!~\[;(]", requirement.strip(), maxsplit=1)[0])
    return names


def _closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` and everything they require (those installed)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform
        seen[name] = distribution
        todo += _requirement_names(distribution)
    return list(seen.values())


def _top_level_paths(distribution: importlib.metadata.Distribution) -> set[Path]:
    """The top-level files and folders of a distribution in site-packages."""
    site = Path(distribution.locate_file(""))
    tops = set()
    for file in distribution.files or []:
        first = file.parts[0]
        if first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        tops.add(site / first)
    return {path for path in tops if path.exists()}


def _run(python: Path, code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=kwargs.pop("cwd", None),
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        **kwargs,
    )


@pytest.fixture(scope="module")
def base_env(tmp_path_factory) -> Path:
    """A fresh venv holding the base distributions (linked) and the built wheel."""
    work = tmp_path_factory.mktemp("install")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(work / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("structdrop-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "structdrop/py.typed" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]

    env = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(
        _run(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    base_site = work / "base-site"
    base_site.mkdir()
    for distribution in _closure(BASE):
        for path in _top_level_paths(distribution):
            link = base_site / path.name
            if not link.exists():
                link.symlink_to(path)
    (site / "base-dependencies.pth").write_text(f"{base_site}\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return env


def test_the_base_install_runs_the_library(base_env: Path, tmp_path: Path) -> None:
    done = _run(
        base_env / "bin" / "python",
        f"""
        import json, sys
        import numpy as np
        import torch
        import torchvision
        import structdrop as sd
        from structdrop import nn as sdnn

        assert sd.__file__.startswith({str(base_env)!r}), sd.__file__  # the wheel, not the tree
        torch.manual_seed(0)
        layer = sdnn.DropBlock2d(0.2, 3)
        x = torch.ones(2, 4, 8, 8, requires_grad=True)
        out = layer(x)
        out.sum().backward()
        assert 0 < int((out == 0).sum()) < out.numel()
        assert torch.equal(x.grad, out.detach())  # d(x * mask)/dx = mask, and x = 1

        model = torchvision.models.resnet18(num_classes=3)
        model.layer3 = torch.nn.Sequential(model.layer3, torchvision.ops.DropBlock2d(0.1, 3))
        sdnn.convert_dropblock(model)
        assert isinstance(model.layer3[1], sdnn.DropBlock2d) and model.layer3[1].p == 0.1
        model(torch.randn(2, 3, 32, 32)).sum().backward()

        penalty = sdnn.DropoutPenalty(sd.GridBlock(0.5, 2))
        value = float(penalty(torch.ones(2, 4), torch.ones(3, 4)))
        assert value > 0

        rng = np.random.default_rng(0)
        X, Y = rng.standard_normal((5, 20)), rng.standard_normal((3, 20))
        optimum = sd.global_minimum(X, Y, sd.Bernoulli(0.5), 4)
        assert np.isfinite(optimum.value) and optimum.value > 0

        extra = {EXTRA_ONLY!r}
        print(json.dumps([m for m in extra if m in sys.modules]))
        """,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    absent = _run(
        base_env / "bin" / "python",
        f"""
        import importlib.util
        print([m for m in {EXTRA_ONLY!r} if importlib.util.find_spec(m) is not None])
        """,
        cwd=tmp_path,
    )
    assert absent.stdout.strip() == "[]", "the base environment must not hold the extra"


def test_without_the_extra_the_command_and_the_experiments_say_what_to_install(
    base_env: Path, tmp_path: Path
) -> None:
    command = subprocess.run(
        [str(base_env / "bin" / "structdrop"), "reproduce", "synthetic", "--quick"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert command.returncode == 2
    lines = command.stderr.strip().splitlines()
    assert len(lines) == 1, command.stderr
    assert "pip install 'structdrop[experiments]'" in lines[0]
    assert "missing: matplotlib" in lines[0]
    sgd = """
        import numpy as np, structdrop as sd
        X, Y = np.ones((3, 4)), np.ones((2, 4))
        sd.linear.fit_sgd(X, Y, np.zeros((2, 2)), np.ones((3, 2)), sd.Bernoulli(0.5), lr=0.01,
                          iterations=3, seed=0)
        """
    for code in ("import structdrop.experiments", sgd):
        done = _run(base_env / "bin" / "python", code, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("structdrop._extras.MissingExtraError: "), last
        assert "pip install 'structdrop[experiments]'" in last
