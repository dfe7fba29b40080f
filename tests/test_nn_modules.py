"""The layers as torch.nn modules: the DropBlock wrappers and their options, the conventions they
share (dtypes, devices, inplace, generators, gradients), torch.compile and torch.fx, the public
names. The sliding-block core is tested in test_nn_dropblock.py and test_nn_dense.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import structdrop as sd
from nn_oracles import discrete_wide, seeded
from structdrop import nn as sdnn
from structdrop.nn import functional as F
from structdrop.nn import modules as sdmodules

# --------------------------------------------------------------------------------------------
# DropBlock module wrappers (the sliding-block core is tested in test_nn_dropblock.py)
# --------------------------------------------------------------------------------------------

DROPBLOCKS = [
    (sdnn.DropBlock1d, "drop_block1d", (2, 3, 9)),
    (sdnn.DropBlock2d, "drop_block2d", (2, 3, 7, 6)),
    (sdnn.DropBlock3d, "drop_block3d", (2, 3, 4, 5, 3)),
]
DROPBLOCK_IDS = ["1d", "2d", "3d"]


@pytest.mark.parametrize(("cls", "name", "shape"), DROPBLOCKS, ids=DROPBLOCK_IDS)
def test_dropblock_defaults_and_repr(cls, name, shape):
    layer = cls(0.1, 3)
    assert (layer.p, layer.block_size, layer.boundary, layer.gamma, layer.scale) == (
        0.1,
        3,
        "valid",
        "mean",
        "expected",
    )
    assert not (layer.shared_channels or layer.batchwise or layer.inplace)
    assert layer.generator is None
    expected = "p=0.1, block_size=3, boundary='valid', gamma='mean', scale='expected'"
    assert repr(layer) == f"{cls.__name__}({expected})"
    flags = cls(
        0.2,
        2,
        boundary="clipped",
        gamma=0.05,
        scale="batch",
        shared_channels=True,
        batchwise=True,
        inplace=True,
    )
    assert flags.extra_repr() == (
        "p=0.2, block_size=2, boundary='clipped', gamma=0.05, scale='batch', "
        "shared_channels=True, batchwise=True, inplace=True"
    )


@pytest.mark.parametrize(("cls", "name", "shape"), DROPBLOCKS, ids=DROPBLOCK_IDS)
def test_dropblock_eval_and_zero_rate_are_identities(cls, name, shape):
    x = torch.randn(shape)
    assert cls(0.3, 2).eval()(x) is x
    assert cls(0.0, 2)(x) is x
    out = cls(0.3, 2)(x, generator=seeded(0))
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.equal(out, cls(0.3, 2, generator=seeded(0))(x))


@pytest.mark.parametrize(("cls", "name", "shape"), DROPBLOCKS, ids=DROPBLOCK_IDS)
def test_dropblock_modules_call_through_with_their_options(cls, name, shape, monkeypatch):
    calls = []

    def recording(input, p, options, training, generator):
        calls.append((input, p, options, training, generator))
        return input

    monkeypatch.setattr(sdmodules, "drop_block_masked", recording)
    gen, other = seeded(0), seeded(1)
    block = (2,) * len(shape[2:])
    options = {
        "boundary": "clipped",
        "gamma": "interior",
        "scale": "batch",
        "shared_channels": True,
        "batchwise": False,
        "inplace": True,
        "eps": 0.5,
        "method": "dense",
    }
    layer = cls(0.25, block, generator=gen, **options)
    x = torch.randn(shape)
    layer(x)
    layer.eval()(x, generator=other)
    spec = calls[0][2]
    assert calls[0][:2] == (x, 0.25) and spec.block_size == block
    assert {name: getattr(spec, name) for name in options} == options
    assert spec.spatial_dims == len(shape) - 2
    assert calls[0][3:] == (True, gen)
    assert calls[1][2] is spec and calls[1][3:] == (False, other)


def test_dropblock_modules_reject_bad_options():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        sdnn.DropBlock2d(1.5, 3)
    with pytest.raises(ValueError, match=r"method must be one of .* 'fast'"):
        sdnn.DropBlock2d(0.1, 3, method="fast")
    with pytest.raises(TypeError, match=r"inplace must be a bool.*keyword-only"):
        sdnn.DropBlock2d(0.1, 3, "clipped")
    with pytest.raises(TypeError, match="takes from 3 to 5 positional arguments"):
        sdnn.DropBlock2d(0.1, 3, False, 1e-6, "valid")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        sdnn.DropBlock3d(0.1, 3, eps=-1.0)
    with pytest.raises(TypeError, match=r"block_size must be an integer, got 2\.5"):
        sdnn.DropBlock2d(0.1, 2.5)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        sdnn.DropBlock2d(0.1, 0)
    with pytest.raises(ValueError, match="block_size must be an int or a sequence of 2"):
        sdnn.DropBlock2d(0.1, (3, 3, 3))
    with pytest.raises(ValueError, match="boundary must be one of"):
        sdnn.DropBlock1d(0.1, 3, boundary="same")
    with pytest.raises(ValueError, match="gamma must be one of"):
        sdnn.DropBlock1d(0.1, 3, gamma="exact")
    with pytest.raises(ValueError, match="gamma must be in"):
        sdnn.DropBlock1d(0.1, 3, gamma=1.5)
    with pytest.raises(ValueError, match="scale must be one of"):
        sdnn.DropBlock3d(0.1, 3, scale="none")
    with pytest.raises(ValueError, match="input must be a 4-D tensor"):
        sdnn.DropBlock2d(0.1, 3)(torch.randn(2, 3, 4))


# --------------------------------------------------------------------------------------------
# torch.nn conventions shared by the layers
# --------------------------------------------------------------------------------------------


def _dropout_layers():
    return {
        "block": sdnn.BlockDropout(0.3, 2),
        "structured": sdnn.StructuredDropout(sd.SlidingBlock(0.3, 3, "clipped")),
        "dropblock1d": sdnn.DropBlock1d(0.3, 3),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_and_device_are_kept(dtype):
    for name, layer in _dropout_layers().items():
        x = torch.rand(4, 3, 6, dtype=dtype) + 1.0
        out = layer(x, generator=seeded(0))
        assert out.dtype == dtype, name
        assert out.device == x.device, name
        assert bool(torch.isfinite(out).all()), name
    linear = sdnn.DropConnectLinear(6, 2, 0.3, per_sample=True, dtype=dtype)
    x = torch.rand(5, 6, dtype=dtype, requires_grad=True)
    out = linear(x)
    out.sum().backward()
    assert out.dtype == dtype
    assert x.grad.dtype == dtype
    assert linear.weight.grad.dtype == dtype
    penalty = sdnn.DropoutPenalty(sd.Bernoulli(0.2))(linear.weight.detach(), x.detach())
    assert penalty.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_inplace_and_generators():
    for name, layer in _dropout_layers().items():
        x = torch.randn(4, 3, 6)
        first = layer(x, generator=seeded(1))
        assert torch.equal(first, layer(x, generator=seeded(1))), name
        assert not torch.equal(first, layer(x, generator=seeded(2))), name
        layer.inplace = True
        y = x.clone()
        assert layer(y, generator=seeded(1)) is y, name
        assert torch.equal(y, first), name
    torch.manual_seed(0)
    a = sdnn.BlockDropout(0.5, 2)(torch.ones(8, 8))
    torch.manual_seed(0)
    assert torch.equal(a, sdnn.BlockDropout(0.5, 2)(torch.ones(8, 8)))


def test_torch_compile_of_block_dropout():
    layer = sdnn.BlockDropout(0.5, 3)
    compiled = torch.compile(layer, backend="eager", fullgraph=False)
    x = torch.randn(8, 12)
    out = compiled(x)
    ratio = (out / x).reshape(8, 4, 3)
    assert bool((ratio == ratio[..., :1]).all())
    assert set(torch.unique(ratio).tolist()) <= {0.0, 2.0}
    assert compiled.eval()(x) is x or torch.equal(compiled.eval()(x), x)


def test_torch_fx_traces_each_layer():
    model = nn.Sequential(
        nn.Linear(6, 12),
        sdnn.BlockDropout(0.3, 3),
        sdnn.StructuredDropout(sd.GridBlock(0.2, 2)),
        sdnn.StructuredDropout(discrete_wide()),
        sdnn.DropConnectLinear(12, 9, 0.2, per_sample=True),
        nn.Unflatten(1, (1, 9)),
        sdnn.DropBlock1d(0.2, 3),
        nn.Unflatten(2, (3, 3)),
        sdnn.DropBlock2d(0.2, 2),
        nn.Unflatten(3, (1, 3)),
        sdnn.DropBlock3d(0.2, 2),
    )
    traced = torch.fx.symbolic_trace(model)
    # Each layer is one call_module node: the graph calls the layer, whose training flag,
    # options and generator stay live.
    calls = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    assert calls == {str(i) for i in range(len(model))}
    x = torch.randn(5, 6)
    torch.manual_seed(3)
    eager = model(x)
    torch.manual_seed(3)
    assert torch.equal(traced(x), eager)
    traced.eval()
    model.eval()
    assert torch.equal(traced(x), model(x))

    # A layer traced on its own, and the functional forms called in a module's forward, are
    # single call_function nodes.
    for layer, function in (
        (sdnn.BlockDropout(0.3, 2), F.block_dropout),
        (sdnn.StructuredDropout(sd.GridBlock(0.2, 2)), F.structured_dropout),
        (sdnn.DropConnectLinear(6, 4, 0.2), F.dropconnect_linear),
        (sdnn.DropBlock1d(0.2, 3), sdnn.dropblock.drop_block_masked),
    ):
        graph = torch.fx.symbolic_trace(layer).graph
        functions = [node.target for node in graph.nodes if node.op == "call_function"]
        assert functions[-1] is function, layer

    class Functional(nn.Module):
        def forward(self, x):
            return F.block_dropout(x, 0.5, 3, dim=1, training=self.training)

    traced = torch.fx.symbolic_trace(Functional())
    torch.manual_seed(4)
    out = traced(x)
    torch.manual_seed(4)
    assert torch.equal(out, F.block_dropout(x, 0.5, 3, dim=1))

    class WithPenalty(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(6, 2)
            self.penalty = sdnn.DropoutPenalty(sd.GridBlock(0.2, 2))

        def forward(self, x):
            return self.head(x), self.penalty(self.head.weight, x)

    module = WithPenalty()
    traced = torch.fx.symbolic_trace(module)
    for got, want in zip(traced(x), module(x), strict=True):
        torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck, masks fixed by reseeding the generator at every call)
# --------------------------------------------------------------------------------------------


def test_gradcheck_of_every_layer():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    checks = {
        "block_dropout": (lambda x: F.block_dropout(x, 0.4, 2, generator=seeded(0)), (x,)),
        "structured_dropout": (
            lambda x: F.structured_dropout(x, sd.SlidingBlock(0.4, 3), generator=seeded(0)),
            (x,),
        ),
        "dropconnect_shared": (
            lambda x, w, b: F.dropconnect_linear(x, w, b, 0.4, generator=seeded(0)),
            (x, w, b),
        ),
        "dropconnect_per_sample": (
            lambda x, w, b: F.dropconnect_linear(
                x, w, b, 0.4, per_sample=True, chunk_size=2, generator=seeded(0)
            ),
            (x, w, b),
        ),
        "penalty": (lambda w, x: sdnn.DropoutPenalty(sd.GridBlock(0.3, 2))(w, x), (w, x)),
        "penalty_sliding": (
            lambda w, x: sdnn.DropoutPenalty(sd.SlidingBlock(0.3, 3, "clipped"))(w, x),
            (w, x),
        ),
    }
    for name, (function, inputs) in checks.items():
        assert torch.autograd.gradcheck(function, inputs), name


# --------------------------------------------------------------------------------------------
# Public names
# --------------------------------------------------------------------------------------------


def test_public_names():
    assert set(sdnn.__all__) >= {
        "BlockDropout",
        "DropBlock1d",
        "DropBlock2d",
        "DropBlock3d",
        "DropConnectLinear",
        "DropRateSchedule",
        "DropoutPenalty",
        "StructuredDropout",
        "functional",
    }
    for name in (
        "block_dropout",
        "dropconnect_linear",
        "structured_dropout",
        "sample_masks",
        "drop_block",
        "drop_block1d",
        "drop_block2d",
        "drop_block3d",
        "drop_block_keep_prob",
        "window_drop_prob",
    ):
        assert callable(getattr(F, name)), name
