"""The DropBlock operator ``torch.ops.structdrop.drop_block``: a backward pass uses the rate of
its forward pass, and the operator refuses arguments that it cannot honour.

A layer keeps its rate in a tensor that ``p = ...`` and :class:`DropRateSchedule` write in place
(compiled code reads it, so a new rate does not recompile). A forward pass takes a copy of it:
changing the rate before the backward pass (a schedule stepped between the two, or inside the
model's ``forward``) leaves the gradient that of the forward's mask. Inputs are all ones, so a
forward's output is its mask (zeros and the scales ``1 / mu``) and the gradient of the sum of
the outputs is the sum of the masks, exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from structdrop import nn as sdnn
from structdrop.nn.functional import drop_block_keep_prob, window_drop_prob

SHAPE = (2, 3, 8, 8)


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _ones() -> torch.Tensor:
    return torch.ones(SHAPE, requires_grad=True)


def _assert_masks(
    *outputs: torch.Tensor, rates: tuple[float, ...], boundary: str = "valid"
) -> None:
    """Each output is a mask of DropBlock2d(rate, 3, boundary=boundary) on SHAPE: zeros, and
    1 / mu at that rate where kept."""
    for out, rate in zip(outputs, rates, strict=True):
        gamma = window_drop_prob(rate, 3, SHAPE[2:], boundary)
        inverse = (1.0 / drop_block_keep_prob(SHAPE[2:], 3, boundary, gamma)).float()
        kept = out != 0
        assert kept.any() and not kept.all()
        assert torch.equal(out[kept], inverse.expand(SHAPE)[kept])


# ----------------------------------------------------------------------------------------------
# The rate of a backward pass is its forward's


def _set_p(layer: sdnn.DropBlock2d, schedule: sdnn.DropRateSchedule) -> None:
    layer.p = 0.6


def _step(layer: sdnn.DropBlock2d, schedule: sdnn.DropRateSchedule) -> None:
    schedule.step()


@pytest.mark.parametrize("change", [_set_p, _step], ids=["set-p", "schedule-step"])
def test_a_new_rate_before_the_backward_leaves_the_forwards_mask(change):
    layer = sdnn.DropBlock2d(0.3, 3)
    schedule = sdnn.DropRateSchedule(layer, stop=0.6, steps=1, start=0.3)
    x = _ones()
    y = layer(x)
    change(layer, schedule)
    assert layer.p == pytest.approx(0.6)
    y.sum().backward()
    _assert_masks(y.detach(), rates=(0.3,))
    assert torch.equal(x.grad, y.detach())  # d(x * mask)/dx: the forward's mask, at p = 0.3


def test_an_eager_backward_keeps_the_dropped_windows_not_a_mask():
    """On a CPU the forward keeps the positions of the windows it dropped (int64, a few per
    cent of the candidates) and the backward rebuilds the mask from them; the dense sampler
    keeps only its seed."""
    x = torch.ones(32, 64, 14, 14, requires_grad=True)
    y = sdnn.DropBlock2d(0.1, 7)(x)
    _, positions = y.grad_fn.kept
    assert positions.dtype == torch.int64 and positions.ndim == 1 and positions.numel() > 0
    # expected 0.45 % of the input's bytes (gamma x candidates x 8 bytes); an input-sized mask
    # of any dtype would be >= 25 %
    assert positions.numel() * positions.element_size() < 0.01 * x.numel() * x.element_size()
    grad = torch.randn_like(x)
    y.backward(grad)
    assert torch.equal(x.grad, grad * y.detach())  # the forward's mask (ones in: y is it)
    dense = sdnn.DropBlock2d(0.1, 7, method="dense")(x)
    assert dense.grad_fn.kept is None


class _SteppedInForward(nn.Module):
    """The ``dropblock`` package's pattern: a scheduler that steps in the model's forward."""

    def __init__(self) -> None:
        super().__init__()
        dropblock = pytest.importorskip("dropblock")
        layer = dropblock.DropBlock2D(drop_prob=0.0, block_size=3)
        self.drop = dropblock.LinearScheduler(layer, start_value=0.2, stop_value=0.5, nr_steps=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.drop.step()
        return self.drop(x)


def test_a_converted_scheduler_stepping_in_forward_keeps_each_forwards_mask():
    model = sdnn.convert_dropblock(_SteppedInForward())
    assert isinstance(model.drop.dropblock, sdnn.DropBlock2d)
    x = torch.ones(SHAPE, requires_grad=True)
    first, second = model(x), model(x)  # at drop_prob 0.2, then 0.3
    (first + second).sum().backward()
    masks = first.detach(), second.detach()
    _assert_masks(*masks, rates=(0.2, 0.3), boundary="clipped")
    assert torch.equal(x.grad, masks[0] + masks[1])


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_backward_uses_the_forwards_rate_and_a_new_rate_does_not_recompile(backend):
    # inductor removes a plain copy of an input (a no-op to it): the copy must survive it
    layer = sdnn.DropBlock2d(0.3, 3)
    schedule = sdnn.DropRateSchedule(layer, stop=0.4, steps=1, start=0.3)
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    x = _ones()
    first = compiled(x)
    schedule.step()
    second = compiled(x)
    layer.p = 0.6
    (first + second).sum().backward()
    masks = first.detach(), second.detach()
    _assert_masks(*masks, rates=(0.3, 0.4))
    assert torch.equal(x.grad, masks[0] + masks[1])
    assert counters["stats"]["unique_graphs"] == 1


# ----------------------------------------------------------------------------------------------
# The operator's argument checks (the kernel, and the fake implementation on meta inputs)

GOOD = {
    "block_size": [3, 3],
    "boundary": "valid",
    "gamma_rule": "mean",
    "gamma_value": 0.0,
    "scale": "expected",
    "eps": 1e-6,
    "shared_channels": False,
    "batchwise": False,
    "method": "auto",
}


def _call(
    input: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    p: torch.Tensor | None = None,
    **changes,
) -> torch.Tensor:
    input = torch.randn(SHAPE) if input is None else input
    seed = torch.tensor(7) if seed is None else seed
    p = torch.tensor([0.3], dtype=torch.float64) if p is None else p
    return torch.ops.structdrop.drop_block(input, seed, p, **{**GOOD, **changes})


STATIC = [
    ({"boundary": "bogus"}, "boundary must be one of .*, got 'bogus'"),
    ({"boundary": "ring"}, "boundary must be one of .*, got 'ring'"),
    ({"gamma_rule": "bogus"}, "gamma_rule must be one of .*, got 'bogus'"),
    ({"gamma_rule": "value", "gamma_value": 1.0}, r"gamma_value must be in \[0, 1\), got 1.0"),
    ({"gamma_rule": "value", "gamma_value": -0.1}, r"gamma_value must be in \[0, 1\), got -0.1"),
    ({"gamma_rule": "value", "gamma_value": math.nan}, r"gamma_value must be in \[0, 1\), got nan"),
    ({"scale": "bogus"}, "scale must be one of .*, got 'bogus'"),
    ({"method": "bogus"}, "method must be one of .*, got 'bogus'"),
    ({"eps": -1.0}, "eps must be a finite number >= 0, got -1.0"),
    ({"eps": math.nan}, "eps must be a finite number >= 0, got nan"),
    ({"block_size": [0, 0]}, "block_size must be >= 1, got 0"),
    ({"block_size": [3, -2]}, "block_size must be >= 1, got -2"),
    ({"block_size": [3]}, r"block_size must be .* 2 ints .*, got \(3,\)"),
    ({"block_size": [3, 3, 3]}, r"block_size must be .* 2 ints .*, got \(3, 3, 3\)"),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize(
    ("changes", "match"),
    STATIC,
    ids=[",".join(f"{k}={v}" for k, v in changes.items()) for changes, _ in STATIC],
)
def test_the_operator_refuses_bad_options(changes, match, device):
    with pytest.raises(ValueError, match=match):
        _call(torch.randn(SHAPE, device=device), **changes)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_the_operator_refuses_inputs_that_are_not_floating_feature_maps(device):
    with pytest.raises(TypeError, match="input must be a floating point tensor, got dtype"):
        _call(torch.ones(SHAPE, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match=r"at least one spatial axis .*, got shape \(2, 3\)"):
        _call(torch.randn(2, 3, device=device), block_size=[])


@pytest.mark.parametrize("rate", [math.nan, -0.5, 1.5, math.inf])
def test_the_operator_refuses_a_rate_outside_zero_one(rate):
    with pytest.raises(ValueError, match=rf"p must be in \[0, 1\], got {rate}"):
        _call(p=torch.tensor([rate], dtype=torch.float64))


SCALARS = {
    "p-float32": ("p", torch.tensor([0.3]), TypeError, "p must be a torch.float64 tensor, got"),
    "p-float16": ("p", torch.tensor(0.3, dtype=torch.float16), TypeError, "p must be a torch.f"),
    "p-two": ("p", torch.full((2,), 0.3, dtype=torch.float64), ValueError, r"got shape \(2,\)"),
    "p-meta": ("p", torch.tensor([0.3], dtype=torch.float64, device="meta"), ValueError, "CPU"),
    "seed-float": ("seed", torch.tensor(7.0), TypeError, "seed must be a torch.int64 tensor, got"),
    "seed-int32": ("seed", torch.tensor(7, dtype=torch.int32), TypeError, "seed must be a torch"),
    "seed-1d": ("seed", torch.tensor([7]), ValueError, r"seed must be a 0-d .*, got shape \(1,\)"),
    "seed-meta": ("seed", torch.tensor(7, device="meta"), ValueError, "seed must be a CPU tensor"),
}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize(
    ("name", "value", "error", "match"), list(SCALARS.values()), ids=list(SCALARS)
)
def test_the_operator_refuses_a_bad_seed_or_rate_tensor(name, value, error, match, device):
    # a meta seed or rate with a CPU input reaches the fake implementation: refused there too
    with pytest.raises(error, match=match):
        _call(torch.randn(SHAPE, device=device), **{name: value})


def test_the_operator_takes_what_the_layers_give():
    x = torch.randn(SHAPE)
    assert torch.equal(_call(x, p=torch.tensor([0.0], dtype=torch.float64)), x)
    assert torch.equal(_call(x, p=torch.tensor([1.0], dtype=torch.float64)), x * 0.0)
    out = _call(x, gamma_rule="value", gamma_value=0.1, block_size=[1, 4], method="dense")
    assert out.shape == SHAPE and (out == 0).any()
    meta = _call(torch.empty(SHAPE, device="meta"), gamma_rule="interior", gamma_value=5.0)
    assert meta.is_meta and meta.shape == SHAPE  # gamma_value is read only for rule "value"
    seeded = [_call(x, seed=torch.tensor(3), method=m) for m in ("sparse", "sparse")]
    assert torch.equal(*seeded)
