"""Sliding DropBlock (structdrop.nn.dropblock): exact mask laws, scaling, options, edge cases.

Monte Carlo checks compare empirical frequencies of 0/1 events with their exact probabilities
through a normal z-bound ``|freq - prob| <= Z * sqrt(prob (1 - prob) / n) + 1e-12``. With
``Z = 5`` one comparison fails by chance with probability about 5.7e-7; this file makes fewer
than 3,000 such comparisons, so by the union bound a fresh seed fails with probability below
2e-3. Every draw here is seeded, so each run is deterministic.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.fx
from hypothesis import given, settings
from hypothesis import strategies as st

import structdrop as sd
from nn_oracles import Z, bound, kept, oracle_hits, oracle_windows
from nn_oracles import seeded as gen
from structdrop._validation import check_block_sizes
from structdrop.nn import dropblock as db
from structdrop.nn.dropblock import rates as _rates
from structdrop.nn.dropblock import sparse as _sparse
from structdrop.nn.dropblock.functional import (
    drop_block,
    drop_block1d,
    drop_block2d,
    drop_block3d,
    drop_block_keep_prob,
    window_drop_prob,
)

BOUNDARIES = ("valid", "clipped")
RULES = ("mean", "interior", "ghiasi")


# ----------------------------------------------------------------------------------------------
# Independent oracle: windows enumerated from their definition, unit by unit.


def oracle_moments(spatial, block, boundary, gamma):
    """Exact mean and second moment of the flattened mask: a unit pair survives iff no window
    of the union of their covering sets is dropped."""
    windows = oracle_windows(spatial, block, boundary)
    units = list(itertools.product(*(range(n) for n in spatial)))
    covering = [{k for k, w in enumerate(windows) if u in w} for u in units]
    q = 1.0 - gamma
    mean = np.array([q ** len(c) for c in covering])
    second = np.array([[q ** len(a | b) for b in covering] for a in covering])
    return mean, second


# ----------------------------------------------------------------------------------------------
# Mask laws


@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("length", "block"), [(12, 3), (10, 4), (5, 7), (9, 1)])
def test_1d_masks_match_sliding_block_moments(method, boundary, length, block):
    """Both samplers draw the masks of ``SlidingBlock(p, r, boundary, gamma)``: mean, second
    moment and covariance."""
    p = 0.2
    rule = {3: "ghiasi", 4: "interior"}.get(block, "mean")
    gamma = window_drop_prob(p, block, (length,), boundary, rule)
    scheme = sd.SlidingBlock(p, block, boundary=boundary, gamma=gamma)
    z = kept((200, 100, length), p, block, method, length, boundary=boundary, gamma=rule)
    n = z.shape[0]
    mu = scheme.mean(length)
    second = scheme.second_moment(length)
    np.testing.assert_array_less(np.abs(z.mean(0) - mu), bound(mu, n))
    np.testing.assert_array_less(np.abs(z.T @ z / n - second), bound(second, n))
    # covariance = second moment - mu mu^T: the errors of the three terms add up (first order)
    cov_hat = np.cov(z, rowvar=False, bias=True)
    slack = bound(second, n) + 2 * bound(mu, n)[:, None] + 2 * bound(mu, n)[None, :]
    np.testing.assert_array_less(np.abs(cov_hat - scheme.covariance(length)), slack)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("spatial", "block"), [((4, 5), (2, 3)), ((3, 3), 4), ((3, 2, 3), (2, 1, 3))]
)
def test_nd_masks_match_oracle_moments(boundary, spatial, block):
    p = 0.25
    gamma = window_drop_prob(p, block, spatial, boundary, "mean")
    mean, second = oracle_moments(spatial, check_block_sizes(block, len(spatial)), boundary, gamma)
    mu = drop_block_keep_prob(spatial, block, boundary, gamma).numpy().ravel()
    np.testing.assert_allclose(mu, mean, rtol=0, atol=1e-14)
    z = kept((100, 100, *spatial), p, block, seed=3, boundary=boundary).reshape(10_000, -1)
    n = z.shape[0]
    np.testing.assert_array_less(np.abs(z.mean(0) - mean), bound(mean, n))
    np.testing.assert_array_less(np.abs(z.T @ z / n - second), bound(second, n))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("spatial", "block"),
    [((14, 14), 7), ((7, 7), 7), ((6, 9), (4, 2)), ((1, 1), 3), ((5, 4, 3), 2), ((2, 3, 1), 5)],
)
def test_keep_prob_matches_oracle_counts(boundary, spatial, block):
    gamma = 0.03
    windows = oracle_windows(spatial, check_block_sizes(block, len(spatial)), boundary)
    counts = np.zeros(spatial)
    for window in windows:
        for unit in window:
            counts[unit] += 1
    expected = (1.0 - gamma) ** counts
    got = drop_block_keep_prob(spatial, block, boundary, gamma)
    assert got.dtype == torch.float64 and tuple(got.shape) == spatial
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("spatial", "block"), [((14, 14), 7), ((9, 11), (3, 4)), ((6, 5, 4), 3)])
def test_2d_3d_keep_rates_are_exact_and_the_output_unbiased(method, boundary, spatial, block):
    """Both samplers: per-unit keep rates ``mu = (1 - gamma)^n`` and ``E[output] = input``,
    every kept unit ``x / mu``."""
    p = 0.15
    x = torch.rand(*spatial, dtype=torch.float64, generator=gen(11)) + 0.5
    batch = x.expand(100, 40, *spatial)
    out = drop_block(batch, p, block, boundary=boundary, method=method, generator=gen(7))
    gamma = window_drop_prob(p, block, spatial, boundary)
    mu = drop_block_keep_prob(spatial, block, boundary, gamma).numpy()
    values = out.reshape(-1, *spatial)
    n = values.shape[0]
    np.testing.assert_array_less(np.abs((values != 0).double().mean(0).numpy() - mu), bound(mu, n))
    # E[output] = x: the standard deviation of one output is x sqrt((1 - mu) / mu)
    spread = x.numpy() * np.sqrt((1.0 - mu) / mu)
    error = np.abs(values.mean(0).numpy() - x.numpy())
    np.testing.assert_array_less(error, Z * spread / math.sqrt(n) + 1e-12)
    np.testing.assert_allclose(values.amax(0).numpy(), x.numpy() / mu, rtol=1e-12)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("spatial", "block"), [((14, 14), 7), ((7, 7), 7), ((9,), 4), ((5, 6, 4), 3)]
)
def test_mean_rule_gives_mean_rate_p(boundary, spatial, block):
    p = 0.1
    gamma = window_drop_prob(p, block, spatial, boundary, "mean")
    mu = drop_block_keep_prob(spatial, block, boundary, gamma)
    assert abs(1.0 - float(mu.mean()) - p) < 1e-12
    z = kept((100, 50, *spatial), p, block, seed=11, boundary=boundary)
    rates = 1.0 - z.reshape(z.shape[0], -1).mean(1)  # one drop rate per mask, iid across masks
    assert abs(rates.mean() - p) <= Z * rates.std() / math.sqrt(rates.size)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_interior_rule_gives_interior_rate_p(boundary):
    p, spatial, block = 0.1, (15, 15), 5
    gamma = window_drop_prob(p, block, spatial, boundary, "interior")
    assert gamma == pytest.approx(1.0 - (1.0 - p) ** (1.0 / 25), rel=1e-14)
    mu = drop_block_keep_prob(spatial, block, boundary, gamma).numpy()
    centre = mu[5:10, 5:10]
    np.testing.assert_allclose(centre, 1.0 - p, rtol=0, atol=1e-14)
    assert mu.min() == pytest.approx(1.0 - p, abs=1e-14)  # the most covered units
    z = kept((100, 100, *spatial), p, block, seed=5, boundary=boundary, gamma="interior")
    assert abs(z[:, 7, 7].mean() - (1.0 - p)) <= bound(1.0 - p, z.shape[0])


def test_interior_rule_on_small_valid_maps_uses_largest_count():
    # 8 units, block 7: valid windows start at 0 and 1, no unit is covered by 7 of them
    gamma = window_drop_prob(0.3, 7, (8,), "valid", "interior")
    assert gamma == pytest.approx(1.0 - 0.7**0.5, rel=1e-14)
    assert window_drop_prob(0.3, 9, (8,), "valid", "interior") == pytest.approx(0.3)
    mu = drop_block_keep_prob((8,), 7, "valid", gamma)
    assert float(mu.min()) == pytest.approx(0.7, rel=1e-14)


@pytest.mark.parametrize(("size", "block"), [(14, 7), (7, 7), (56, 7), (9, 3), (5, 9)])
def test_ghiasi_rule_matches_torchvision_formula(size, block):
    p = 0.1
    bs = min(block, size)  # torchvision: block_size = min(block_size, W, H)
    expected = (p * size * size) / ((bs**2) * ((size - bs + 1) * (size - bs + 1)))
    got = window_drop_prob(p, block, (size, size), "valid", "ghiasi")
    assert got == pytest.approx(expected, rel=1e-14)
    assert window_drop_prob(0.9, 7, (7, 7), "valid", "ghiasi") < 1.0


def test_explicit_gamma_is_used_as_given():
    assert window_drop_prob(0.1, 3, (8,), "valid", 0.05) == 0.05
    z = kept((200, 50, 10), 0.1, 3, seed=2, gamma=0.05)
    mu = drop_block_keep_prob((10,), 3, "valid", 0.05).numpy()
    np.testing.assert_array_less(np.abs(z.mean(0) - mu), bound(mu, z.shape[0]))


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_dropped_positions_are_a_bernoulli_process_in_rounds_of_any_size(chunk):
    """The default round draws enough gaps at once; rounds of 1 or 3 gaps (many rounds per
    draw) give the same process."""
    total, gamma, draws = 40, 0.3, 600
    g = gen(9)
    hits = np.zeros(total)
    for _ in range(draws):
        positions = _sparse.dropped_positions(total, gamma, torch.device("cpu"), g, chunk)
        assert torch.all(positions[1:] > positions[:-1])
        assert positions.numel() == 0 or 0 <= int(positions[0]) <= int(positions[-1]) < total
        hits[positions.numpy()] += 1
    np.testing.assert_array_less(np.abs(hits / draws - gamma), bound(np.full(total, gamma), draws))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("spatial", "block", "p"), [((9, 7), (4, 3), 0.3), ((1100, 1100), 2, 0.01)]
)
def test_the_mask_is_that_of_the_drawn_windows(boundary, spatial, block, p):
    """The units set to zero are those of the windows drawn, written from the definition; the
    small map takes its windows from a table, the large one (more candidate units than
    ``TABLE_LIMIT``) computes them per draw."""
    geometry = _rates.geometry(spatial, check_block_sizes(block, 2), boundary)
    table = math.prod(geometry.candidates) * math.prod(geometry.extents) <= _sparse.TABLE_LIMIT
    assert table == (spatial == (9, 7))
    x = torch.ones(2, 3, *spatial)
    out = drop_block2d(x, p, block, boundary=boundary, generator=gen(1))
    gamma = window_drop_prob(p, block, spatial, boundary)
    # the layer seeds the windows' generator with the first number of its own
    seeded = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=gen(1))))
    total = 6 * math.prod(geometry.candidates)
    drawn = _sparse.dropped_positions(total, gamma, torch.device("cpu"), seeded)
    drops = torch.zeros(total, dtype=torch.bool)
    drops[drawn] = True
    expected = oracle_hits(drops.reshape(2, 3, *geometry.candidates), geometry)
    assert drawn.numel() > 0
    assert torch.equal(out == 0, expected)


# ----------------------------------------------------------------------------------------------
# Scaling


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_expected_scale_is_unbiased_per_unit(boundary):
    p, spatial, block = 0.2, (6, 7), 3
    x = torch.rand(*spatial, dtype=torch.float64) + 0.5
    batch = x.expand(100, 100, *spatial)
    out = drop_block2d(batch, p, block, boundary=boundary, generator=gen(4))
    gamma = window_drop_prob(p, block, spatial, boundary)
    mu = drop_block_keep_prob(spatial, block, boundary, gamma).numpy()
    n = out.shape[0] * out.shape[1]
    mean = out.reshape(n, *spatial).mean(0).numpy()
    sd_out = x.numpy() * np.sqrt((1.0 - mu) / mu)
    np.testing.assert_array_less(np.abs(mean - x.numpy()), Z * sd_out / math.sqrt(n) + 1e-12)
    values = out.reshape(n, *spatial)
    np.testing.assert_allclose(
        values.amax(0).numpy(), x.numpy() / mu, rtol=1e-12
    )  # kept units carry exactly x / mu


def test_batch_scale_restores_the_sum():
    x = torch.ones(8, 4, 10, 10)
    out = drop_block2d(x, 0.3, 3, scale="batch", generator=gen(0))
    kept_units = int((out != 0).sum())
    assert 0 < kept_units < out.numel()
    assert float(out.sum()) == pytest.approx(out.numel(), rel=1e-5)
    out = drop_block2d(x, 0.3, 3, scale="batch", shared_channels=True, generator=gen(0))
    assert float(out.sum()) == pytest.approx(out.numel(), rel=1e-5)


def test_batch_scale_with_everything_dropped_gives_zeros():
    x = torch.ones(2, 3, 4, 4, dtype=torch.float16)
    out = drop_block2d(x, 0.5, 8, gamma=1.0 - 1e-12, scale="batch", generator=gen(0))
    assert torch.equal(out, torch.zeros_like(x))
    out = drop_block2d(x, 0.5, 8, gamma=1.0 - 1e-12, generator=gen(0))
    assert torch.equal(out, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------
# Options


def test_shared_channels_and_batchwise_share_masks():
    x = torch.ones(6, 5, 8, 8)
    out = drop_block2d(x, 0.3, 3, shared_channels=True, generator=gen(0))
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert not torch.equal(out[0], out[1])
    out = drop_block2d(x, 0.3, 3, batchwise=True, generator=gen(0))
    assert torch.equal(out, out[:1].expand_as(out))
    assert not torch.equal(out[0, 0], out[0, 1])
    out = drop_block2d(x, 0.3, 3, batchwise=True, shared_channels=True, generator=gen(0))
    assert torch.equal(out, out[:1, :1].expand_as(out))


def test_shared_channel_masks_have_the_exact_law():
    p, spatial = 0.2, (7, 6)
    z = kept((4000, 3, *spatial), p, 3, seed=8, shared_channels=True)
    mu = drop_block_keep_prob(spatial, 3, "valid", window_drop_prob(p, 3, spatial)).numpy()
    z = z.reshape(4000, 3, *spatial)[:, 0]
    np.testing.assert_array_less(np.abs(z.mean(0) - mu), bound(mu, 4000))


def test_seeded_generator_reproduces_and_seeds_differ():
    x = torch.randn(4, 8, 12, 12)
    first = drop_block2d(x, 0.2, 5, generator=gen(3))
    again = drop_block2d(x, 0.2, 5, generator=gen(3))
    other = drop_block2d(x, 0.2, 5, generator=gen(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_zero_p_and_eval_are_identities():
    x = torch.randn(2, 3, 5, 5)
    assert drop_block2d(x, 0.0, 3) is x
    assert drop_block2d(x, 0.5, 3, training=False) is x
    assert drop_block(x, 0.0, 3, inplace=True) is x
    assert torch.equal(drop_block1d(x[:, :, 0], 0.0, 2), x[:, :, 0])


def test_inplace_multiplies_the_input():
    x = torch.randn(3, 4, 9, 9)
    expected = drop_block2d(x, 0.3, 3, generator=gen(2))
    y = x.clone()
    out = drop_block2d(y, 0.3, 3, inplace=True, generator=gen(2))
    assert out is y
    assert torch.equal(y, expected)


def test_inplace_keeps_gradients_on_intermediate_tensors():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    out = drop_block2d(x * 1.0, 0.3, 3, inplace=True, generator=gen(1))
    out.sum().backward()
    reference = drop_block2d(torch.ones_like(x), 0.3, 3, generator=gen(1))
    torch.testing.assert_close(x.grad, reference)


@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", ["expected", "batch"])
def test_half_precision_keeps_dtype_without_nan(dtype, scale, method):
    x = torch.randn(4, 8, 14, 14).to(dtype)
    out = drop_block2d(x, 0.5, 7, scale=scale, boundary="clipped", method=method, generator=gen(0))
    assert out.dtype == dtype
    assert not torch.isnan(out).any()
    assert (out == 0).any() and (out != 0).any()


def test_float64_and_float32_keep_dtype():
    for dtype in (torch.float32, torch.float64):
        out = drop_block3d(torch.randn(2, 2, 4, 5, 6, dtype=dtype), 0.2, 2, generator=gen(0))
        assert out.dtype == dtype


@pytest.mark.parametrize(
    ("shape", "block"),
    [
        ((2, 3, 10, 10), 4),  # even block
        ((2, 3, 5, 17), (3, 6)),  # non-square map and block
        ((2, 3, 4, 3), 9),  # block larger than the map
        ((2, 3, 1, 1), 3),  # 1x1 map
        ((2, 3, 1, 1), 1),
        ((2, 3, 6, 6), 1),  # block 1
        ((1, 1, 2, 9), (5, 2)),
        ((0, 3, 4, 4), 3),  # empty batch
    ],
)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("rule", RULES)
def test_edge_shapes(shape, block, boundary, rule):
    x = torch.randn(shape)
    for scale in ("expected", "batch"):
        out = drop_block2d(
            x, 0.4, block, boundary=boundary, gamma=rule, scale=scale, generator=gen(0)
        )
        assert out.shape == x.shape
        assert torch.isfinite(out).all()
    gamma = window_drop_prob(0.4, block, shape[2:], boundary, rule)
    assert 0.0 < gamma < 1.0
    mu = drop_block_keep_prob(shape[2:], block, boundary, gamma)
    assert torch.all(mu > 0) and torch.all(mu <= 1)


def test_block_one_is_dropout():
    for boundary in BOUNDARIES:
        for rule in RULES:
            assert window_drop_prob(0.3, 1, (5, 6), boundary, rule) == pytest.approx(0.3, rel=1e-14)
    mu = drop_block_keep_prob((5, 6), 1, "valid", 0.3)
    np.testing.assert_allclose(mu.numpy(), 0.7, rtol=1e-14)


def test_1d_and_3d_entry_points():
    out = drop_block1d(torch.ones(50, 40, 20), 0.2, 4, generator=gen(0))
    assert out.shape == (50, 40, 20)
    assert (out == 0).any()
    out = drop_block3d(torch.ones(10, 8, 6, 7, 8), 0.2, (2, 3, 4), generator=gen(0))
    assert out.shape == (10, 8, 6, 7, 8)
    assert (out == 0).any()


@pytest.mark.slow
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("scale", ["expected", "batch"])
def test_gradcheck(boundary, scale):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)

    def function(t):
        return drop_block2d(t, 0.3, (2, 3), boundary=boundary, scale=scale, generator=gen(6))

    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))


@settings(max_examples=20, deadline=None)
@given(
    spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    block=st.integers(1, 10),
    boundary=st.sampled_from(BOUNDARIES),
    rule=st.sampled_from(RULES),
    p=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**31),
)
def test_kept_units_carry_input_over_keep_prob(spatial, block, boundary, rule, p, seed):
    x = torch.rand(3, 2, *spatial, dtype=torch.float64) + 1.0
    out = drop_block(x, p, block, boundary=boundary, gamma=rule, generator=gen(seed))
    assert torch.isfinite(out).all()
    gamma = window_drop_prob(p, block, spatial, boundary, rule)
    mu = drop_block_keep_prob(spatial, block, boundary, gamma)
    kept_mask = out != 0
    torch.testing.assert_close(out[kept_mask], (x / mu)[kept_mask], rtol=1e-12, atol=0)
    if p == 0:
        assert out is x


# ----------------------------------------------------------------------------------------------
# Tracing and compilation


class _Net(torch.nn.Module):
    def forward(self, x):
        return drop_block2d(x.relu(), 0.2, 3) + 1.0


class _NetViaModule(torch.nn.Module):
    def forward(self, x):
        return db.drop_block(x, 0.2, 3, shared_channels=True) * 2.0


def test_fx_symbolic_trace_keeps_drop_block_as_a_leaf():
    for net in (_Net(), _NetViaModule()):
        traced = torch.fx.symbolic_trace(net)
        targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
        assert any(t in (drop_block, drop_block2d) for t in targets)
        x = torch.randn(2, 3, 8, 8)
        assert traced(x).shape == x.shape
        net.eval()
        traced.eval()


def test_torch_compile_runs():
    compiled = torch.compile(lambda t: drop_block2d(t * 2.0, 0.2, 3), backend="eager")
    out = compiled(torch.ones(2, 3, 8, 8))
    assert out.shape == (2, 3, 8, 8)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x: drop_block2d(x, 1.5, 3), ValueError, r"p must be in \[0, 1\], got 1.5"),
        (lambda x: drop_block2d(x, -0.1, 3), ValueError, r"p must be in \[0, 1\], got -0.1"),
        (lambda x: drop_block2d(x, float("nan"), 3), ValueError, r"p must be in \[0, 1\]"),
        (lambda x: drop_block2d(x, "a", 3), TypeError, "p must be a real number"),
        (lambda x: drop_block2d(x, 0.1, 0), ValueError, "block_size must be >= 1, got 0"),
        (lambda x: drop_block2d(x, 0.1, 2.5), TypeError, "block_size must be an integer"),
        (lambda x: drop_block2d(x, 0.1, (3, 3, 3)), ValueError, r"block_size .* 2 ints"),
        (lambda x: drop_block2d(x, 0.1, (3, 0)), ValueError, "block_size must be >= 1"),
        (lambda x: drop_block2d(x, 0.1, 3, boundary="same"), ValueError, "boundary .* 'same'"),
        (lambda x: drop_block2d(x, 0.1, 3, gamma="paper"), ValueError, "gamma .* 'paper'"),
        (lambda x: drop_block2d(x, 0.1, 3, gamma=1.5), ValueError, "gamma must be in"),
        (lambda x: drop_block2d(x, 0.1, 3, gamma=True), TypeError, "gamma must be"),
        (lambda x: drop_block2d(x, 0.1, 3, scale="none"), ValueError, "scale .* 'none'"),
        (lambda x: drop_block2d(x, 0.1, 3, method="fast"), ValueError, "method .* 'fast'"),
        (lambda x: drop_block2d(x, 0.1, 3, method=None), ValueError, "method .* None"),
        (lambda x: drop_block2d(x, 0.1, 3, eps=-1.0), ValueError, "eps must be .* -1.0"),
        (lambda x: drop_block2d(x, 0.1, 3, eps="a"), TypeError, "eps must be a real number"),
        (lambda x: drop_block2d(x, 0.1, 3, "clipped"), TypeError, "inplace .* keyword-only"),
        (lambda x: drop_block2d(x, 0.1, 3, 1), TypeError, "inplace must be a bool, got 1"),
        (lambda x: drop_block2d(x, 0.1, 3, generator=1), TypeError, "generator"),
        (lambda x: drop_block2d(x, 0.1, 3, bogus=1), TypeError, "bogus"),
        (lambda x: drop_block1d(x, 0.1, 3), ValueError, r"3-D tensor \(N, C, L\).*\(2, 3, 8, 8\)"),
        (lambda x: drop_block3d(x, 0.1, 3), ValueError, r"5-D tensor .*\(2, 3, 8, 8\)"),
        (lambda x: drop_block2d(x[0], 0.1, 3), ValueError, r"4-D tensor .*\(3, 8, 8\)"),
        (lambda x: drop_block(x[0, 0], 0.1, 3), ValueError, r"at least one spatial axis"),
        (lambda x: drop_block2d(x.long(), 0.1, 3), TypeError, "floating point"),
        (lambda x: drop_block2d(x.numpy(), 0.1, 3), TypeError, "torch.Tensor, got ndarray"),
        (lambda x: window_drop_prob(0.1, 3, (8, 8), rule="x"), ValueError, "rule .* 'x'"),
        (lambda x: window_drop_prob(0.1, 3, (0, 8)), ValueError, "spatial_shape"),
        (lambda x: drop_block_keep_prob((8, 8), 3, "valid", "mean"), TypeError, "gamma"),
        (lambda x: drop_block_keep_prob((8,), 3, "ring", 0.1), ValueError, "boundary .* 'ring'"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.ones(2, 3, 8, 8))


def test_invalid_arguments_raise_even_in_eval_mode():
    with pytest.raises(ValueError, match="p must be"):
        drop_block2d(torch.ones(1, 1, 4, 4), 1.5, 3, training=False)


def test_non_contiguous_input_and_expanded_gradient():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    reference = drop_block2d(x, 0.3, 3, generator=gen(5))
    y = x.to(memory_format=torch.channels_last).requires_grad_()
    out = drop_block2d(y, 0.3, 3, generator=gen(5))
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    out.sum().backward()  # the gradient arrives as an expanded (stride 0) tensor
    torch.testing.assert_close(y.grad, drop_block2d(torch.ones_like(x), 0.3, 3, generator=gen(5)))
