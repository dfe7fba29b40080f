"""Drop-in use: torchvision's signatures, ``p = 1``, ``convert_dropblock`` for torchvision, timm
and ``dropblock`` models, and ``DropRateSchedule`` on a converted model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from structdrop import nn as sdnn
from structdrop.nn.functional import drop_block2d, drop_block3d

torchvision_ops = pytest.importorskip("torchvision.ops")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# torchvision's positional order: (p, block_size, inplace, eps) and (input, ..., training)


def test_modules_take_torchvision_positionals():
    for ours, theirs in ((sdnn.DropBlock2d, torchvision_ops.DropBlock2d), (sdnn.DropBlock3d, None)):
        layer = ours(0.1, 7, False, 1e-6)
        assert (layer.p, layer.block_size, layer.inplace, layer.eps) == (0.1, 7, False, 1e-6)
        assert ours(0.1, 7, True).inplace
        if theirs is not None:
            reference = theirs(0.1, 7, True, 1e-5)
            copy = ours(reference.p, reference.block_size, reference.inplace, reference.eps)
            assert (copy.inplace, copy.eps) == (True, 1e-5)
    with pytest.raises(TypeError, match="positional"):
        sdnn.DropBlock2d(0.1, 7, False, 1e-6, "valid")  # ours are keyword-only


def test_functions_take_torchvision_positionals():
    x = torch.randn(2, 3, 9, 9)
    out = drop_block2d(x, 0.1, 7, False, 1e-6, True, generator=gen(0))
    assert torch.equal(out, drop_block2d(x, 0.1, 7, generator=gen(0)))
    assert drop_block2d(x, 0.1, 7, False, 1e-6, False) is x  # training=False
    y = x.clone()
    assert drop_block2d(y, 0.3, 3, True, generator=gen(1)) is y  # inplace=True
    assert torch.equal(y, drop_block2d(x, 0.3, 3, generator=gen(1)))
    z = torch.randn(2, 3, 4, 5, 6)
    assert drop_block3d(z, 0.1, 3, False, 1e-6, False) is z
    assert drop_block3d(z, 0.1, 3, False, 1e-6, True).shape == z.shape


@pytest.mark.parametrize("cls", [sdnn.DropBlock2d, sdnn.DropBlock3d, sdnn.BlockDropout])
def test_p_one_gives_zeros_as_dropout(cls):
    shape = (2, 4, 5, 6, 7) if cls is sdnn.DropBlock3d else (2, 4, 6, 6)
    x = torch.randn(shape)
    out = cls(1.0, 2)(x)
    assert torch.equal(out, F.dropout(x, 1.0))
    assert cls(1.0, 2).eval()(x) is x


def test_p_one_dropconnect_keeps_the_bias():
    layer = sdnn.DropConnectLinear(4, 3, 1.0)
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), layer.bias.expand(5, 3))


def test_module_output_keeps_channels_last():
    x = torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)
    for layer in (sdnn.DropBlock2d(0.2, 3), sdnn.DropBlock2d(0.2, 3, shared_channels=True)):
        assert layer(x).is_contiguous(memory_format=torch.channels_last)


def test_drop_prob_is_an_alias_of_p():
    layer = sdnn.DropBlock2d(0.1, 3)
    layer.drop_prob = 0.25
    assert layer.p == layer.drop_prob == 0.25
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\], got 2.0"):
        layer.drop_prob = 2.0


# ----------------------------------------------------------------------------------------------
# convert_dropblock


def _ours(module: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = (sdnn.DropBlock2d, sdnn.DropBlock3d)
    return [(name, m) for name, m in module.named_modules() if isinstance(m, kinds)]


def test_convert_torchvision_layers_recursively_in_place():
    inner = nn.ModuleList([torchvision_ops.DropBlock3d(0.2, 3)])
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), torchvision_ops.DropBlock2d(0.1, 7, True, 1e-5), nn.Sequential(inner)
    )
    model[1].eval()
    assert sdnn.convert_dropblock(model) is model
    layer, layer3d = model[1], model[2][0][0]
    assert type(layer) is sdnn.DropBlock2d and type(layer3d) is sdnn.DropBlock3d
    assert (layer.p, layer.block_size, layer.inplace, layer.eps) == (0.1, 7, True, 1e-5)
    assert (layer.boundary, layer.shared_channels, layer.gamma, layer.scale) == (
        "valid",
        False,
        "mean",
        "expected",
    )
    assert not layer.training and layer3d.training  # each keeps its mode
    assert (layer3d.p, layer3d.block_size) == (0.2, 3)


def test_convert_timm_layers_maps_semantics_and_gamma_scale():
    timm = pytest.importorskip("timm")
    from timm.layers import DropBlock2d as TimmDropBlock2d

    model = timm.create_model("resnet18", drop_block_rate=0.1, pretrained=False)
    scales = {n: m.gamma_scale for n, m in model.named_modules() if isinstance(m, TimmDropBlock2d)}
    assert set(scales.values()) == {0.25, 1.0}
    sdnn.convert_dropblock(model)
    converted = dict(_ours(model))
    assert set(converted) == set(scales)
    for name, layer in converted.items():
        assert layer.p == pytest.approx(0.1 * scales[name])
        assert (layer.boundary, layer.shared_channels) == ("clipped", True)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    per_channel = nn.Sequential(TimmDropBlock2d(0.2, 5, couple_channels=False, gamma_scale=10.0))
    layer = sdnn.convert_dropblock(per_channel)[0]
    assert (layer.p, layer.shared_channels) == (1.0, False)  # gamma_scale folded, capped at 1
    with pytest.raises(ValueError, match="with_noise=True"):
        sdnn.convert_dropblock(nn.Sequential(TimmDropBlock2d(0.1, 3, with_noise=True)))
    with pytest.raises(ValueError, match="scale_by_keep=False"):
        sdnn.convert_dropblock(TimmDropBlock2d(0.1, 3, scale_by_keep=False))


def test_convert_dropblock_package_and_its_scheduler():
    dropblock = pytest.importorskip("dropblock")
    scheduler = dropblock.LinearScheduler(dropblock.DropBlock2D(0.0, 5), 0.0, 0.2, 3)
    model = nn.Sequential(dropblock.DropBlock3D(0.1, 3), scheduler)
    sdnn.convert_dropblock(model)
    assert type(model[0]) is sdnn.DropBlock3d
    assert (model[0].boundary, model[0].shared_channels) == ("clipped", True)
    for _ in range(3):  # the package's scheduler sets drop_prob: our alias of p
        scheduler.step()
    assert model[1].dropblock.p == pytest.approx(0.2)


def test_convert_options_override_and_are_checked():
    model = nn.Sequential(torchvision_ops.DropBlock2d(0.1, 7))
    sdnn.convert_dropblock(model, gamma="interior", method="dense", shared_channels=True)
    assert (model[0].gamma, model[0].method, model[0].shared_channels) == (
        "interior",
        "dense",
        True,
    )
    root = sdnn.convert_dropblock(torchvision_ops.DropBlock2d(0.3, 5), p=0.05)
    assert type(root) is sdnn.DropBlock2d and root.p == 0.05
    with pytest.raises(TypeError, match=r"unknown options \['fast'\]"):
        sdnn.convert_dropblock(model, fast=True)
    with pytest.raises(ValueError, match="boundary must be one of"):
        sdnn.convert_dropblock(nn.Sequential(torchvision_ops.DropBlock2d(0.1, 7)), boundary="x")
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        sdnn.convert_dropblock("resnet")


def test_a_model_without_dropblock_comes_back_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.1), sdnn.DropBlock2d(0.1, 3))
    before = [(name, type(m), id(m)) for name, m in model.named_modules()]
    assert sdnn.convert_dropblock(model) is model
    assert [(name, type(m), id(m)) for name, m in model.named_modules()] == before


# ----------------------------------------------------------------------------------------------
# DropRateSchedule on a converted model


def test_schedule_drives_a_converted_model_in_one_call():
    model = nn.Sequential(
        torchvision_ops.DropBlock2d(0.1, 7), nn.ReLU(), torchvision_ops.DropBlock2d(0.05, 3)
    )
    sdnn.convert_dropblock(model)
    shared = sdnn.DropRateSchedule(model, stop=0.2, steps=4)
    assert [layer.p for layer in shared.layers] == [0.0, 0.0]
    shared.step()
    assert [layer.p for layer in shared.layers] == pytest.approx([0.05, 0.05])

    model[0].p, model[2].p = 0.1, 0.05  # each layer warms up to its own rate (timm's stages)
    own = sdnn.DropRateSchedule(model, stop=None, steps=4)
    assert own.stops == [0.1, 0.05] and own.p == 0.0
    for _ in range(2):
        own.step()
    assert [model[0].p, model[2].p] == pytest.approx([0.05, 0.025])
    state = own.state_dict()
    assert state["stop"] is None and state["stops"] == [0.1, 0.05]
    fresh = sdnn.DropRateSchedule(model, stop=0.3, steps=1)
    fresh.load_state_dict(state)
    assert fresh.stops == [0.1, 0.05] and [model[0].p, model[2].p] == pytest.approx([0.05, 0.025])
    with pytest.raises(ValueError, match="'stops'"):
        fresh.load_state_dict({**state, "stops": [0.1]})


def test_a_layer_used_twice_or_under_two_names_is_converted_everywhere_and_stays_shared():
    shared = torchvision_ops.DropBlock2d(0.2, 3)
    twice = nn.Sequential(shared, nn.Identity(), shared)
    sdnn.convert_dropblock(twice)
    assert isinstance(twice[0], sdnn.DropBlock2d)
    assert twice[2] is twice[0]
    aliased = nn.Module()
    aliased.first = nn.Sequential(shared)
    aliased.second = shared
    sdnn.convert_dropblock(aliased)
    assert isinstance(aliased.second, sdnn.DropBlock2d)
    assert aliased.first[0] is aliased.second
    assert not any(isinstance(m, torchvision_ops.DropBlock2d) for m in aliased.modules())


def test_a_scripted_model_is_refused_with_what_to_do():
    # a scripted model's layers are TorchScript: none can be swapped, so none is silently left
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Dropout(0.2)))
    with pytest.raises(TypeError, match=r"before torch\.jit\.script"):
        sdnn.convert_dropblock(scripted)


class _Block(nn.Module):
    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.drop = drop


def test_a_scripted_submodule_is_refused_by_its_path_and_nothing_is_converted():
    model = nn.Module()
    model.stem = torchvision_ops.DropBlock2d(0.1, 3)
    model.layer1 = nn.Sequential(_Block(torch.jit.script(nn.Dropout(0.2))))
    with pytest.raises(TypeError, match=r"scripted submodule 'layer1\.0\.drop'.*before torch\.jit"):
        sdnn.convert_dropblock(model)
    assert type(model.stem) is torchvision_ops.DropBlock2d  # refused before any replacement


def test_a_timm_layer_without_counterpart_leaves_the_model_unchanged():
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(
        torchvision_ops.DropBlock2d(0.1, 3), timm_layers.DropBlock2d(0.1, 3, with_noise=True)
    )
    with pytest.raises(ValueError, match="with_noise=True"):
        sdnn.convert_dropblock(model)
    assert type(model[0]) is torchvision_ops.DropBlock2d


@pytest.mark.parametrize("batchwise", [True, False, None], ids=["true", "false", "unset"])
def test_convert_keeps_timms_batchwise(batchwise):
    # older timm releases have DropBlock2d(..., batchwise): one mask for the whole batch
    timm_layers = pytest.importorskip("timm.layers")
    layer = timm_layers.DropBlock2d(0.5, 3)
    if batchwise is not None:
        layer.batchwise = batchwise
    converted = sdnn.convert_dropblock(nn.Sequential(layer))[0]
    assert isinstance(converted, sdnn.DropBlock2d)
    assert converted.batchwise is bool(batchwise)
    out = converted(torch.ones(8, 2, 16, 16), generator=gen(3))
    assert torch.equal(out, out[:1].expand_as(out)) is bool(batchwise)
