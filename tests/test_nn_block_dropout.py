"""BlockDropout and block_dropout: the law of GridBlock(p, r) on any axis (Lemma 2.1).

Monte Carlo checks use z-bounds with the exact variance of each statistic (see
``nn_oracles.py``); all use fixed seeds, so outcomes are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import structdrop as sd
from nn_oracles import Z, assert_mask_law, seeded
from structdrop import nn as sdnn
from structdrop.nn import functional as F


@pytest.mark.parametrize(("p", "r", "d"), [(0.3, 2, 6), (0.5, 3, 6), (0.1, 1, 4), (0.6, 4, 4)])
def test_block_dropout_law_is_grid_block(p, r, d):
    # d + d(d+1)/2 <= 27 statistics at Z (n = 20000): false failures below 2e-5 per case.
    layer = sdnn.BlockDropout(p, r, generator=seeded(4))
    z = layer(torch.ones(20000, d)) * (1.0 - p)
    assert bool(((z == 0) | ((z - 1).abs() < 1e-6)).all())
    assert_mask_law(z, sd.GridBlock(p, r))


def test_block_dropout_on_an_inner_axis_has_independent_masks_elsewhere():
    # Masks on dim=1 of (n, 6, 2): for each of the 2 trailing indices the law is
    # GridBlock(0.4, 3) (27 statistics each), and masks at different trailing indices are
    # independent: their cross-covariances (36 more) are 0. 90 statistics at Z: < 6e-5.
    p, r = 0.4, 3
    layer = sdnn.BlockDropout(p, r, dim=1, generator=seeded(5))
    z = layer(torch.ones(20000, 6, 2, dtype=torch.float64)) * (1.0 - p)
    for k in range(2):
        assert_mask_law(z[:, :, k], sd.GridBlock(p, r))
    a, b = z[:, :, 0] - (1 - p), z[:, :, 1] - (1 - p)
    cross = (a.T @ b / z.shape[0]).numpy()
    se = math.sqrt(p * (1 - p) * p * (1 - p) / z.shape[0])  # Var(product) of independent units
    assert np.abs(cross).max() <= Z * se


def test_block_dropout_draws_one_number_per_block(monkeypatch):
    shapes = []
    original = F.keep_mask

    def recording(shape, *args, **kwargs):
        shapes.append(tuple(shape))
        return original(shape, *args, **kwargs)

    monkeypatch.setattr(F, "keep_mask", recording)
    x = torch.randn(3, 12, 5)
    out = F.block_dropout(x, 0.5, 4, dim=1, generator=seeded(0))
    assert shapes == [(3, 3, 1, 5)]
    blocks = (out / x).reshape(3, 3, 4, 5)
    assert bool((blocks == blocks[:, :, :1]).all())  # every block kept or dropped whole


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
    p=st.floats(0.0, 0.9),
)
def test_block_dropout_keeps_or_drops_whole_blocks(shape, data, p):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    r = data.draw(st.integers(1, 3))
    shape[dim] *= r
    x = torch.rand(shape, dtype=torch.float64) + 0.5
    out = F.block_dropout(x, p, r, dim=dim, generator=seeded(0))
    assert out.shape == x.shape
    ratio = (out / x).movedim(dim, -1).reshape(-1, r)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12, atol=0)
    assert bool(
        (
            (ratio == 0) | torch.isclose(ratio, torch.tensor(1.0 / (1.0 - p), dtype=torch.float64))
        ).all()
    )


def test_block_dropout_conventions():
    x = torch.randn(4, 6)
    assert sdnn.BlockDropout(0.0, 3)(x) is x
    assert sdnn.BlockDropout(0.5, 3).eval()(x) is x
    assert repr(sdnn.BlockDropout(0.1, 5)) == "BlockDropout(p=0.1, block_size=5, dim=-1)"
    assert "inplace=True" in repr(sdnn.BlockDropout(0.1, 5, inplace=True))
    # inplace, also on a non-contiguous input
    y = x.clone()
    out = sdnn.BlockDropout(0.5, 3, inplace=True)(y, generator=seeded(1))
    assert out is y
    assert torch.equal(y, sdnn.BlockDropout(0.5, 3)(x, generator=seeded(1)))
    t = torch.randn(6, 4).T
    expected = F.block_dropout(t, 0.5, 3, generator=seeded(2))
    assert F.block_dropout(t, 0.5, 3, inplace=True, generator=seeded(2)) is t
    assert torch.equal(t, expected)


def test_block_dropout_rejects_bad_inputs():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        sdnn.BlockDropout(1.5, 2)
    with pytest.raises(ValueError, match="p must be in"):
        F.block_dropout(x, -0.1, 2)
    with pytest.raises(TypeError, match="p must be a real number"):
        sdnn.BlockDropout("0.1", 2)
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        sdnn.BlockDropout(0.1, 0)
    with pytest.raises(TypeError, match="block_size must be an integer"):
        sdnn.BlockDropout(0.1, 1.5)
    with pytest.raises(ValueError, match=r"block_size must divide input.shape\[dim\]"):
        sdnn.BlockDropout(0.1, 4)(x)
    with pytest.raises(ValueError, match="dim must be in"):
        F.block_dropout(x, 0.1, 2, dim=2)
    with pytest.raises(ValueError, match="dim must be in"):
        F.block_dropout(torch.tensor(1.0), 0.1, 1)
    with pytest.raises(TypeError, match="dim must be an integer"):
        sdnn.BlockDropout(0.1, 2, dim=1.0)
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        F.block_dropout(np.ones((2, 2)), 0.1, 2)
    with pytest.raises(TypeError, match="floating-point"):
        F.block_dropout(torch.ones(2, 2, dtype=torch.int32), 0.1, 2)
    with pytest.raises(TypeError, match="generator"):
        sdnn.BlockDropout(0.1, 2, generator=3)
