"""PyTorch layers: mask laws against the schemes' exact moments, unbiasedness, exactness of
per-sample DropConnect, the penalty form of the objective, torch.nn conventions, input checks.

Monte Carlo checks use z-bounds with the exact variance of each statistic (from the scheme's
law, not estimated), so the only approximation is the CLT at tens of thousands of samples. Each
test states its false-failure probability; all use fixed seeds, so outcomes are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import structdrop as sd
from structdrop import nn as sdnn
from structdrop.nn import functional as F
from structdrop.nn import modules as sdmodules

# A z-bound of 5 standard errors: P(|N(0,1)| > 5) = 5.7e-7 per statistic.
Z = 5.0
P_TWO_SIDED = 5.7e-7


def _discrete() -> sd.Discrete:
    """A real-valued, correlated finite law on 4 units."""
    masks = np.array(
        [[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 2.0]]
    )
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    return sd.Discrete(masks, probs)


SCHEMES = [
    ("bernoulli", sd.Bernoulli(0.3), 6),
    ("dropconnect", sd.DropConnect(0.45), 5),
    ("grid", sd.GridBlock(0.4, 2), 6),
    ("grid-r3", sd.GridBlock(0.25, 3), 6),
    ("sliding-valid", sd.SlidingBlock(0.3, 3, boundary="valid"), 6),
    ("sliding-clipped", sd.SlidingBlock(0.3, 2, boundary="clipped"), 6),
    ("sliding-ring", sd.SlidingBlock(0.3, 3, boundary="ring"), 6),
    ("sliding-gamma", sd.SlidingBlock(0.3, 4, boundary="valid", gamma=0.2), 5),
    ("sliding-wide", sd.SlidingBlock(0.3, 7, boundary="clipped"), 5),
    ("discrete", _discrete(), 4),
]
SCHEME_IDS = [case[0] for case in SCHEMES]


def _pair_law(scheme: sd.Scheme, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``E[z_i]`` and ``Var((z_i - mu_i)(z_j - mu_j))`` for every pair (i, j).

    For 0/1 masks the law of a pair is fixed by ``mu_i, mu_j`` and ``m_ij = E[z_i z_j]``; for a
    Discrete law the masks are enumerated.
    """
    mu = np.asarray(scheme.mean(d))
    cov = np.asarray(scheme.covariance(d))
    if isinstance(scheme, sd.Discrete):
        centred = scheme.masks - mu
        products = centred[:, :, None] * centred[:, None, :]
        fourth = np.einsum("k,kij->ij", scheme.probs, products**2)
        return mu, fourth - cov**2
    m = np.asarray(scheme.second_moment(d))
    mi, mj = mu[:, None], mu[None, :]
    cells = {  # P(z_i = s, z_j = t)
        (1, 1): m,
        (1, 0): mi - m,
        (0, 1): mj - m,
        (0, 0): 1.0 - mi - mj + m,
    }
    fourth = sum(prob * ((s - mi) * (t - mj)) ** 2 for (s, t), prob in cells.items())
    return mu, fourth - cov**2


def assert_mask_law(z: torch.Tensor, scheme: sd.Scheme) -> int:
    """Per-unit means and all covariances of the rows of ``z`` within Z standard errors of the
    scheme's exact moments (covariances centred at the exact mean, so the estimator is unbiased
    with exactly the variance from :func:`_pair_law`). Returns the number of statistics."""
    z = z.detach().double().cpu().numpy()
    n, d = z.shape
    mu, pair_var = _pair_law(scheme, d)
    cov = np.asarray(scheme.covariance(d))
    unit_se = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(z.mean(0) - mu), Z * unit_se + 1e-12)
    centred = z - mu
    got_cov = centred.T @ centred / n
    cov_se = np.sqrt(np.clip(pair_var, 0.0, None) / n)
    np.testing.assert_array_less(np.abs(got_cov - cov), Z * cov_se + 1e-12)
    return d + d * (d + 1) // 2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# sample_masks and StructuredDropout: the law of every scheme
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scheme", "d"), SCHEMES, ids=SCHEME_IDS)
def test_sample_masks_follow_the_scheme_law(name, scheme, d):
    # Up to d + d(d+1)/2 = 27 statistics per scheme, each failing with prob 5.7e-7 under the
    # CLT at n = 20000: the false-failure probability is below 2e-5 per scheme, 2e-4 overall.
    z = F.sample_masks(scheme, (20000,), d, generator=seeded(1))
    assert z.shape == (20000, d)
    assert z.dtype == torch.float32
    count = assert_mask_law(z, scheme)
    assert count * P_TWO_SIDED < 2e-5


@pytest.mark.parametrize(("name", "scheme", "d"), SCHEMES, ids=SCHEME_IDS)
def test_structured_dropout_masks_follow_the_scheme_law_and_are_unbiased(name, scheme, d):
    # The output of an all-ones input is z / mu, so mu * output recovers the masks: their
    # moments are checked as above (false failures below 2e-5 per scheme). Then E[output] =
    # input for a random input: d more statistics at Z, with Var(out_i) = x_i^2 C_ii / mu_i^2.
    layer = sdnn.StructuredDropout(scheme, generator=seeded(2))
    mu = torch.as_tensor(scheme.mean(d), dtype=torch.float64)
    out = layer(torch.ones(10000, 2, d, dtype=torch.float64))
    assert out.shape == (10000, 2, d)
    assert_mask_law((out * mu).reshape(-1, d), scheme)

    x = torch.linspace(-2.0, 3.0, d, dtype=torch.float64)
    out = layer(x.expand(20000, d).clone())
    var = x**2 * torch.from_numpy(np.diag(scheme.covariance(d)).copy()) / mu**2
    err = (out.mean(0) - x).abs()
    assert bool((err <= Z * (var / 20000).sqrt() + 1e-12).all())


def test_sample_masks_shapes_dtypes_and_reproducibility():
    grid = sd.GridBlock(0.5, 2)
    z = F.sample_masks(grid, (3, 4), 6, dtype=torch.float64, generator=seeded(0))
    assert z.shape == (3, 4, 6)
    assert z.dtype == torch.float64
    blocks = z.reshape(3, 4, 3, 2)
    assert torch.equal(blocks[..., 0], blocks[..., 1])  # whole blocks
    assert torch.equal(z, F.sample_masks(grid, (3, 4), 6, dtype=torch.float64, generator=seeded(0)))
    assert F.sample_masks(grid, 5, 4).shape == (5, 4)
    assert F.sample_masks(grid, (), 4).shape == (4,)
    for _, scheme, d in SCHEMES:
        empty = F.sample_masks(scheme, (0, 3), d)
        assert empty.shape == (0, 3, d)
        one = F.sample_masks(scheme, (2,), d, generator=seeded(5))
        assert torch.equal(one, F.sample_masks(scheme, (2,), d, generator=seeded(5)))


def test_sample_masks_of_a_scheme_defined_elsewhere_use_its_sampler():
    class Halves(sd.Scheme):
        keep_prob = 0.5

        def mean(self, d):
            return np.full(d, 0.5)

        def second_moment(self, d):
            return np.full((d, d), 0.5)

        def _sample(self, n, d, rng):
            return np.repeat((rng.random((n, 1)) < 0.5).astype(float), d, axis=1)

    z = F.sample_masks(Halves(), (2000,), 3, generator=seeded(3))
    assert torch.equal(z, F.sample_masks(Halves(), (2000,), 3, generator=seeded(3)))
    assert bool((z[:, :1] == z).all())
    # 3 + 6 statistics at Z: false failures below 1e-5.
    assert_mask_law(z, Halves())


def test_sample_masks_rejects_bad_arguments():
    with pytest.raises(TypeError, match="scheme"):
        F.sample_masks("dropout", (2,), 4)
    with pytest.raises(ValueError, match="block_size must divide"):
        F.sample_masks(sd.GridBlock(0.1, 3), (2,), 4)
    with pytest.raises(ValueError, match="d must equal"):
        F.sample_masks(_discrete(), (2,), 5)
    with pytest.raises(ValueError, match="d must be >= 1"):
        F.sample_masks(sd.Bernoulli(0.1), (2,), 0)
    with pytest.raises(ValueError, match="batch_shape"):
        F.sample_masks(sd.Bernoulli(0.1), (-1,), 3)
    with pytest.raises(TypeError, match="batch_shape"):
        F.sample_masks(sd.Bernoulli(0.1), "ab", 3)
    with pytest.raises(TypeError, match="generator"):
        F.sample_masks(sd.Bernoulli(0.1), (2,), 3, generator=0)
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        F.sample_masks(sd.Bernoulli(0.1), (2,), 3, dtype=torch.int64)


def test_structured_dropout_identities_and_checks():
    x = torch.randn(4, 6)
    assert sdnn.StructuredDropout(sd.Bernoulli(0.0))(x) is x
    assert sdnn.StructuredDropout(sd.SlidingBlock(0.0, 3))(x) is x
    assert sdnn.StructuredDropout(sd.Discrete(np.ones((2, 6)), np.array([0.5, 0.5])))(x) is x
    layer = sdnn.StructuredDropout(sd.GridBlock(0.5, 2)).eval()
    assert layer(x) is x
    assert F.structured_dropout(x, sd.Bernoulli(0.5), training=False) is x
    with pytest.raises(TypeError, match="scheme"):
        sdnn.StructuredDropout(0.5)
    with pytest.raises(ValueError, match="0-d"):
        F.structured_dropout(torch.tensor(1.0), sd.Bernoulli(0.5))
    with pytest.raises(TypeError, match="floating-point"):
        F.structured_dropout(torch.ones(3, 4, dtype=torch.long), sd.Bernoulli(0.5))
    with pytest.raises(ValueError, match="block_size must divide"):
        sdnn.StructuredDropout(sd.GridBlock(0.5, 4))(x)
    assert repr(sdnn.StructuredDropout(sd.Bernoulli(0.25))) == (
        "StructuredDropout(scheme=Bernoulli(p=0.25))"
    )


# --------------------------------------------------------------------------------------------
# BlockDropout: the law of GridBlock(p, r) on any axis
# --------------------------------------------------------------------------------------------


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
    original = F._keep_mask

    def recording(shape, *args, **kwargs):
        shapes.append(tuple(shape))
        return original(shape, *args, **kwargs)

    monkeypatch.setattr(F, "_keep_mask", recording)
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


# --------------------------------------------------------------------------------------------
# DropConnectLinear: exact against a reference loop with the same masks
# --------------------------------------------------------------------------------------------


@pytest.fixture
def recorded_masks(monkeypatch):
    """Every mask drawn by the functional module, in order."""
    masks = []
    original = F._keep_mask

    def recording(*args, **kwargs):
        mask = original(*args, **kwargs)
        masks.append(mask.clone())
        return mask

    monkeypatch.setattr(F, "_keep_mask", recording)
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
# DropoutPenalty: the expected objective of the masks
# --------------------------------------------------------------------------------------------


def test_dropout_penalty_equals_the_library_penalty_and_closed_forms():
    g = seeded(6)
    U = torch.randn(3, 6, dtype=torch.float64, generator=g)
    H = torch.randn(20, 6, dtype=torch.float64, generator=g)
    for scheme in (sd.Bernoulli(0.3), sd.GridBlock(0.3, 2), sd.SlidingBlock(0.2, 3)):
        got = sdnn.DropoutPenalty(scheme)(U, H)
        assert got.shape == ()
        torch.testing.assert_close(got, sd.penalty(U, H.T, scheme), rtol=1e-14, atol=0)
    ratio = 0.3 / 0.7
    # Cor. 3.2: p/(1-p) sum_i ||u_i||^2 ||g_i||^2
    dropout = ratio * ((U**2).sum(0) * (H**2).sum(0)).sum()
    torch.testing.assert_close(sdnn.DropoutPenalty(sd.Bernoulli(0.3))(U, H), dropout)
    # Lemma 2.1: p/(1-p) sum_blocks ||U_i G_i||_F^2
    blocks = sum(((U[:, i : i + 2] @ H[:, i : i + 2].T) ** 2).sum() for i in (0, 2, 4))
    torch.testing.assert_close(sdnn.DropoutPenalty(sd.GridBlock(0.3, 2))(U, H), ratio * blocks)
    assert repr(sdnn.DropoutPenalty(sd.Bernoulli(0.5))) == (
        "DropoutPenalty(scheme=Bernoulli(p=0.5))"
    )


@pytest.mark.parametrize(
    "scheme",
    [sd.GridBlock(0.4, 2), sd.SlidingBlock(0.3, 3, "clipped"), _discrete()],
    ids=["grid", "sliding", "discrete"],
)
def test_masked_loss_minus_fit_averages_to_the_penalty(scheme):
    # Thm 3.1: E ||Y - U (z/mu * G)||^2 = ||Y - U G||^2 + penalty. The masked loss of one row
    # is iid over 20000 rows; the sample mean is within Z estimated standard errors (CLT; the
    # estimate is within a few percent at this n): false failure about 6e-7 per scheme.
    d = scheme.mean(4).shape[0] if isinstance(scheme, sd.Discrete) else 4
    g = seeded(7)
    U = torch.randn(2, d, dtype=torch.float64, generator=g)
    h = torch.randn(d, dtype=torch.float64, generator=g)
    y = torch.randn(2, dtype=torch.float64, generator=g)
    n = 20000
    masked = sdnn.StructuredDropout(scheme, generator=seeded(8))(h.expand(n, d).clone())
    losses = ((masked @ U.T - y) ** 2).sum(1) - ((U @ h - y) ** 2).sum()
    exact = float(sdnn.DropoutPenalty(scheme)(U, h[None, :]))
    stderr = float(losses.std() / math.sqrt(n))
    assert abs(float(losses.mean()) - exact) <= Z * stderr


def test_dropout_penalty_rejects_bad_inputs():
    with pytest.raises(TypeError, match="scheme"):
        sdnn.DropoutPenalty("grid")
    penalty = sdnn.DropoutPenalty(sd.Bernoulli(0.5))
    with pytest.raises(ValueError, match="features must be a 2-D"):
        penalty(torch.randn(2, 3), torch.randn(3))
    with pytest.raises(TypeError, match=r"features must be a torch\.Tensor"):
        penalty(torch.randn(2, 3), [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="U's columns must match G's rows"):
        penalty(torch.randn(2, 3), torch.randn(5, 4))


# --------------------------------------------------------------------------------------------
# The penalty form reaches the masks' optimum, without gradient noise (the example's claim)
# --------------------------------------------------------------------------------------------


def _linear_data(b=10, a=8, n=200, rank=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((b, n))
    Y = rng.standard_normal((a, rank)) @ rng.standard_normal((rank, b)) @ X
    return X, Y + 0.5 * rng.standard_normal((a, n))


def _network(b, a, d, seed):
    torch.manual_seed(seed)
    return (
        nn.Linear(b, d, bias=False, dtype=torch.float64),
        nn.Linear(d, a, bias=False, dtype=torch.float64),
    )


def test_penalty_and_masks_reach_the_closed_form_optimum():
    # U V^T X with b=10, a=8, d=10, N=200 and GridBlock(0.3, 2). The oracle is the closed-form
    # global minimum F* (Thm 2.7 as corrected in NOTES.md). The penalty form (deterministic,
    # L-BFGS) reaches it to 1e-9; the mask form (SGD with masks, decaying Adam steps) comes
    # within 1 % (it stalls at a gap set by the gradient noise; measured 0.2 % at 3000 steps).
    b, a, d, r, p = 10, 8, 10, 2, 0.3
    scheme = sd.GridBlock(p, r)
    X_np, Y_np = _linear_data(b, a)
    X, Y = torch.tensor(X_np.T), torch.tensor(Y_np.T)
    optimum = sd.global_minimum(X_np, Y_np, scheme, d)

    def expected(first, last):
        U, V = last.weight.detach().numpy(), first.weight.detach().numpy().T
        return float(sd.expected_loss(Y_np, U, V, X_np, scheme))

    first, last = _network(b, a, d, seed=1)
    penalty = sdnn.DropoutPenalty(scheme)
    lbfgs = torch.optim.LBFGS(
        [first.weight, last.weight],
        max_iter=1000,
        history_size=50,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def objective():
        hidden = first(X)
        return ((last(hidden) - Y) ** 2).sum() + penalty(last.weight, hidden)

    def closure():
        lbfgs.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    for _ in range(3):
        lbfgs.step(closure)
    assert abs(expected(first, last) - optimum.value) <= 1e-9 * optimum.value
    # Balanced blocks at the optimum (Thm 2.5).
    norms = sd.block_norms(last.weight.detach().numpy(), first.weight.detach().numpy().T, X_np, r)
    np.testing.assert_allclose(norms, norms.mean(), rtol=1e-5)

    # Gradient noise at the optimum: the penalty gradient is deterministic and ~0; the masked
    # gradient is unbiased for it (each of the 180 coordinates' mean over 400 draws within Z
    # estimated standard errors: false failure about 1e-4) but has a large variance.
    params = [first.weight, last.weight]
    dropout = sdnn.BlockDropout(p, r, generator=seeded(2))
    draws = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(((last(dropout(first(X))) - Y) ** 2).sum(), params)
                ]
            )
            for _ in range(400)
        ]
    )
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(objective(), params)])
    again = torch.cat([g.flatten() for g in torch.autograd.grad(objective(), params)])
    assert torch.equal(exact, again)
    assert float(exact.norm()) <= 1e-4 * float(draws.std(0).norm())
    stderr = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((draws.mean(0) - exact).abs() <= Z * stderr).all())

    # The mask form: same optimum, up to the noise floor.
    first, last = _network(b, a, d, seed=1)
    adam = torch.optim.Adam([first.weight, last.weight], lr=0.02)
    decay = torch.optim.lr_scheduler.LambdaLR(adam, lambda t: 1.0 / (1.0 + t / 300))
    dropout = sdnn.StructuredDropout(scheme, generator=seeded(3))
    for _ in range(3000):
        adam.zero_grad()
        ((last(dropout(first(X))) - Y) ** 2).sum().backward()
        adam.step()
        decay.step()
    gap = (expected(first, last) - optimum.value) / optimum.value
    assert 0.0 <= gap <= 0.01


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
    assert (layer.p, layer.block_size, layer.placement, layer.gamma, layer.scale) == (
        0.1,
        3,
        "valid",
        "mean",
        "expected",
    )
    assert not (layer.shared_channels or layer.batchwise or layer.inplace)
    assert layer.generator is None
    expected = "p=0.1, block_size=3, placement='valid', gamma='mean', scale='expected'"
    assert repr(layer) == f"{cls.__name__}({expected})"
    flags = cls(
        0.2,
        2,
        placement="clipped",
        gamma=0.05,
        scale="batch",
        shared_channels=True,
        batchwise=True,
        inplace=True,
    )
    assert flags.extra_repr() == (
        "p=0.2, block_size=2, placement='clipped', gamma=0.05, scale='batch', "
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

    def recording(input, p, block_size, inplace, eps, training, **options):
        options.update(inplace=inplace, eps=eps, training=training)
        calls.append((input, p, block_size, options))
        return input

    monkeypatch.setattr(sdmodules, name, recording)
    gen, other = seeded(0), seeded(1)
    block = (2,) * len(shape[2:])
    layer = cls(
        0.25,
        block,
        placement="clipped",
        gamma="interior",
        scale="batch",
        shared_channels=True,
        batchwise=False,
        inplace=True,
        eps=0.5,
        method="dense",
        generator=gen,
    )
    x = torch.randn(shape)
    layer(x)
    layer.eval()(x, generator=other)
    options = {
        "placement": "clipped",
        "gamma": "interior",
        "scale": "batch",
        "shared_channels": True,
        "batchwise": False,
        "inplace": True,
        "eps": 0.5,
        "method": "dense",
    }
    assert calls[0][:3] == (x, 0.25, block)
    assert calls[0][3] == {**options, "training": True, "generator": gen}
    assert calls[1][3] == {**options, "training": False, "generator": other}


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
    with pytest.raises(ValueError, match="placement must be one of"):
        sdnn.DropBlock1d(0.1, 3, placement="same")
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
        sdnn.StructuredDropout(_discrete_wide()),
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
        (sdnn.DropBlock1d(0.2, 3), sdnn.functional.drop_block1d),
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


def _discrete_wide() -> sd.Discrete:
    masks = np.ones((2, 12))
    masks[0, :6] = 0.0
    return sd.Discrete(masks, np.array([0.5, 0.5]))


# --------------------------------------------------------------------------------------------
# DropRateSchedule
# --------------------------------------------------------------------------------------------


def test_schedule_warms_up_every_layer_linearly_then_holds():
    layers = [sdnn.BlockDropout(0.5, 2), sdnn.DropBlock2d(0.5, 3), nn.Dropout(0.5)]
    schedule = sdnn.DropRateSchedule(layers, stop=0.2, steps=4, start=0.04)
    assert all(layer.p == 0.04 for layer in layers)  # step 0 sets start
    seen = [schedule.step() for _ in range(6)]
    np.testing.assert_allclose(seen, [0.08, 0.12, 0.16, 0.2, 0.2, 0.2], rtol=1e-12)
    assert all(layer.p == pytest.approx(0.2) for layer in layers)
    assert schedule.p == pytest.approx(0.2)
    assert schedule.last_step == 6


def test_schedule_finds_the_layers_of_a_model_and_applies_them():
    model = nn.Sequential(
        nn.Linear(4, 4),
        sdnn.BlockDropout(0.0, 2),
        nn.Dropout(0.0),
        sdnn.StructuredDropout(sd.Bernoulli(0.1)),
    )
    schedule = sdnn.DropRateSchedule(model, stop=0.5, steps=2)
    assert len(schedule.layers) == 2
    schedule.step()
    assert model[1].p == 0.25
    assert model[2].p == 0.25
    x = torch.ones(1000, 4)
    assert bool((model[1](x) == 0).any())
    single = sdnn.BlockDropout(0.3, 2)
    assert sdnn.DropRateSchedule(single, 0.1, 3).layers == [single]


def test_schedule_state_dict_round_trip():
    layers = [sdnn.BlockDropout(0.0, 2), sdnn.BlockDropout(0.0, 4)]
    schedule = sdnn.DropRateSchedule(layers, stop=0.3, steps=10)
    for _ in range(3):
        schedule.step()
    state = schedule.state_dict()
    assert state == {"last_step": 3, "start": 0.0, "stop": 0.3, "steps": 10}
    fresh_layers = [sdnn.BlockDropout(0.0, 2), sdnn.BlockDropout(0.0, 4)]
    resumed = sdnn.DropRateSchedule(fresh_layers, stop=0.9, steps=1)
    resumed.load_state_dict(state)
    assert [layer.p for layer in fresh_layers] == pytest.approx([0.09, 0.09])
    assert resumed.step() == schedule.step()
    assert "last_step=4" in repr(resumed)


def test_schedule_rejects_bad_arguments():
    layer = sdnn.BlockDropout(0.0, 2)
    with pytest.raises(ValueError, match=r"stop must be in \[0, 1\), got 1.0"):
        sdnn.DropRateSchedule([layer], stop=1.0, steps=3)
    with pytest.raises(ValueError, match="start must be in"):
        sdnn.DropRateSchedule([layer], stop=0.1, steps=3, start=-0.1)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        sdnn.DropRateSchedule([layer], stop=0.1, steps=0)
    with pytest.raises(ValueError, match="layers must not be empty"):
        sdnn.DropRateSchedule([], stop=0.1, steps=3)
    with pytest.raises(TypeError, match=r"layers\[1\] must have a drop probability"):
        sdnn.DropRateSchedule([layer, nn.ReLU()], stop=0.1, steps=3)
    with pytest.raises(ValueError, match="layers must contain a module"):
        sdnn.DropRateSchedule(nn.Linear(2, 2), stop=0.1, steps=3)
    with pytest.raises(TypeError, match="layers must be a module or an iterable"):
        sdnn.DropRateSchedule(3, stop=0.1, steps=3)
    schedule = sdnn.DropRateSchedule([layer], stop=0.1, steps=3)
    with pytest.raises(ValueError, match="misses the keys"):
        schedule.load_state_dict({"last_step": 1})
    with pytest.raises(ValueError, match="last_step must be >= 0"):
        schedule.load_state_dict({"last_step": -1, "start": 0.0, "stop": 0.1, "steps": 3})


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
