"""Real models: timm and torchvision ResNets with DropBlock, converted, trained eager and
compiled, exported, autocast, channels_last, DDP.

Three models (timm ``resnet18`` and ``resnet50`` with ``drop_block_rate``, a torchvision
``resnet18`` with ``torchvision.ops.DropBlock2d`` after two stages) are converted by
``convert_dropblock`` and checked on values: the mapped rates and options, finite training
steps, the layers' zeros and scaling, eval mode as the model without DropBlock, compiled and
exported outputs equal to eager ones under the same seed, and recompile counts under a
``DropRateSchedule``. Inputs are small (3x32x32 images, num_classes=10) to keep the CPU cost low.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from processes import free_port, join_gloo_group, spawn
from structdrop import nn as sdnn

torchvision = pytest.importorskip("torchvision")
torchvision_ops = pytest.importorskip("torchvision.ops")

MODELS = ["timm-resnet18", "timm-resnet50", "torchvision-resnet18"]
#: The slow checks (compiling for shapes and rates, exporting) run on the two ResNet-18s.
SMALL_MODELS = ["timm-resnet18", "torchvision-resnet18"]
#: Our layers in each model: timm puts one in every block of layer3 and layer4.
LAYER_COUNTS = {"timm-resnet18": 4, "timm-resnet50": 9, "torchvision-resnet18": 2}
IMAGE = (3, 32, 32)


def _build(name: str) -> nn.Module:
    """The model ``name`` before conversion, with seeded weights."""
    torch.manual_seed(0)
    if name.startswith("timm-"):
        timm = pytest.importorskip("timm")
        arch = name.removeprefix("timm-")
        return timm.create_model(arch, pretrained=False, num_classes=10, drop_block_rate=0.2)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.layer3 = nn.Sequential(model.layer3, torchvision_ops.DropBlock2d(0.1, 3))
    model.layer4 = nn.Sequential(model.layer4, torchvision_ops.DropBlock2d(0.15, 2))
    return model


def _converted(name: str) -> nn.Module:
    return sdnn.convert_dropblock(_build(name))


def _class(module_name: str, class_name: str) -> type | None:
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None


def _foreign_classes() -> tuple[type, ...]:
    """The DropBlock classes of torchvision, timm and ``dropblock`` that import here."""
    names = [
        ("torchvision.ops", "DropBlock2d"),
        ("torchvision.ops", "DropBlock3d"),
        ("timm.layers", "DropBlock2d"),
        ("dropblock", "DropBlock2D"),
        ("dropblock", "DropBlock3D"),
    ]
    return tuple(cls for cls in (_class(*name) for name in names) if cls is not None)


def _expected_layers(model: nn.Module) -> dict[str, tuple[float, int, str, bool]]:
    """(p, block_size, boundary, shared_channels) of each foreign DropBlock, by module name."""
    timm_class = _class("timm.layers", "DropBlock2d")
    expected = {}
    for name, module in model.named_modules():
        if isinstance(module, torchvision_ops.DropBlock2d):
            expected[name] = (module.p, module.block_size, "valid", False)
        elif timm_class is not None and isinstance(module, timm_class):
            rate = module.gamma_scale * module.drop_prob
            expected[name] = (rate, module.block_size, "clipped", module.couple_channels)
    return expected


def _ours(model: nn.Module) -> list[tuple[str, sdnn.DropBlock2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, sdnn.DropBlock2d)]


def _without_dropblock(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every DropBlock layer replaced by ``nn.Identity``."""
    plain = copy.deepcopy(model)
    for name, _ in _ours(plain):
        parent, _, attribute = name.rpartition(".")
        setattr(plain.get_submodule(parent), attribute, nn.Identity())
    assert not _ours(plain)
    return plain


def _batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, *IMAGE), torch.randint(10, (n,))


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return loss


def _assert_finite_grads(model: nn.Module) -> None:
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


def _record(layers, records: list) -> list:
    """Forward hooks on ``layers`` that append (input, output) clones to ``records``."""

    def hook(module, inputs, output):
        records.append((inputs[0].detach().clone(), output.detach().clone()))

    return [layer.register_forward_hook(hook) for layer in layers]


def _drop_block_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    op = torch.ops.structdrop.drop_block
    return [
        node
        for node in graph.nodes
        if node.op == "call_function" and getattr(node.target, "_overloadpacket", None) is op
    ]


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_dynamo")]  # models, compiled


@pytest.fixture(params=MODELS)
def name(request) -> str:
    return request.param


# ----------------------------------------------------------------------------------------------
# Conversion


def test_conversion_leaves_only_our_layers_with_the_mapped_rates(name):
    model = _build(name)
    expected = _expected_layers(model)
    assert len(expected) == LAYER_COUNTS[name]
    assert sdnn.convert_dropblock(model) is model
    assert not any(isinstance(m, _foreign_classes()) for m in model.modules())
    converted = dict(_ours(model))
    assert set(converted) == set(expected)
    for layer_name, layer in converted.items():
        p, block_size, boundary, shared = expected[layer_name]
        assert type(layer) is sdnn.DropBlock2d and layer.training
        assert layer.p == p
        options = layer.options
        assert (options.block_size, options.boundary, options.shared_channels) == (
            block_size,
            boundary,
            shared,
        )
        assert (options.gamma, options.scale, options.batchwise) == ("mean", "expected", False)
    rates = sorted({layer.p for layer in converted.values()})
    if name.startswith("timm-"):  # layer3: gamma_scale 0.25, block 5; layer4: 1.0, block 3
        assert rates == [0.25 * 0.2, 1.0 * 0.2]
        blocks = {n.split(".")[0]: layer.options.block_size for n, layer in converted.items()}
        assert blocks == {"layer3": 5, "layer4": 3}
    else:
        assert rates == [0.1, 0.15]


# ----------------------------------------------------------------------------------------------
# Eager training and eval


def test_eager_training_step_drops_and_scales(name):
    model = _converted(name)
    layers = [layer for _, layer in _ours(model)]
    records: list = []
    hooks = _record(layers, records)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    x, y = _batch(16)
    loss = _loss(model, x, y)
    for hook in hooks:
        hook.remove()
    assert torch.isfinite(loss)
    _assert_finite_grads(model)
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))

    assert len(records) == len(layers)
    sizes = {tuple(out.shape[2:]) for _, out in records}
    assert sizes == {(2, 2), (1, 1)}  # layer3 and layer4 of a 32x32 image
    new_zeros = 0
    for inp, out in records:
        assert out.shape == inp.shape and out.dtype == inp.dtype
        assert torch.equal(out[inp == 0], torch.zeros_like(out[inp == 0]))  # zeros stay zeros
        kept = out != 0
        assert (out[kept] / inp[kept] > 1).all()  # kept units divided by their keep rate < 1
        new_zeros += int(((out == 0) & (inp != 0)).sum())
    assert new_zeros > 0


def test_each_converted_layer_drops_blocks_of_ones(name):
    model = _converted(name)
    for layer_name, layer in _ours(model):
        out = layer(torch.ones(16, 4, 16, 16))
        dropped = out == 0
        assert dropped.any(), layer_name
        assert (out[~dropped] > 1).all(), layer_name
        if layer.options.shared_channels:  # timm: one mask per sample for all channels
            assert torch.equal(dropped.all(1), dropped.any(1)), layer_name
        else:  # torchvision: one mask per channel
            assert not torch.equal(dropped.all(1), dropped.any(1)), layer_name


def test_eval_mode_is_the_model_without_dropblock(name):
    model = _converted(name).eval()
    x, _ = _batch()
    records: list = []
    hooks = _record([layer for _, layer in _ours(model)], records)
    with torch.no_grad():
        out = model(x)
        reference = _without_dropblock(model)(x)
    for hook in hooks:
        hook.remove()
    assert torch.equal(out, reference)
    assert len(records) == LAYER_COUNTS[name]
    assert all(torch.equal(inp, layer_out) for inp, layer_out in records)


# ----------------------------------------------------------------------------------------------
# torch.compile


def test_aot_eager_fullgraph_training_step_equals_eager(name):
    model = _converted(name)
    eager_model = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, y = _batch()
    torch.manual_seed(1)
    loss = _loss(compiled, x, y)
    torch.manual_seed(1)  # the same seeds: the same masks
    expected = _loss(eager_model, x, y)
    assert torch.isfinite(loss)
    _assert_finite_grads(model)
    torch.testing.assert_close(loss, expected)
    for (param_name, ours), theirs in zip(
        model.named_parameters(), eager_model.parameters(), strict=True
    ):
        torch.testing.assert_close(ours.grad, theirs.grad, msg=param_name)


def test_inductor_default_mode_training_step():
    model = _converted("timm-resnet18")
    compiled = torch.compile(model, fullgraph=True)
    x, y = _batch()
    loss = _loss(compiled, x, y)
    assert torch.isfinite(loss)
    _assert_finite_grads(model)


def test_inductor_max_autotune_training_step():
    model = _converted("timm-resnet18")
    compiled = torch.compile(model, fullgraph=True, mode="max-autotune-no-cudagraphs")
    x, y = _batch()
    loss = _loss(compiled, x, y)
    assert torch.isfinite(loss)
    _assert_finite_grads(model)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_batch_sizes_recompile_at_most_once_and_a_drop_rate_schedule_never(name):
    model = _converted(name)
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for n in (2, 3):
        assert torch.isfinite(_loss(compiled, *_batch(n)))
    assert 1 <= backend.frame_count <= 2  # one recompile: the batch size becomes symbolic
    shapes = backend.frame_count

    layers = [layer for _, layer in _ours(model)]
    schedule = sdnn.DropRateSchedule(model, stop=0.32, steps=5, start=0.02)
    assert schedule.layers == layers
    counts, rates = [], []
    for _ in range(5):
        schedule.step()
        rates.append([layer.p for layer in layers])
        assert torch.isfinite(_loss(compiled, *_batch(3)))
        counts.append(backend.frame_count)
    assert rates == [pytest.approx([p] * len(layers)) for p in (0.08, 0.14, 0.2, 0.26, 0.32)]
    assert counts == [shapes] * 5  # a layer's rate is a tensor that the schedule fills
    _assert_finite_grads(model)


# ----------------------------------------------------------------------------------------------
# torch.export


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_export_in_train_and_eval_mode(name):
    model = _converted(name)
    x, _ = _batch()
    exported = torch.export.export(model, (x,), strict=False)
    assert len(_drop_block_nodes(exported.graph)) == LAYER_COUNTS[name]
    torch.manual_seed(1)
    out = exported.module()(x)
    torch.manual_seed(1)  # the same seeds: the same masks
    expected = model(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)

    model.eval()
    exported = torch.export.export(model, (x,), strict=False)
    assert not _drop_block_nodes(exported.graph)  # eval mode: the identity
    with torch.no_grad():
        assert torch.equal(exported.module()(x), model(x))


# ----------------------------------------------------------------------------------------------
# Autocast and channels_last


def test_bfloat16_autocast_training_step(name):
    model = _converted(name)
    records: list = []
    hooks = _record([layer for _, layer in _ours(model)], records)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    loss.backward()
    for hook in hooks:
        hook.remove()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(loss)
    _assert_finite_grads(model)
    assert len(records) == LAYER_COUNTS[name]
    for inp, layer_out in records:
        assert inp.dtype == layer_out.dtype == torch.bfloat16
        assert torch.isfinite(layer_out).all()
        assert torch.equal(layer_out[inp == 0], torch.zeros_like(layer_out[inp == 0]))


def test_bfloat16_autocast_compiled_training_step():
    model = _converted("timm-resnet18")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x)
    loss = F.cross_entropy(out.float(), y)
    loss.backward()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(loss)
    _assert_finite_grads(model)


def test_channels_last_training_step_keeps_the_memory_format(name):
    model = _converted(name).to(memory_format=torch.channels_last)
    formats: list = []

    def hook(module, inputs, output):
        channels_last = torch.channels_last
        formats.append(
            (
                inputs[0].is_contiguous(memory_format=channels_last),
                output.is_contiguous(memory_format=channels_last),
                output.stride() == inputs[0].stride(),
            )
        )

    hooks = [layer.register_forward_hook(hook) for _, layer in _ours(model)]
    x, y = _batch()
    loss = _loss(model, x.to(memory_format=torch.channels_last), y)
    for handle in hooks:
        handle.remove()
    assert torch.isfinite(loss)
    _assert_finite_grads(model)
    assert formats == [(True, True, True)] * LAYER_COUNTS[name]


# ----------------------------------------------------------------------------------------------
# DistributedDataParallel


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    """One compiled DDP training step on rank ``rank`` of two; writes what the test checks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    join_gloo_group(rank, 2, port)
    model = _converted("torchvision-resnet18")  # seeded: the same weights on both ranks
    initial = torch.cat([p.detach().flatten() for p in model.parameters()])
    ddp = DistributedDataParallel(model)
    compiled = torch.compile(ddp, backend="aot_eager")
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)  # each rank its own batch and masks
    loss = _loss(compiled, *_batch())
    optimizer.step()
    final = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(final) for _ in range(2)]
    dist.all_gather(gathered, final)
    del compiled, ddp, optimizer  # nothing holds the group once it is destroyed
    torch._dynamo.reset()
    dist.destroy_process_group()
    result = {
        "loss": loss.detach(),
        "initial": initial,
        "final": final,
        "gathered_equal": torch.equal(gathered[0], gathered[1]),
        "initialized_after_destroy": dist.is_initialized(),
    }
    torch.save(result, f"{folder}/rank{rank}.pt")


def test_compiled_ddp_step_with_gloo_keeps_the_ranks_in_sync(tmp_path):
    spawn(_ddp_worker, (free_port(), str(tmp_path)))
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for result in results:
        assert result["gathered_equal"] and not result["initialized_after_destroy"]
        assert torch.isfinite(result["loss"]) and torch.isfinite(result["final"]).all()
    assert torch.equal(results[0]["initial"], results[1]["initial"])
    assert not torch.equal(results[0]["loss"], results[1]["loss"])  # different batches
    assert not torch.equal(results[0]["initial"], results[0]["final"])  # a step was taken
    assert torch.equal(results[0]["final"], results[1]["final"])  # gradients were averaged
