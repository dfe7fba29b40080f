"""Mask laws: moments against exact enumeration, sampling, properties and input checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import structdrop as sd
from oracles import (
    BOUNDARIES,
    bernoulli_law,
    grid_law,
    moments,
    sliding_law,
)

# Exact moments are sums of at most 2**8 = 256 probability-weighted terms with entries in
# [0, 1] (a few units for the real-valued laws), so both sides carry rounding errors of a few
# 1e-16; 1e-12 leaves three orders of magnitude of room and still catches any real mistake.
ATOL = 1e-12


def assert_moments_match(scheme, d, z, probs, atol=ATOL):
    mu, cov = moments(z, probs)
    got_mu = np.asarray(scheme.mean(d))
    got_cov = np.asarray(scheme.covariance(d))
    got_cbar = np.asarray(scheme.characteristic(d))
    assert got_mu.shape == (d,)
    assert got_cov.shape == (d, d)
    assert got_cbar.shape == (d, d)
    np.testing.assert_allclose(got_mu, mu, rtol=0, atol=atol)
    np.testing.assert_allclose(got_cov, cov, rtol=0, atol=atol)
    # Cbar = C / (mu_i mu_j) magnifies absolute errors by at most 1 / min(mu)^2.
    scale = 1.0 / float(np.min(np.abs(mu))) ** 2
    np.testing.assert_allclose(got_cbar, cov / np.outer(mu, mu), rtol=0, atol=atol * scale)


# --------------------------------------------------------------------------------------------
# Exact moments by enumeration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.75])
@pytest.mark.parametrize("d", [1, 2, 5, 8])
def test_bernoulli_moments_match_enumeration_of_all_masks(p, d):
    z, probs = bernoulli_law(p, d)
    assert_moments_match(sd.Bernoulli(p), d, z, probs)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
@pytest.mark.parametrize(("d", "r"), [(1, 1), (4, 1), (4, 2), (4, 4), (6, 2), (6, 3), (8, 4)])
def test_grid_block_moments_match_enumeration_of_block_patterns(p, d, r):
    z, probs = grid_law(p, r, d)
    assert_moments_match(sd.GridBlock(p, r), d, z, probs)


@pytest.mark.parametrize("p", [0.2, 0.6])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_sliding_block_moments_match_enumeration_of_window_patterns(boundary, d, p):
    # Block sizes 1..d (odd and even), and beyond d where the boundary allows it.
    max_r = d if boundary == "ring" else d + 2
    for r in range(1, max_r + 1):
        z, probs = sliding_law(p, r, d, boundary)
        assert_moments_match(sd.SlidingBlock(p, r, boundary=boundary), d, z, probs)


@pytest.mark.parametrize("gamma", [0.0, 0.15, 0.5, 0.9])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_sliding_block_with_explicit_gamma_matches_enumeration(boundary, gamma):
    d = 7
    for r in (2, 3, 4):
        z, probs = sliding_law(0.3, r, d, boundary, gamma=gamma)
        scheme = sd.SlidingBlock(0.3, r, boundary=boundary, gamma=gamma)
        assert_moments_match(scheme, d, z, probs)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("d", [1, 3, 6])
def test_dropconnect_as_vector_law_is_bernoulli(p, d):
    z, probs = bernoulli_law(p, d)
    assert_moments_match(sd.DropConnect(p), d, z, probs)


def discrete_direct(masks, probs):
    """Mean and covariance straight from the definition E[f(z)] = sum_k probs_k f(masks_k)."""
    mu = sum(q * m for q, m in zip(probs, masks, strict=True))
    second = sum(q * np.outer(m, m) for q, m in zip(probs, masks, strict=True))
    return mu, second - np.outer(mu, mu)


def test_discrete_binary_correlated_law_matches_definition():
    masks = np.array(
        [[1, 1, 0, 0, 1], [0, 1, 1, 1, 0], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]],
        dtype=float,
    )
    probs = np.array([0.1, 0.25, 0.3, 0.2, 0.15])
    assert_moments_match(sd.Discrete(masks, probs), 5, masks, probs)
    mu, cov = discrete_direct(masks, probs)
    np.testing.assert_allclose(sd.Discrete(masks, probs).mean(5), mu, rtol=0, atol=ATOL)
    np.testing.assert_allclose(sd.Discrete(masks, probs).covariance(5), cov, rtol=0, atol=ATOL)


def test_discrete_real_valued_law_matches_definition():
    rng = np.random.default_rng(7)
    masks = 1.0 + 0.6 * rng.standard_normal((6, 4))
    probs = rng.dirichlet(np.ones(6))
    mu, cov = discrete_direct(masks, probs)
    scheme = sd.Discrete(masks, probs)
    np.testing.assert_allclose(scheme.mean(4), mu, rtol=0, atol=ATOL)
    np.testing.assert_allclose(scheme.covariance(4), cov, rtol=0, atol=ATOL)
    np.testing.assert_allclose(
        scheme.characteristic(4), cov / np.outer(mu, mu), rtol=1e-10, atol=ATOL
    )


def test_discrete_with_negative_mean_unit_is_accepted():
    # Only a zero mean is forbidden; a negative one still gives a finite Cbar.
    masks = np.array([[1.0, -2.0], [1.0, 0.5]])
    probs = np.array([0.5, 0.5])
    mu, cov = discrete_direct(masks, probs)
    scheme = sd.Discrete(masks, probs)
    np.testing.assert_allclose(scheme.mean(2), mu, rtol=0, atol=ATOL)
    np.testing.assert_allclose(
        scheme.characteristic(2), cov / np.outer(mu, mu), rtol=1e-12, atol=ATOL
    )


def test_discrete_product_of_two_point_laws_has_diagonal_cbar():
    # z_i in {1 - s, 1 + s} iid with prob 1/2 (a finite stand-in for Gaussian dropout):
    # Cbar = s^2 I exactly.
    s, d = 0.7, 4
    signs = np.array(
        [[1 if (k >> i) & 1 else -1 for i in range(d)] for k in range(2**d)], dtype=float
    )
    masks = 1.0 + s * signs
    probs = np.full(2**d, 1.0 / 2**d)
    np.testing.assert_allclose(
        sd.Discrete(masks, probs).characteristic(d), s**2 * np.eye(d), rtol=0, atol=ATOL
    )


def test_keep_prob_is_one_minus_p():
    for scheme in (sd.Bernoulli(0.3), sd.GridBlock(0.3, 2), sd.DropConnect(0.3)):
        assert isinstance(scheme.keep_prob, float)
        assert scheme.keep_prob == pytest.approx(0.7, abs=1e-15)
        assert scheme.p == pytest.approx(0.3, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Closed forms from the notes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [0.3, 0.5, 0.9])
@pytest.mark.parametrize(("d", "r"), [(2, 1), (4, 2), (6, 3), (8, 4), (8, 3), (7, 2)])
def test_ring_characteristic_closed_form(d, r, theta):
    # With gamma = 1 - theta^(1/r) and d >= 2r (no window wraps onto itself):
    # Cbar_ij = theta^(-max(0, r - dist)/r) - 1, dist the circular distance.
    scheme = sd.SlidingBlock(1.0 - theta, r, boundary="ring")
    i, j = np.indices((d, d))
    dist = np.minimum(np.abs(i - j), d - np.abs(i - j))
    expected = theta ** (-np.maximum(0, r - dist) / r) - 1.0
    # Entries are at most 1/theta - 1 < 3; rounding in theta^(k/r) is ~1e-15.
    np.testing.assert_allclose(scheme.characteristic(d), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scheme.mean(d), np.full(d, theta), rtol=0, atol=1e-12)


@pytest.mark.parametrize("theta", [0.25, 0.5, 0.8])
def test_grid_characteristic_is_block_diagonal_of_ones(theta):
    d, r = 6, 3
    expected = (1 - theta) / theta * np.kron(np.eye(d // r), np.ones((r, r)))
    np.testing.assert_allclose(
        sd.GridBlock(1 - theta, r).characteristic(d), expected, rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        sd.Bernoulli(1 - theta).characteristic(d), (1 - theta) / theta * np.eye(d), atol=1e-12
    )


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _sampling_cases():
    rng = np.random.default_rng(11)
    real_masks = 1.0 + 0.5 * rng.standard_normal((5, 6))
    real_probs = rng.dirichlet(np.ones(5))
    binary_masks = np.array(
        [[1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 0, 1], [1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 0]],
        dtype=float,
    )
    binary_probs = np.array([0.2, 0.3, 0.4, 0.1])
    d = 6
    return [
        ("bernoulli", sd.Bernoulli(0.3), bernoulli_law(0.3, d), True),
        ("dropconnect", sd.DropConnect(0.6), bernoulli_law(0.6, d), True),
        ("grid", sd.GridBlock(0.4, 2), grid_law(0.4, 2, d), True),
        ("grid3", sd.GridBlock(0.5, 3), grid_law(0.5, 3, d), True),
        ("valid", sd.SlidingBlock(0.4, 3, "valid"), sliding_law(0.4, 3, d, "valid"), True),
        ("clipped", sd.SlidingBlock(0.4, 2, "clipped"), sliding_law(0.4, 2, d, "clipped"), True),
        ("ring", sd.SlidingBlock(0.3, 3, "ring"), sliding_law(0.3, 3, d, "ring"), True),
        (
            "discrete-binary",
            sd.Discrete(binary_masks, binary_probs),
            (binary_masks, binary_probs),
            True,
        ),
        ("discrete-real", sd.Discrete(real_masks, real_probs), (real_masks, real_probs), False),
    ]


SAMPLING_CASES = _sampling_cases()
SAMPLING_IDS = [case[0] for case in SAMPLING_CASES]


@pytest.mark.parametrize(("name", "scheme", "law", "binary"), SAMPLING_CASES, ids=SAMPLING_IDS)
def test_sample_shape_dtype_and_support(name, scheme, law, binary):
    z_support, _ = law
    d = z_support.shape[1]
    masks = scheme.sample(50, d, generator=0)
    assert isinstance(masks, np.ndarray)
    assert masks.shape == (50, d)
    assert masks.dtype == np.float64
    if binary:
        assert set(np.unique(masks)) <= {0.0, 1.0}
    # Every sampled row is in the support of the law.
    for row in masks:
        assert np.any(np.all(np.isclose(z_support, row, rtol=0, atol=1e-12), axis=1)), row
    assert scheme.sample(1, d, generator=1).shape == (1, d)


@pytest.mark.parametrize(("name", "scheme", "law", "binary"), SAMPLING_CASES, ids=SAMPLING_IDS)
def test_sample_is_reproducible_with_seed_or_generator(name, scheme, law, binary):
    d = law[0].shape[1]
    a = scheme.sample(200, d, generator=1234)
    b = scheme.sample(200, d, generator=1234)
    np.testing.assert_array_equal(a, b)
    c = scheme.sample(200, d, generator=np.random.default_rng(99))
    e = scheme.sample(200, d, generator=np.random.default_rng(99))
    np.testing.assert_array_equal(c, e)
    # A generator is advanced, not reset: two draws from one generator differ.
    gen = np.random.default_rng(5)
    first = scheme.sample(200, d, generator=gen)
    second = scheme.sample(200, d, generator=gen)
    assert not np.array_equal(first, second)
    # Without a generator it still works.
    assert scheme.sample(3, d).shape == (3, d)


# Bound for the empirical moments. With n = 20000 iid masks each empirical mean and each
# centred cross moment is a mean of n iid terms with an exactly known variance (from the
# enumerated law), so by the CLT it is within z standard deviations except with probability
# P(|N(0,1)| > 5) = 5.7e-7. There are d + d(d+1)/2 = 27 statistics per law and 9 laws, so by
# the union bound (Bonferroni) a correct sampler fails this test with probability below
# 243 * 5.7e-7 < 1.5e-4. The seeds are fixed, so the outcome is deterministic anyway.
Z_BOUND = 5.0
N_SAMPLES = 20000


@pytest.mark.parametrize(("name", "scheme", "law", "binary"), SAMPLING_CASES, ids=SAMPLING_IDS)
def test_sample_empirical_moments_match_exact_moments(name, scheme, law, binary):
    z_support, probs = law
    d = z_support.shape[1]
    mu, cov = moments(z_support, probs)
    # Exact per-entry variances of z_i and of (z_i - mu_i)(z_j - mu_j).
    centred = z_support - mu
    var_mean = probs @ centred**2
    prods = centred[:, :, None] * centred[:, None, :]
    var_cross = np.einsum("k,kij->ij", probs, prods**2) - cov**2
    sd_mean = np.sqrt(np.maximum(var_mean, 0.0))
    sd_cross = np.sqrt(np.maximum(var_cross, 0.0))

    masks = scheme.sample(N_SAMPLES, d, generator=2024)
    emp_mu = masks.mean(axis=0)
    emp_cov = (masks - emp_mu).T @ (masks - emp_mu) / N_SAMPLES
    root_n = math.sqrt(N_SAMPLES)
    mean_bound = Z_BOUND * sd_mean / root_n + 1e-12
    np.testing.assert_array_less(np.abs(emp_mu - mu), mean_bound)
    # emp_cov = mean((z - mu)(z - mu)^T) - (emp_mu - mu)(emp_mu - mu)^T; the second term is
    # bounded by the product of the two mean bounds once the mean check above has passed.
    cov_bound = Z_BOUND * sd_cross / root_n + np.outer(mean_bound, mean_bound) + 1e-12
    np.testing.assert_array_less(np.abs(emp_cov - cov), cov_bound)
    # The scheme's own moments agree with the enumeration (checked exactly elsewhere).
    np.testing.assert_allclose(scheme.mean(d), mu, atol=1e-12)
    np.testing.assert_allclose(scheme.covariance(d), cov, atol=1e-12)


def test_grid_samples_are_constant_on_blocks():
    masks = sd.GridBlock(0.5, 3).sample(500, 9, generator=3)
    blocks = masks.reshape(500, 3, 3)
    assert np.all(blocks == blocks[:, :, :1])


# --------------------------------------------------------------------------------------------
# Properties over random parameters
# --------------------------------------------------------------------------------------------


@st.composite
def schemes_and_widths(draw):
    kind = draw(st.sampled_from(["bernoulli", "dropconnect", "grid", *BOUNDARIES]))
    p = draw(st.floats(min_value=0.0, max_value=0.95, allow_nan=False))
    if kind == "bernoulli":
        d = draw(st.integers(1, 12))
        return sd.Bernoulli(p), d, p
    if kind == "dropconnect":
        d = draw(st.integers(1, 12))
        return sd.DropConnect(p), d, p
    if kind == "grid":
        r = draw(st.integers(1, 4))
        d = r * draw(st.integers(1, 4))
        return sd.GridBlock(p, r), d, p
    d = draw(st.integers(1, 12))
    max_r = d if kind == "ring" else d + 3
    r = draw(st.integers(1, max_r))
    return sd.SlidingBlock(p, r, boundary=kind), d, p


@settings(max_examples=30, deadline=None)
@given(schemes_and_widths())
def test_moments_are_valid_for_random_parameters(case):
    scheme, d, p = case
    mu = np.asarray(scheme.mean(d))
    cov = np.asarray(scheme.covariance(d))
    cbar = np.asarray(scheme.characteristic(d))
    # Every unit is kept with probability at least theta (a unit is covered by at most r
    # windows of drop rate 1 - theta^(1/r)), and at most 1.
    assert np.all(mu > 0.0)
    assert np.all(mu <= 1.0 + 1e-15)
    assert np.all(mu >= (1.0 - p) * (1 - 1e-12))
    np.testing.assert_array_equal(cov, cov.T)
    # Entries are O(1) with rounding ~1e-16 each; eigenvalues move by at most d times that.
    assert np.min(np.linalg.eigvalsh(cov)) >= -1e-12
    # Cbar entries are at most 1/theta^2 <= 400 here; relative rounding ~1e-16 per entry.
    np.testing.assert_allclose(cbar, cov / np.outer(mu, mu), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cbar, cbar.T, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 6),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_discrete_covariance_is_psd_for_random_laws(m, d, seed):
    rng = np.random.default_rng(seed)
    masks = 1.0 + rng.random((m, d))  # strictly positive entries: no unit has mean zero
    probs = rng.dirichlet(np.ones(m))
    scheme = sd.Discrete(masks, probs)
    cov = np.asarray(scheme.covariance(d))
    mu, expected = moments(masks, probs)
    # Entries are in [0, 4]; sums of at most 6 products.
    np.testing.assert_allclose(cov, expected, rtol=0, atol=1e-12)
    assert np.min(np.linalg.eigvalsh(cov)) >= -1e-12
    np.testing.assert_allclose(
        scheme.characteristic(d), cov / np.outer(mu, mu), rtol=1e-10, atol=1e-12
    )


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------

P_FACTORIES = {
    "bernoulli": lambda p: sd.Bernoulli(p),
    "grid": lambda p: sd.GridBlock(p, 2),
    "sliding": lambda p: sd.SlidingBlock(p, 2),
    "dropconnect": lambda p: sd.DropConnect(p),
}


@pytest.mark.parametrize("bad_p", [1.3, -0.1, 1.0, float("nan")])
@pytest.mark.parametrize("kind", sorted(P_FACTORIES))
def test_drop_probability_outside_unit_interval_is_rejected(kind, bad_p):
    with pytest.raises(ValueError) as info:
        P_FACTORIES[kind](bad_p)
    assert str(bad_p).lower() in str(info.value).lower()


@pytest.mark.parametrize("bad_r", [0, -2])
@pytest.mark.parametrize("cls", [sd.GridBlock, sd.SlidingBlock])
def test_block_size_below_one_is_rejected(cls, bad_r):
    with pytest.raises(ValueError) as info:
        cls(0.5, bad_r)
    assert str(bad_r) in str(info.value)
    assert "block_size" in str(info.value)


@pytest.mark.parametrize("bad_r", [2.5, "3"])
@pytest.mark.parametrize("cls", [sd.GridBlock, sd.SlidingBlock])
def test_non_integer_block_size_is_rejected(cls, bad_r):
    with pytest.raises((TypeError, ValueError)) as info:
        cls(0.5, bad_r)
    assert str(bad_r) in str(info.value)


@pytest.mark.parametrize("method", ["mean", "covariance", "characteristic"])
def test_grid_block_width_not_divisible_by_block_size_is_rejected(method):
    scheme = sd.GridBlock(0.5, 3)
    with pytest.raises(ValueError) as info:
        getattr(scheme, method)(8)
    assert "3" in str(info.value)
    assert "8" in str(info.value)


def test_grid_block_sample_with_indivisible_width_is_rejected():
    with pytest.raises(ValueError) as info:
        sd.GridBlock(0.5, 3).sample(4, 8, generator=0)
    assert "8" in str(info.value)


def test_unknown_boundary_is_rejected():
    with pytest.raises(ValueError) as info:
        sd.SlidingBlock(0.5, 2, boundary="torus")
    assert "torus" in str(info.value)


@pytest.mark.parametrize("bad_gamma", [1.0, 1.5, -0.2, float("nan")])
def test_window_drop_probability_outside_unit_interval_is_rejected(bad_gamma):
    with pytest.raises(ValueError) as info:
        sd.SlidingBlock(0.5, 2, gamma=bad_gamma)
    assert str(bad_gamma).lower() in str(info.value).lower()


def test_discrete_probs_not_summing_to_one_are_rejected():
    with pytest.raises(ValueError) as info:
        sd.Discrete(np.ones((2, 3)), np.array([0.5, 0.25]))
    assert "0.75" in str(info.value)


def test_discrete_negative_probs_are_rejected():
    with pytest.raises(ValueError) as info:
        sd.Discrete(np.ones((2, 3)), np.array([1.5, -0.5]))
    assert "-0.5" in str(info.value)


@pytest.mark.parametrize(
    ("masks", "probs"),
    [
        (np.ones((3, 4)), np.full(2, 0.5)),
        (np.ones(4), np.array([1.0])),
        (np.ones((2, 4)), np.full((2, 1), 0.5)),
    ],
    ids=["rows-vs-probs", "masks-1d", "probs-2d"],
)
def test_discrete_mismatched_shapes_are_rejected(masks, probs):
    with pytest.raises(ValueError) as info:
        sd.Discrete(masks, probs)
    message = str(info.value)
    assert "masks" in message or "probs" in message


def test_discrete_nan_in_masks_is_rejected():
    masks = np.ones((2, 3))
    masks[1, 2] = np.nan
    with pytest.raises(ValueError) as info:
        sd.Discrete(masks, np.array([0.5, 0.5]))
    assert "nan" in str(info.value).lower()


def test_discrete_unit_with_zero_mean_is_rejected():
    # Unit 3 has mean 0.5 * 1 + 0.5 * (-1) = 0, so Cbar is undefined.
    masks = np.array([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, -1.0]])
    with pytest.raises(ValueError) as info:
        scheme = sd.Discrete(masks, np.array([0.5, 0.5]))
        scheme.characteristic(4)
    assert "3" in str(info.value)


def test_discrete_width_must_match_masks():
    scheme = sd.Discrete(np.ones((2, 3)), np.array([0.5, 0.5]))
    with pytest.raises(ValueError) as info:
        scheme.mean(4)
    assert "4" in str(info.value)
    with pytest.raises(ValueError):
        scheme.sample(5, 4, generator=0)


@pytest.mark.parametrize("bad_n", [0, -3])
@pytest.mark.parametrize("kind", sorted(P_FACTORIES))
def test_sample_with_fewer_than_one_mask_is_rejected(kind, bad_n):
    scheme = P_FACTORIES[kind](0.5)
    with pytest.raises(ValueError) as info:
        scheme.sample(bad_n, 4, generator=0)
    assert str(bad_n) in str(info.value)


def test_discrete_sample_with_fewer_than_one_mask_is_rejected():
    scheme = sd.Discrete(np.ones((2, 3)), np.array([0.5, 0.5]))
    with pytest.raises(ValueError) as info:
        scheme.sample(0, 3, generator=0)
    assert "0" in str(info.value)


# ------------------------------------------------------------------------------------------------
# Identity: to_dict / from_dict
# ------------------------------------------------------------------------------------------------
def _every_law(draw) -> tuple[sd.Scheme, int]:
    """A law and a width it acts on."""
    p = draw(st.floats(0.0, 0.99))
    r = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["bernoulli", "grid", "sliding", "dropconnect", "discrete"]))
    if kind == "bernoulli":
        return sd.Bernoulli(p), 2
    if kind == "grid":
        return sd.GridBlock(p, r), 2 * r
    if kind == "dropconnect":
        return sd.DropConnect(p), 2
    if kind == "sliding":
        boundary = draw(st.sampled_from(BOUNDARIES))
        gamma = draw(st.none() | st.floats(0.0, 0.99))
        return sd.SlidingBlock(p, r, boundary, gamma=gamma), 2 * r
    m, d = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    masks = draw(
        st.lists(st.lists(st.floats(0.1, 3.0), min_size=d, max_size=d), min_size=m, max_size=m)
    )
    weights = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=m, max_size=m)))
    return sd.Discrete(np.array(masks), weights / weights.sum()), d


@settings(max_examples=60)
@given(st.data())
def test_every_law_round_trips_through_json(data) -> None:
    """``from_dict(to_dict())`` through a JSON file is the same law, bit for bit: equal, same
    identity, same moments."""
    law, d = _every_law(data.draw)
    stored = json.loads(json.dumps(law.to_dict(), allow_nan=False))
    back = sd.Scheme.from_dict(stored)
    assert type(back) is type(law) and back == law and hash(back) == hash(law)
    assert back.to_dict() == law.to_dict()
    np.testing.assert_array_equal(back.mean(d), law.mean(d))
    np.testing.assert_array_equal(back.second_moment(d), law.second_moment(d))


def test_identity_tells_laws_apart() -> None:
    masks = np.array([[1.0, 0.0], [0.0, 1.0]])
    first, second = sd.Discrete(masks, [0.5, 0.5]), sd.Discrete(masks, [0.25, 0.75])
    assert first.to_dict() != second.to_dict() and first != second
    assert repr(first) != repr(second)  # same shape, different laws: different names
    assert sd.Discrete(masks, [0.5, 0.5]) == first
    assert sd.Bernoulli(0.5).to_dict() != sd.DropConnect(0.5).to_dict()
    assert sd.SlidingBlock(0.3, 3, gamma=0.1) != sd.SlidingBlock(0.3, 3)
    assert sd.GridBlock(0.5, 5).to_dict() == {"law": "GridBlock", "p": 0.5, "block_size": 5}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"law": "Gaussian", "p": 0.5}, "unknown mask law 'Gaussian'"),
        ({"p": 0.5}, "must be a dict with a 'law' entry"),
        ("Bernoulli(p=0.5)", "must be a dict with a 'law' entry"),
        ({"law": "Bernoulli", "q": 0.5}, "invalid parameters for Bernoulli"),
        ({"law": "Bernoulli", "p": 1.5}, r"p must be in \[0, 1\)"),
        ({"law": "_Independent", "p": 0.5}, "unknown mask law"),
    ],
)
def test_from_dict_refuses_what_is_not_a_law(data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sd.Scheme.from_dict(data)
