"""What ``import structdrop`` loads: NumPy and SciPy only; the rooms that need torch, numba or
matplotlib are submodules loaded on first use, reachable as attributes.

Each check runs in a fresh interpreter, since this test session has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import structdrop as sd

SRC = Path(sd.__file__).resolve().parents[1]
HEAVY = ("torch", "numba", "matplotlib")


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that imports this checkout's structdrop; it prints one
    JSON object, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_import_structdrop_loads_neither_torch_nor_numba_nor_matplotlib() -> None:
    loaded = _run(
        f"""
        import json, sys
        import structdrop
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert loaded == []


def test_the_numpy_core_runs_without_loading_torch() -> None:
    """The objectives, the k-support norms, the optimum and checkpoints on NumPy data never need
    torch: it is looked up, not imported."""
    loaded = _run(
        f"""
        import json, sys, tempfile, pathlib
        import numpy as np
        import structdrop as sd
        from structdrop._checkpoint import load_checkpoint, save_checkpoint

        rng = np.random.default_rng(0)
        X, Y = rng.standard_normal((4, 9)), rng.standard_normal((3, 9))
        U, V = rng.standard_normal((3, 6)), rng.standard_normal((4, 6))
        for scheme in (sd.GridBlock(0.5, 2), sd.DropConnect(0.3), sd.SlidingBlock(0.3, 2)):
            sd.expected_loss(Y, U, V, X, scheme)
            sd.sampled_loss(Y, U, V, X, scheme, 10, seed=0)
        sd.penalty(U, V.T @ X, sd.Bernoulli(0.2))
        sd.ksupport_norm(X[0], 2)
        sd.prox_spectral_ksupport_sq(X, 0.5, 2)
        sd.global_minimum(X, Y, sd.GridBlock(0.5, 2), 6)
        sd.block_norms(U, V, X, 2)
        path = pathlib.Path(tempfile.mkdtemp()) / "state.npz"
        save_checkpoint(path, kind="test", identity=1, state={{"U": U}})
        load_checkpoint(path, kind="test", identity=1)
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert loaded == []


@pytest.mark.slow
def test_submodules_are_attributes_after_a_plain_import() -> None:
    found = _run(
        """
        import json, sys
        import structdrop
        before = "structdrop.nn" in sys.modules
        print(json.dumps({
            "before": before,
            "fit_sgd": structdrop.linear.fit_sgd.__name__,
            "StructuredDropout": structdrop.nn.StructuredDropout.__name__,
            "experiments": structdrop.experiments.__name__,
            "nn_loaded_after": "structdrop.nn" in sys.modules,
        }))
        """
    )
    assert found == {
        "before": False,
        "fit_sgd": "fit_sgd",
        "StructuredDropout": "StructuredDropout",
        "experiments": "structdrop.experiments",
        "nn_loaded_after": True,
    }


def test_dir_lists_the_submodules_and_the_public_names() -> None:
    names = dir(sd)
    assert {"nn", "linear", "experiments"} <= set(names)
    assert set(sd.__all__) <= set(names)


def test_a_submodule_attribute_is_the_module_itself() -> None:
    import structdrop.linear

    assert sd.linear is structdrop.linear
    assert sd.linear.fit_sgd is structdrop.linear.sgd.fit_sgd


def test_an_unknown_attribute_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'no_such_room'"):
        sd.no_such_room  # noqa: B018
    with pytest.raises(ImportError, match="no_such_room"):
        exec("from structdrop import no_such_room")


@pytest.mark.slow
def test_import_structdrop_nn_loads_no_compiler_stack() -> None:
    """``import structdrop.nn`` costs little more than ``import torch``: the compiler stack
    (Dynamo, Inductor, SymPy) and the experiments' packages load only when used. Measured on
    the 2-core reference machine: 0.03 s over ``import torch``'s 1.25 s."""
    loaded = _run(
        """
        import json, sys
        import torch
        before = set(sys.modules)
        import structdrop.nn
        from structdrop.nn import DropBlock2d
        DropBlock2d(0.1, 3)(torch.ones(2, 3, 8, 8))  # a forward pass loads nothing either
        heavy = ("torch._dynamo", "torch._inductor", "sympy", "scipy", "numba", "sklearn",
                 "matplotlib", "typer", "torchvision")
        print(json.dumps({"before": [m for m in heavy if m in before],
                          "after": [m for m in heavy if m in sys.modules]}))
        """
    )
    assert loaded["before"] == []  # torch itself loads none of them
    assert loaded["after"] == []
