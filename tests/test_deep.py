"""Tests of the deep-network experiment (Sec. 5.2, Fig. 2): structdrop.experiments.deep.

Small sizes throughout: one ``--quick`` run of the ResNet-50 network end to end; resuming and
DDP use the ``tiny`` trunk (no BatchNorm) so that they take seconds. The data sets are tested in
test_deep_data.py, the command line in test_cli.py.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import structdrop as sd
from processes import free_port, spawn
from structdrop import CheckpointError
from structdrop._checkpoint import load_checkpoint
from structdrop.experiments import report
from structdrop.experiments.deep.config import (
    DeepConfig,
    config_from_options,
    make_scheme,
    scheme_laws,
)
from structdrop.experiments.deep.data import load_images
from structdrop.experiments.deep.experiment import run_deep
from structdrop.experiments.deep.model import build_model
from structdrop.experiments.deep.parallel import process_group, processes
from structdrop.experiments.deep.recipe import CHECKPOINT_KIND, Interrupted, evaluate, train


def tiny(**overrides: object) -> DeepConfig:
    settings: dict[str, object] = {
        "trunk": "tiny",
        "train_size": 60,
        "image_size": 8,
        "batch_size": 20,
        "epochs": 3,
        "lr": 3e-3,
    }
    settings.update(overrides)
    return DeepConfig(**settings)


# --------------------------------------------------------------------------------------------
# The deterministic objective
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme_name", ["grid", "bernoulli", "SlidingBlock"])
def test_evaluate_equals_the_direct_formula(scheme_name: str) -> None:
    """Thm 3.1, eq. 14-15 from the features themselves, in float64."""
    config = tiny(scheme=scheme_name)
    data = load_images("digits", image_size=8, train_size=60, seed=0)
    model = build_model(config, data.classes)
    torch.nn.init.normal_(model.head.weight, std=0.3, generator=torch.Generator().manual_seed(0))
    scheme = make_scheme(config)
    procs = processes(config)
    result = evaluate(model, data, scheme, procs, amp=False)
    with torch.no_grad():
        G = model.features(data.images).double().T
    U = model.head.weight.detach().double()
    Y = data.targets()
    fit = float(((Y - U @ G) ** 2).sum())
    omega = float(sd.penalty(U, G, scheme))
    assert result.fit == pytest.approx(fit, rel=1e-9)
    assert result.regularizer == pytest.approx(omega, rel=1e-9)
    expected = torch.linalg.svdvals(U @ G)
    np.testing.assert_allclose(result.singular_values, expected.numpy(), rtol=1e-6, atol=1e-9)
    if scheme_name == "SlidingBlock":  # no blocks of Thm 2.5
        assert result.block_norms is None
        return
    r = scheme.block_size
    norms = [float(torch.linalg.norm(U[:, i : i + r] @ G[i : i + r])) for i in range(0, 80, r)]
    np.testing.assert_allclose(result.block_norms, norms, rtol=1e-9)


def test_masked_loss_averages_to_the_deterministic_objective() -> None:
    """Eq. 14: the mean masked loss over many masks (z-bound 5) equals the objective."""
    config = tiny(scheme="grid", p=0.4)
    data = load_images("digits", image_size=8, train_size=60, seed=0)
    model = build_model(config, data.classes)
    torch.nn.init.normal_(model.head.weight, std=0.3, generator=torch.Generator().manual_seed(0))
    scheme = make_scheme(config)
    objective = evaluate(model, data, scheme, processes(config), amp=False)
    with torch.no_grad():
        G = model.features(data.images).double()  # no BatchNorm: train mode = eval mode
        U = model.head.weight.detach().double()
        Y = data.targets().T
        generator = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(4000):
            scale = model.dropout(torch.ones(len(data), 80, dtype=torch.float64), generator)
            losses.append(float(((Y - (G * scale) @ U.T) ** 2).sum()))
    mean, error = np.mean(losses), np.std(losses) / math.sqrt(len(losses))
    assert abs(mean - objective.objective) < 5 * error


# --------------------------------------------------------------------------------------------
# End to end, resuming, DDP
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """The default network (ResNet-50) on ``--quick`` sizes: figure, JSON, report section."""
    config = DeepConfig.quick()
    assert config.trunk == "resnet50" and config.width == 80
    data = run_deep(config, tmp_path, force=False, progress=False)
    assert (tmp_path / "fig2.png").stat().st_size > 10_000
    on_disk = json.loads((tmp_path / "fig2.json").read_text())
    assert on_disk["config"] == config.identity()
    assert not (tmp_path / "checkpoints" / "fig2.pt").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    history = data["history"]
    assert len(history["step_loss"]) == 2 * 2
    assert history["eval_step"] == [0, 2, 4]
    # The theoretical minimum is a lower bound on every deterministic objective.
    minimum = data["theory"]["value"]
    assert all(value >= minimum * (1 - 1e-9) for value in history["objective"])
    assert data["gap"] >= 0
    assert len(data["final"]["singular_values"]) == 10
    section = report.deep_section(data)
    assert "![Figure 2](fig2.png)" in section
    assert "Verdict" in section and "theoretical minimum" in section
    # A second call reuses the results.
    again = run_deep(config, tmp_path, force=False, progress=False)
    assert again["history"] == on_disk["history"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    config = tiny()
    straight = train(config)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        train(config, checkpoint=checkpoint, interrupt_after=1)
    state = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND, identity=config.identity())
    assert state["epoch"] == 1 and len(state["epoch_seconds"]) == 1
    resumed = train(config, checkpoint=checkpoint)
    assert resumed.resumed_from_epoch == 1
    assert resumed.history == straight.history
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0, atol=0)
    # A checkpoint of another configuration is refused, never resumed.
    with pytest.raises(CheckpointError, match="belongs to another run"):
        train(tiny(seed=1), checkpoint=checkpoint)


def test_run_deep_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    config = tiny(epochs=2)
    with pytest.raises(Interrupted):
        train(config, checkpoint=tmp_path / "checkpoints" / "fig2.pt", interrupt_after=1)
    data = run_deep(config, tmp_path, progress=False)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["fig2"]["resumed_from_epoch"] == 1
    assert data == json.loads((tmp_path / "fig2.json").read_text())
    resumed_bytes = (tmp_path / "fig2.json").read_bytes()
    resumed_png = (tmp_path / "fig2.png").read_bytes()
    assert not (tmp_path / "checkpoints").exists()  # no empty folder left behind
    run_deep(config, tmp_path, force=True, progress=False)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["fig2"]["resumed_from_epoch"] == 0
    assert (tmp_path / "fig2.json").read_bytes() == resumed_bytes  # same seed, same bytes
    assert (tmp_path / "fig2.png").read_bytes() == resumed_png


def _group_threads() -> list[str]:
    """The threads of this process that belong to a process group (gloo's loops, the store)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            continue  # ended meanwhile
    return sorted(name for name in names if name.startswith(("gloo", "pt_gloo", "pt_tcpstore")))


def _ddp_worker(rank: int, world: int, port: int, config: DeepConfig, folder: str) -> None:
    """One process of a two-process run, joined as ``torchrun`` announces it (environment
    variables) through the recipe's own ``process_group``."""
    torch.set_num_threads(1)
    os.environ.update(
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    with process_group(config) as procs:
        assert procs.world == world and procs.rank == rank
        during = _group_threads()
        result = train(config)
    state = {"model": result.model.state_dict(), "objective": result.report.objective}
    threads = {"during": len(during), "after": len(_group_threads())}
    torch.save({**state, "threads": threads}, f"{folder}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    """Same global batch (25: shards of 13 and 12, last batch 10), same masks, same result. The
    process group is left whole: its threads end with it (threads that outlived it ran on into
    the interpreter's shutdown, where they could abort the process)."""
    config = tiny(batch_size=25, epochs=2)
    single = train(config)
    spawn(_ddp_worker, (2, free_port(), config, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for ddp in ranks:
        assert ddp["threads"]["during"] >= 1  # gloo's loop at least
        assert ddp["threads"]["after"] == 0, "the process group's threads outlived it"
        for name, tensor in single.model.state_dict().items():
            torch.testing.assert_close(ddp["model"][name], tensor, rtol=1e-5, atol=1e-5)
        assert ddp["objective"] == pytest.approx(single.report.objective, rel=1e-5)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"dataset": "imagenet"}, ValueError, "dataset must be one of"),
        ({"p": 1.0}, ValueError, r"p must be in \[0, 1\), got 1.0"),
        ({"p": -0.1}, ValueError, r"p must be in \[0, 1\)"),
        ({"scheme": "dropblock"}, ValueError, "scheme must be one of"),
        ({"block_size": 3}, ValueError, "block_size"),
        ({"epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"trunk": "vgg"}, ValueError, "trunk must be one of"),
        ({"device": "tpu"}, ValueError, "device must be"),
        ({"train_size": -3}, ValueError, "train_size must be >= 1"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"warmup": 1.0}, ValueError, r"warmup must be in \[0, 1\)"),
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*63\), got -1"),
        ({"eval_every": 1.5}, TypeError, "eval_every must be an integer"),
    ],
)
def test_bad_configurations(overrides: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DeepConfig(**overrides)


def test_options_map_to_the_configuration() -> None:
    config = config_from_options(dataset="cifar10", train_size=0, quick=True)
    assert config.train_size is None and config.image_size == 32 and config.epochs == 2
    assert config_from_options(epochs=7).epochs == 7


@pytest.mark.parametrize(
    ("name", "law"),
    [
        ("grid", sd.GridBlock(0.3, 4)),
        ("GridBlock", sd.GridBlock(0.3, 4)),
        ("bernoulli", sd.Bernoulli(0.3)),
        ("Bernoulli", sd.Bernoulli(0.3)),
        ("sliding", sd.SlidingBlock(0.3, 4)),
        ("SlidingBlock", sd.SlidingBlock(0.3, 4)),
        ("dropconnect", sd.DropConnect(0.3)),
        ("DropConnect", sd.DropConnect(0.3)),
    ],
)
def test_every_law_of_p_and_block_size_by_either_name(name: str, law: sd.Scheme) -> None:
    config = DeepConfig(scheme=name, p=0.3, block_size=4)
    assert make_scheme(config) == law
    assert config.scheme == name.lower().removesuffix("block")  # one identity per law
    assert (
        config.identity() == DeepConfig(scheme=type(law).__name__, p=0.3, block_size=4).identity()
    )


def test_the_laws_come_from_the_registry() -> None:
    """Every law that p and block_size define, and no other (Discrete needs its masks)."""
    laws = scheme_laws()
    assert laws == {
        "bernoulli": "Bernoulli",
        "dropconnect": "DropConnect",
        "grid": "GridBlock",
        "sliding": "SlidingBlock",
    }
    assert set(laws.values()) <= set(sd.Scheme.laws())
    assert "Discrete" in sd.Scheme.laws()


def test_width_is_checked_by_the_law() -> None:
    with pytest.raises(ValueError, match="block_size must divide the number of hidden units d"):
        DeepConfig(width=81)
    assert DeepConfig(width=81, scheme="sliding").width == 81  # sliding windows fit any width


def test_the_model_draws_the_law_on_units() -> None:
    """DropConnect's masks fall on the last layer's entries; the network's dropout layer draws
    the law on the units with the same regularizer (Dropout's), and the results name the
    configured law."""
    config = tiny(scheme="dropconnect", p=0.3)
    assert build_model(config, 10).dropout.scheme == sd.Bernoulli(0.3)
    assert make_scheme(config) == sd.DropConnect(0.3)


# --------------------------------------------------------------------------------------------
# Results of other settings or data, and leftovers of a finished run
# --------------------------------------------------------------------------------------------
def _cli_deep(out: Path, *args: str):
    from typer.testing import CliRunner

    from structdrop.cli import app

    return CliRunner().invoke(
        app, ["reproduce", "deep", "--trunk", "tiny", *args, "--out", str(out)]
    )


def test_results_of_other_settings_are_refused_unless_forced(tmp_path: Path) -> None:
    first = _cli_deep(tmp_path, "--quick", "--epochs", "1")
    assert first.exit_code == 0, first.output
    before = (tmp_path / "fig2.json").read_bytes()
    refused = _cli_deep(tmp_path, "--quick")
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--force" in lines[0]
    assert "epochs" in lines[0]
    assert (tmp_path / "fig2.json").read_bytes() == before
    assert not (tmp_path / "checkpoints").exists()  # refused before any work
    forced = _cli_deep(tmp_path, "--quick", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((tmp_path / "fig2.json").read_text())["config"]["epochs"] == 2
    assert _cli_deep(tmp_path, "--quick").exit_code == 0  # same settings: skipped


def test_a_finished_run_drops_leftover_checkpoints_and_writes_nothing_else(
    tmp_path: Path,
) -> None:
    config = tiny(epochs=1)
    run_deep(config, tmp_path, progress=False)
    (tmp_path / "timings.json").unlink()  # killed before the timings and the cleanup
    leftover = tmp_path / "checkpoints" / "fig2.pt"
    leftover.parent.mkdir()
    leftover.write_bytes(b"state")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    run_deep(config, tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()
    after = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert after == before


#: The settings that cannot change a run's numbers: where it runs, and where its files are
#: looked for (which files it read is in the results and checkpoints: the data source).
NOT_IN_THE_IDENTITY = {"device", "amp", "data_dir"}

#: A value other than the default for every field, valid on its own.
OTHER_VALUES = {
    "dataset": "mnist",
    "data_dir": "elsewhere",
    "train_size": 37,
    "image_size": 12,
    "trunk": "resnet18",
    "width": 60,
    "scheme": "bernoulli",
    "p": 0.3,
    "block_size": 4,
    "epochs": 7,
    "batch_size": 11,
    "lr": 2e-3,
    "warmup": 0.1,
    "eval_every": 3,
    "seed": 5,
    "device": "cpu",
    "amp": False,
}


def test_every_setting_that_can_change_the_numbers_is_in_the_identity() -> None:
    """A finished run is reused, and a checkpoint resumed, only for the same identity: each
    field but those named above changes it, and those named do not."""
    import dataclasses

    fields = {field.name for field in dataclasses.fields(DeepConfig)}
    assert fields == set(OTHER_VALUES)  # a new field must be classified here
    base = DeepConfig()
    assert set(base.identity()) == fields - NOT_IN_THE_IDENTITY
    for name, value in OTHER_VALUES.items():
        other = dataclasses.replace(base, **{name: value})
        changed = other.identity() != base.identity()
        assert changed == (name not in NOT_IN_THE_IDENTITY), name
