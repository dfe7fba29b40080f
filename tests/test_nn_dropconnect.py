"""DropConnectLinear and dropconnect_linear: exact against a reference loop with the same masks
(the paper's eq. 19), unbiased, per-sample masks in chunks of bounded memory.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nn_oracles import Z, seeded
from structdrop import nn as sdnn
from structdrop.nn import _dropconnect
from structdrop.nn import functional as F

# --------------------------------------------------------------------------------------------
# Exact against a reference loop with the same masks
# --------------------------------------------------------------------------------------------


@pytest.fixture
def recorded_masks(monkeypatch):
    """Every mask drawn for DropConnect (shared, and per sample in chunks), in order."""
    masks = []
    original = F.keep_mask

    def recording(*args, **kwargs):
        mask = original(*args, **kwargs)
        masks.append(mask.clone())
        return mask

    monkeypatch.setattr(F, "keep_mask", recording)
    monkeypatch.setattr(_dropconnect, "keep_mask", recording)
    return masks


def _linear_problem(n=(2, 5), in_f=4, out_f=3, seed=0):
    g = seeded(seed)
    x = torch.randn(*n, in_f, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(out_f, in_f, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(out_f, dtype=torch.float64, generator=g, requires_grad=True)
    return x, w, b


def _grads(output, inputs, seed=9):
    weights = torch.randn(output.shape, dtype=output.dtype, generator=seeded(seed))
    return torch.autograd.grad((output * weights).sum(), inputs)


def test_dropconnect_shared_mask_matches_reference(recorded_masks):
    x, w, b = _linear_problem()
    p = 0.4
    out = F.dropconnect_linear(x, w, b, p, generator=seeded(1))
    assert len(recorded_masks) == 1
    mask = recorded_masks[0]
    assert mask.shape == w.shape
    reference = x @ (w * mask / (1 - p)).T + b
    torch.testing.assert_close(out, reference, rtol=1e-14, atol=1e-14)
    for got, want in zip(_grads(out, (x, w, b)), _grads(reference, (x, w, b)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 10, 100])
def test_dropconnect_per_sample_matches_reference_loop(recorded_masks, chunk_size):
    x, w, b = _linear_problem(n=(2, 5))
    p = 0.3
    out = F.dropconnect_linear(
        x, w, b, p, per_sample=True, generator=seeded(2), chunk_size=chunk_size
    )
    assert out.shape == (2, 5, 3)
    forward_masks = torch.cat(list(recorded_masks))
    assert forward_masks.shape == (10, 3, 4)
    rows = [x.reshape(10, 4)[i] @ (w * forward_masks[i] / (1 - p)).T + b for i in range(10)]
    reference = torch.stack(rows).reshape(2, 5, 3)
    torch.testing.assert_close(out, reference, rtol=1e-14, atol=1e-14)
    count = len(recorded_masks)
    got = _grads(out, (x, w, b))
    # The backward pass regenerates exactly the forward pass's masks, chunk by chunk.
    assert torch.equal(torch.cat(recorded_masks[count:]), forward_masks)
    for g, want in zip(got, _grads(reference, (x, w, b)), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-13, atol=1e-13)


def test_dropconnect_per_sample_memory_is_bounded(recorded_masks, monkeypatch):
    # Default chunks hold at most DROPCONNECT_CHUNK_ELEMENTS mask entries.
    monkeypatch.setattr(F, "DROPCONNECT_CHUNK_ELEMENTS", 50)
    x = torch.randn(11, 4)
    w = torch.randn(3, 4, requires_grad=True)
    F.dropconnect_linear(x, w, None, 0.5, per_sample=True).sum().backward()
    sizes = [m.shape[0] for m in recorded_masks]
    assert sizes == [4, 4, 3, 4, 4, 3]  # forward, then the same chunks in backward
    assert all(m.numel() <= 50 for m in recorded_masks)
    assert F.DROPCONNECT_CHUNK_ELEMENTS == 50
    monkeypatch.undo()
    assert F.DROPCONNECT_CHUNK_ELEMENTS == 2**22


def test_dropconnect_output_is_unbiased_and_per_sample_masks_differ():
    # Each of 20000 rows gets its own mask: the row outputs are iid with mean W x + b and
    # variance p/(1-p) sum_i W_oi^2 x_i^2 (exact). 3 statistics at Z: false failures < 2e-6.
    p = 0.35
    layer = sdnn.DropConnectLinear(
        5, 3, p, per_sample=True, generator=seeded(3), dtype=torch.float64
    )
    x = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x.expand(20000, 5))
    mean = layer.weight @ x + layer.bias
    var = p / (1 - p) * (layer.weight**2 @ x**2)
    assert bool(((out.mean(0) - mean).abs() <= Z * (var / 20000).sqrt()).all())
    assert torch.unique(out, dim=0).shape[0] > 1000
    shared = sdnn.DropConnectLinear(5, 3, p, generator=seeded(3))
    rows = shared(torch.ones(4, 5))
    assert bool((rows == rows[0]).all())  # one mask per forward


def test_dropconnect_linear_conventions():
    layer = sdnn.DropConnectLinear(4, 3, 0.5)
    x = torch.randn(2, 4)
    assert isinstance(layer, nn.Linear)
    torch.testing.assert_close(
        layer.eval()(x), torch.nn.functional.linear(x, layer.weight, layer.bias)
    )
    zero = sdnn.DropConnectLinear(4, 3, 0.0).train()
    torch.testing.assert_close(zero(x), torch.nn.functional.linear(x, zero.weight, zero.bias))
    assert zero.bias is not None
    assert sdnn.DropConnectLinear(4, 3, 0.1, bias=False).bias is None
    assert repr(sdnn.DropConnectLinear(4, 3, 0.1, per_sample=True)) == (
        "DropConnectLinear(in_features=4, out_features=3, bias=True, p=0.1, per_sample=True)"
    )
    layer.train()
    first = layer(x, generator=seeded(4))
    assert torch.equal(first, layer(x, generator=seeded(4)))
    assert not torch.equal(first, layer(x, generator=seeded(5)))
    one = sdnn.DropConnectLinear(4, 3, 0.5, per_sample=True)(torch.randn(4))
    assert one.shape == (3,)


def test_dropconnect_rejects_bad_inputs():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="in_features=4"):
        F.dropconnect_linear(torch.randn(2, 5), w, None, 0.1)
    with pytest.raises(ValueError, match="weight must be a 2-D"):
        F.dropconnect_linear(torch.randn(2, 4), torch.randn(4), None, 0.1)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        F.dropconnect_linear(torch.randn(2, 4), w, torch.randn(4), 0.1)
    with pytest.raises(ValueError, match="p must be in"):
        sdnn.DropConnectLinear(4, 3, 1.5)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        sdnn.DropConnectLinear(4, 3, 0.5, chunk_size=0)
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        sdnn.DropConnectLinear(0, 3, 0.5)
