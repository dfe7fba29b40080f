"""The dense (sync-free) DropBlock sampler against the exact law and against the sparse sampler.

Both samplers must draw the law of ``structdrop.nn.dropblock.functional``'s module docstring: in
1-D the masks of ``SlidingBlock(p, r, boundary=boundary, gamma)`` (mean and covariance), in
2-D/3-D the exact per-unit keep probabilities ``mu = (1 - gamma)^n`` and ``E[output] = input``.

Monte Carlo checks use normal z-bounds with ``Z = 5`` on 0/1 frequencies,
``|freq - prob| <= Z sqrt(prob (1 - prob) / n)`` (two-sample: ``Z sqrt(2 prob (1 - prob) / n)``);
one comparison fails by chance with probability 5.7e-7, and this file makes fewer than 4,000,
so a fresh seed fails with probability below 3e-3 (union bound). Every draw is seeded: each
run is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nn_oracles import bound, kept, oracle_hits
from nn_oracles import seeded as gen
from structdrop import nn as sdnn
from structdrop._validation import check_block_sizes
from structdrop.nn.dropblock import dense as _dense
from structdrop.nn.dropblock import op as db_op
from structdrop.nn.dropblock import rates as _windows
from structdrop.nn.dropblock import sparse as _sparse
from structdrop.nn.dropblock.functional import (
    drop_block,
    drop_block2d,
    drop_block3d,
    drop_block_keep_prob,
    window_drop_prob,
)

BOUNDARIES = ("valid", "clipped")
RULES = ("mean", "interior", "ghiasi")


def exact_second_moment(spatial, block, boundary, gamma) -> np.ndarray:
    """``E[z_i z_j] = (1 - gamma)^{|W(i) | W(j)|}`` from the window incidence (docs/theory.md)."""
    geometry = _windows.geometry(spatial, check_block_sizes(block, len(spatial)), boundary)
    windows = _sparse.window_units(torch.arange(math.prod(geometry.candidates)), geometry)
    incidence = np.zeros((windows.shape[0], math.prod(spatial)))
    for k, units in enumerate(windows.tolist()):
        incidence[k, units] = 1.0
    counts = incidence.sum(0)
    union = counts[:, None] + counts[None, :] - incidence.T @ incidence
    return (1.0 - gamma) ** union


# ----------------------------------------------------------------------------------------------
# Window expansion: max-pool, shifted ORs and the definition agree exactly


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("spatial", "block"),
    [((9,), 4), ((7, 6), (3, 2)), ((14, 14), 7), ((3, 2), 5), ((1, 1), 3), ((4, 5, 3), (2, 3, 1))],
)
def test_window_expansions_match_the_definition(boundary, spatial, block):
    geometry = _windows.geometry(spatial, check_block_sizes(block, len(spatial)), boundary)
    drops = torch.rand(2, 3, *geometry.candidates, generator=gen(1)) < 0.15
    expected = oracle_hits(drops, geometry)
    assert torch.equal(_dense.hits_by_shifts(drops, geometry), expected)
    assert torch.equal(_dense.hits_by_pooling(drops.double(), geometry).bool(), expected)


@pytest.mark.parametrize(
    ("spatial", "block"),
    [((6, 7, 5), (4, 5, 4)), ((6, 7, 5), (4, 4, 4))],  # volume 80: axis by axis; 64: jointly
)
def test_3d_blocks_pool_jointly_or_axis_by_axis(spatial, block):
    geometry = _windows.geometry(spatial, block, "clipped")
    joint = math.prod(geometry.extents) <= _dense.JOINT_POOL_LIMIT
    assert joint == (math.prod(block) == 64)
    drops = torch.rand(2, 2, *geometry.candidates, generator=gen(2)) < 0.05
    expected = oracle_hits(drops, geometry)
    assert torch.equal(_dense.hits_by_pooling(drops.float(), geometry).bool(), expected)


# ----------------------------------------------------------------------------------------------
# The exact law, dense sampler


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("options", [{}, {"shared_channels": True}, {"gamma": "interior"}])
def test_dense_and_sparse_draw_the_same_law(boundary, options):
    p, spatial, block = 0.2, (8, 9), 3
    dense = kept((150, 40, *spatial), p, block, "dense", 1, boundary=boundary, **options)
    sparse = kept((150, 40, *spatial), p, block, "sparse", 2, boundary=boundary, **options)
    gamma = window_drop_prob(p, block, spatial, boundary, options.get("gamma", "mean"))
    mu = drop_block_keep_prob(spatial, block, boundary, gamma).numpy()
    n = dense.shape[0] if not options.get("shared_channels") else 150
    if options.get("shared_channels"):  # one mask per sample: compare one channel's masks
        dense, sparse = dense[::40], sparse[::40]
    np.testing.assert_array_less(np.abs(dense.mean(0) - sparse.mean(0)), bound(mu, n, 2))
    # pairs of units agree as well, within the bound of their exact second moments
    d, s = dense.reshape(n, -1), sparse.reshape(n, -1)
    pair = exact_second_moment(spatial, block, boundary, gamma)
    np.testing.assert_array_less(np.abs(d.T @ d / n - s.T @ s / n), bound(pair, n, 2))


def test_dense_sharing_options_share_masks():
    x = torch.ones(6, 5, 8, 8)
    out = drop_block2d(x, 0.3, 3, shared_channels=True, method="dense", generator=gen(0))
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert not torch.equal(out[0], out[1])
    out = drop_block2d(x, 0.3, 3, batchwise=True, method="dense", generator=gen(0))
    assert torch.equal(out, out[:1].expand_as(out))
    assert not torch.equal(out[0, 0], out[0, 1])


def test_dense_batch_scale_restores_the_sum_with_eps():
    x = torch.ones(8, 4, 10, 10)
    for method in ("dense", "sparse"):
        out = drop_block2d(x, 0.3, 3, scale="batch", method=method, generator=gen(0))
        kept_units = int((out != 0).sum())
        assert 0 < kept_units < out.numel()
        assert float(out.sum()) == pytest.approx(out.numel(), rel=1e-5)
        # torchvision's eps: numel / (kept + eps)
        out = drop_block2d(x, 0.3, 3, False, 100.0, scale="batch", method=method, generator=gen(0))
        assert float(out.sum()) == pytest.approx(out.numel() * kept_units / (kept_units + 100.0))


def test_dense_generator_reproduces_and_float64_draws_in_float64():
    x = torch.randn(4, 8, 12, 12, dtype=torch.float64)
    first = drop_block2d(x, 0.2, 5, method="dense", generator=gen(3))
    assert torch.equal(first, drop_block2d(x, 0.2, 5, method="dense", generator=gen(3)))
    assert not torch.equal(first, drop_block2d(x, 0.2, 5, method="dense", generator=gen(4)))
    assert first.dtype == torch.float64


def test_four_spatial_axes_use_shifted_windows():
    x = torch.ones(200, 10, 3, 4, 3, 2)
    out = drop_block(x, 0.3, 2, method="dense", generator=gen(5))
    gamma = window_drop_prob(0.3, 2, x.shape[2:])
    mu = drop_block_keep_prob(x.shape[2:], 2, "valid", gamma).numpy()
    z = (out != 0).double().reshape(-1, *x.shape[2:]).numpy()
    np.testing.assert_array_less(np.abs(z.mean(0) - mu), bound(mu, z.shape[0]))


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_gradcheck_of_both_samplers(method):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)

    def function(t):
        return drop_block2d(t, 0.3, (2, 3), method=method, generator=gen(6))

    assert torch.autograd.gradcheck(function, (x,))


# ----------------------------------------------------------------------------------------------
# Selection of the sampler


def test_auto_picks_sparse_on_cpu_and_the_method_is_obeyed(monkeypatch):
    calls = []
    for name in ("drop_block_dense", "drop_block_sparse"):
        original = getattr(db_op, name)

        def record(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(db_op, name, record)
    x = torch.randn(2, 3, 8, 8)
    for method in ("auto", "sparse", "dense"):
        drop_block2d(x, 0.2, 3, method=method)
    assert calls == ["drop_block_sparse", "drop_block_sparse", "drop_block_dense"]
    # compiled on a CPU, "auto" is still the sparse sampler (the operator runs it)
    calls.clear()
    compiled = torch.compile(lambda t: drop_block2d(t, 0.2, 3), backend="aot_eager", fullgraph=True)
    compiled(x)
    assert calls == ["drop_block_sparse"]


def test_mean_rule_is_accurate_for_tiny_and_huge_rates():
    # block 1: every unit is one window, so gamma = p exactly
    for p in (1e-300, 1e-15, 0.3, 1.0 - 1e-15):
        assert window_drop_prob(p, 1, (7, 7)) == pytest.approx(p, rel=1e-13)
    gamma = window_drop_prob(1e-12, 3, (10,))
    mu = drop_block_keep_prob((10,), 3, "valid", gamma)
    assert float((1.0 - mu).mean()) == pytest.approx(1e-12, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# Memory formats and p = 1 on every path

FORMATS = [
    ((3, 4, 7, 6), torch.channels_last),
    ((3, 4, 3, 5, 4), torch.channels_last_3d),
]
PATHS = [
    {"method": "sparse"},
    {"method": "dense"},
    {"method": "sparse", "shared_channels": True},
    {"method": "sparse", "scale": "batch"},
    {"method": "dense", "batchwise": True},
]


@pytest.mark.parametrize(("shape", "memory_format"), FORMATS, ids=["2d", "3d"])
@pytest.mark.parametrize("options", PATHS, ids=lambda o: "-".join(map(str, o.values())))
def test_output_and_gradient_keep_the_memory_format(shape, memory_format, options):
    x = torch.randn(shape, dtype=torch.float64)
    reference = drop_block(x, 0.3, 2, generator=gen(5), **options)
    y = x.to(memory_format=memory_format).requires_grad_()
    out = drop_block(y, 0.3, 2, generator=gen(5), **options)
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)  # same draws, same values
    grad = torch.randn(shape, dtype=torch.float64).to(memory_format=memory_format)
    out.backward(grad)
    assert y.grad.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(y.grad, grad * (reference / x), rtol=1e-12, atol=0)
    z = x.to(memory_format=memory_format)
    assert drop_block(z, 0.3, 2, inplace=True, **options).is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_p_one_gives_zeros_as_dropout(method):
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = drop_block2d(x, 1.0, 3, method=method)
    assert torch.equal(out, torch.nn.functional.dropout(x, 1.0))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    y = torch.randn(2, 3, 4, 4, 4).to(memory_format=torch.channels_last_3d)
    assert drop_block3d(y, 1.0, 3, inplace=True) is y
    assert torch.equal(y, torch.zeros_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last_3d)


# ----------------------------------------------------------------------------------------------
# Shared masks and half precision on every sampler path (eager and compiled)

SHARING = [
    {"shared_channels": True},
    {"batchwise": True},
    {"shared_channels": True, "batchwise": True},
]


def _inverse_keep(p, block, spatial) -> torch.Tensor:
    gamma = sdnn.functional.window_drop_prob(p, block, spatial)
    return 1.0 / sdnn.functional.drop_block_keep_prob(spatial, block, "valid", gamma)


def _assert_shared_as_asked(out: torch.Tensor, options: dict, inverse: torch.Tensor) -> None:
    """Masks shared by the channels and/or the batch exactly as asked (and no further), and
    every kept unit scaled by its exact ``1 / mu``."""
    shared, batchwise = options.get("shared_channels", False), options.get("batchwise", False)
    if shared:
        assert torch.equal(out, out[:, :1].expand_as(out))
    else:
        assert not torch.equal(out[:, 0], out[:, 1])
    if batchwise:
        assert torch.equal(out, out[:1].expand_as(out))
    else:
        assert not torch.equal(out[0], out[1])
    kept = out != 0
    assert kept.any()
    if not (shared and batchwise):  # (one mask in all: it may keep every unit)
        assert not kept.all()
    expected = torch.where(kept, inverse.to(out.dtype).expand_as(out), 0.0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("options", SHARING, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize(
    ("spatial", "block"), [((16,), 3), ((8, 7), 3), ((4, 5, 4), 2), ((3, 4, 3, 3), 2)]
)
def test_shared_masks_are_shared_on_every_sampler_path(options, method, spatial, block):
    """shared_channels / batchwise give one mask per sample / per batch for 1 to 4 spatial
    axes (4 axes: the dense sampler's shifted windows)."""
    x = torch.ones(6, 5, *spatial, dtype=torch.float64)
    out = sdnn.functional.drop_block(x, 0.4, block, method=method, generator=gen(11), **options)
    _assert_shared_as_asked(out, options, _inverse_keep(0.4, block, spatial))


@pytest.mark.parametrize("options", SHARING, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("layer", ["DropBlock2d", "DropBlock3d"])
def test_compiled_layers_share_masks_as_asked(options, layer):
    """Under torch.compile (the dense sampler's traced path) the layers share masks exactly as
    in eager mode."""
    spatial = (8, 7) if layer == "DropBlock2d" else (4, 5, 4)
    module = getattr(sdnn, layer)(0.3, 2, **options)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    with torch.random.fork_rng():
        torch.manual_seed(12)
        out = compiled(torch.ones(6, 5, *spatial, dtype=torch.float64))
    torch._dynamo.reset()
    _assert_shared_as_asked(out, options, _inverse_keep(0.3, 2, spatial))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["sparse", "dense", "compiled"])
def test_a_near_one_drop_rate_in_half_precision_gives_finite_capped_scales(dtype, method):
    """At p = 0.9999 with 7x7 blocks on a 14x14 map, 1 / mu of the most covered units exceeds
    the largest float16 (and bfloat16) value: the scales are capped there, never infinite, so
    dropped units are 0 (not NaN) and kept units carry min(1 / mu, max) exactly."""
    p, block, spatial = 0.9999, 7, (14, 14)
    largest = torch.finfo(dtype).max
    inverse = _inverse_keep(p, block, spatial)
    assert bool((inverse > largest).any())  # the cap is needed
    x = torch.ones(64, 16, *spatial, dtype=dtype)
    if method == "compiled":
        compiled = torch.compile(sdnn.DropBlock2d(p, block), backend="aot_eager", fullgraph=True)
        with torch.random.fork_rng():
            torch.manual_seed(13)
            out = compiled(x)
        torch._dynamo.reset()
    else:
        out = sdnn.DropBlock2d(p, block, method=method, generator=gen(13))(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    kept = out != 0
    assert 0 < int(kept.sum()) < 200  # about 1e-4 of 200,704 units
    expected = inverse.clamp_max(largest).to(dtype).expand_as(out)
    torch.testing.assert_close(out[kept], expected[kept])
    # the same law on one unit with every window dropped: zero, not NaN, through the cap
    everything = sdnn.functional.drop_block2d(
        torch.ones(2, 3, *spatial, dtype=dtype),
        0.5,
        block,
        gamma=1.0 - 1e-12,
        method="dense" if method == "compiled" else method,
        generator=gen(14),
    )
    assert torch.equal(everything, torch.zeros_like(everything))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize("options", [{}, {"shared_channels": True}], ids=["own", "shared"])
def test_half_precision_kept_units_are_rounded_once(dtype, method, options):
    """A kept unit is ``x * (1 / mu)`` computed in float32 and rounded once to the half type (the
    rounding that ``inverse_keep_prob`` states), on both samplers; rounding ``1 / mu`` to the
    half type first gives other values on many units of this map."""
    p, block, spatial = 0.3, 3, (9, 8)
    x = (1.0 + 3.0 * torch.rand(8, 4, *spatial, generator=gen(21))).to(dtype)  # no zeros
    out = drop_block2d(x, p, block, method=method, generator=gen(22), **options)
    assert out.dtype == dtype
    gamma = window_drop_prob(p, block, spatial)
    inverse = (1.0 / drop_block_keep_prob(spatial, block, "valid", gamma)).to(torch.float32)
    once = (x.float() * inverse).to(dtype)
    twice = (x.float() * inverse.to(dtype).float()).to(dtype)
    kept = out != 0
    assert kept.any() and not kept.all()
    assert int((once != twice)[kept].sum()) > 10  # the map tells the two roundings apart
    assert torch.equal(out[kept], once[kept])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize("options", [{}, {"shared_channels": True}], ids=["own", "shared"])
def test_half_precision_batch_scaled_units_are_rounded_once(dtype, method, options):
    """``scale="batch"``: a kept unit is ``x`` times the mask's size over its kept units plus
    ``eps``, in float32, rounded once to the half type, on both samplers."""
    p, block, spatial, eps = 0.3, 3, (9, 8), 1e-6
    x = (1.0 + 3.0 * torch.rand(8, 4, *spatial, generator=gen(23))).to(dtype)
    out = drop_block2d(x, p, block, scale="batch", method=method, generator=gen(24), **options)
    kept = out != 0
    mask = kept[:, :1] if options else kept
    factor = torch.tensor(mask.numel(), dtype=torch.float32) / (mask.sum(dtype=torch.float32) + eps)
    once = (x.float() * factor).to(dtype)
    twice = (x.float() * factor.to(dtype).float()).to(dtype)
    assert kept.any() and not kept.all()
    assert int((once != twice)[kept].sum()) > 10
    assert torch.equal(out[kept], once[kept])


@pytest.mark.parametrize("method", ["sparse", "dense", "compiled"])
def test_kept_units_whose_scale_overflows_float16_carry_its_largest_value(method):
    """Windows of one unit dropped with gamma = 1 - 1.25e-5: a kept unit's 1 / mu = 80,000 is
    past float16's largest value (65,504), which it carries instead of inf (about 10 of the
    800,000 units are kept)."""
    x = torch.ones(400_000, 1, 2, dtype=torch.float16)
    options = {"gamma": 1.0 - 1.25e-5}
    if method == "compiled":
        layer = sdnn.DropBlock1d(0.5, 1, **options)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        with torch.random.fork_rng():
            torch.manual_seed(15)
            out = compiled(x)
        torch._dynamo.reset()
    else:
        out = sdnn.DropBlock1d(0.5, 1, method=method, generator=gen(15), **options)(x)
    kept = out != 0
    assert 0 < int(kept.sum()) < 40
    assert bool((out[kept] == torch.finfo(torch.float16).max).all())
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", ["expected", "batch"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_dropped_nan_or_inf_is_nan_on_both_samplers(scale, bad, memory_format):
    """As in ``torch.nn.Dropout`` (``nan * 0`` and ``inf * 0`` are NaN), a dropped unit that
    holds NaN or an infinity gives NaN on both samplers, and a kept one its scaled value."""
    x = torch.randn(2, 3, 6, 6, generator=gen(16))
    x[0, 1, 2, 3] = bad
    x[1, 2, :, 4] = bad
    x = x.contiguous(memory_format=memory_format)
    options = {"scale": scale}
    # everything dropped: both samplers give x * 0
    outputs = [
        sdnn.DropBlock2d(0.5, 3, gamma=1.0 - 1e-12, method=method, generator=gen(17), **options)(x)
        for method in ("sparse", "dense")
    ]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.isnan(outputs[0]), ~torch.isfinite(x))
    # a random mask: each sampler's output is the input times the mask it draws
    for method in ("sparse", "dense"):
        mask = sdnn.DropBlock2d(0.3, 3, method=method, generator=gen(18), **options)(
            torch.ones_like(x)
        )
        out = sdnn.DropBlock2d(0.3, 3, method=method, generator=gen(18), **options)(x)
        assert bool((mask == 0).any()) and bool((mask != 0).any())
        torch.testing.assert_close(out, x * mask, rtol=0, atol=0, equal_nan=True)
        assert bool(torch.isnan(out[mask == 0]).any())
