"""Objectives: NumPy, float32 and torch inputs, gradients, and input validation."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import structdrop as sd
from oracles import discrete_binary_law, gaussian_problem

# --------------------------------------------------------------------------------------------
# Array kinds and gradients
# --------------------------------------------------------------------------------------------

KIND_SCHEMES = [
    ("bernoulli", sd.Bernoulli(0.3)),
    ("grid", sd.GridBlock(0.4, 2)),
    ("ring", sd.SlidingBlock(0.4, 2, boundary="ring")),
    ("valid", sd.SlidingBlock(0.4, 3, boundary="valid")),
    ("discrete", sd.Discrete(*discrete_binary_law(4))),
    ("dropconnect", sd.DropConnect(0.5)),
]
KIND_IDS = [case[0] for case in KIND_SCHEMES]


def _is_numpy_scalar_like(value):
    return isinstance(value, (np.ndarray, np.generic))


@pytest.mark.parametrize(("name", "scheme"), KIND_SCHEMES, ids=KIND_IDS)
def test_numpy_inputs_give_numpy_float64(name, scheme):
    Y, U, V, X = gaussian_problem(2, 3, 4, 5, seed=22)
    for value in (
        sd.penalty(U, V.T @ X, scheme),
        sd.linear_penalty(U, V, X, scheme),
        sd.expected_loss(Y, U, V, X, scheme),
    ):
        assert _is_numpy_scalar_like(value)
        assert value.dtype == np.float64
        assert np.ndim(value) == 0


@pytest.mark.parametrize(("name", "scheme"), KIND_SCHEMES, ids=KIND_IDS)
def test_float32_inputs_give_float32(name, scheme):
    Y, U, V, X = gaussian_problem(2, 3, 4, 5, seed=23)
    exact = float(sd.expected_loss(Y, U, V, X, scheme))
    Y32, U32, V32, X32 = (A.astype(np.float32) for A in (Y, U, V, X))
    for value in (
        sd.penalty(U32, V32.T @ X32, scheme),
        sd.linear_penalty(U32, V32, X32, scheme),
        sd.expected_loss(Y32, U32, V32, X32, scheme),
    ):
        assert _is_numpy_scalar_like(value)
        assert value.dtype == np.float32
    # float32 rounding (eps 6e-8) through a few O(d^2) reductions: 1e-4 relative is ample.
    value = float(sd.expected_loss(Y32, U32, V32, X32, scheme))
    assert value == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize(("name", "scheme"), KIND_SCHEMES, ids=KIND_IDS)
def test_torch_inputs_give_torch_outputs_with_same_values(name, scheme):
    Y, U, V, X = gaussian_problem(2, 3, 4, 5, seed=24)
    tY, tU, tV, tX = (torch.from_numpy(A) for A in (Y, U, V, X))
    pairs = [
        (sd.penalty(tU, tV.T @ tX, scheme), sd.penalty(U, V.T @ X, scheme)),
        (sd.linear_penalty(tU, tV, tX, scheme), sd.linear_penalty(U, V, X, scheme)),
        (sd.expected_loss(tY, tU, tV, tX, scheme), sd.expected_loss(Y, U, V, X, scheme)),
    ]
    for t_value, n_value in pairs:
        assert isinstance(t_value, torch.Tensor)
        assert t_value.dtype == torch.float64
        # Same formula, possibly a different summation order: 1e-12 relative.
        assert float(t_value) == pytest.approx(float(n_value), rel=1e-12)
    f32 = sd.expected_loss(*(A.float() for A in (tY, tU, tV, tX)), scheme)
    assert isinstance(f32, torch.Tensor)
    assert f32.dtype == torch.float32


@pytest.mark.parametrize(("name", "scheme"), KIND_SCHEMES, ids=KIND_IDS)
def test_gradients_flow_through_penalty_and_expected_loss(name, scheme):
    Y, U, V, X = gaussian_problem(2, 3, 4, 3, seed=25)
    tY, tX = torch.from_numpy(Y), torch.from_numpy(X)
    tU = torch.from_numpy(U).requires_grad_(True)
    tV = torch.from_numpy(V).requires_grad_(True)

    def penalty(u, v):
        return sd.penalty(u, v.T @ tX, scheme)

    def loss(u, v):
        return sd.expected_loss(tY, u, v, tX, scheme)

    def linear(u, v):
        return sd.linear_penalty(u, v, tX, scheme)

    # gradcheck compares analytic and finite-difference Jacobians at its float64 defaults.
    assert torch.autograd.gradcheck(penalty, (tU, tV))
    assert torch.autograd.gradcheck(loss, (tU, tV))
    assert torch.autograd.gradcheck(linear, (tU, tV))
    value = loss(tU, tV)
    value.backward()
    assert tU.grad is not None
    assert tV.grad is not None
    assert torch.all(torch.isfinite(tU.grad))


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _mentions(error, *names):
    message = str(error.value)
    return any(re.search(rf"\b{re.escape(name)}\b", message) for name in names)


@pytest.mark.parametrize(
    ("shapes", "names"),
    [
        (((2, 5), (2, 4), (3, 4), (3, 6)), ("X", "Y")),  # N differs between Y and X
        (((2, 5), (2, 4), (3, 5), (3, 5)), ("U", "V")),  # d differs between U and V
        (((2, 5), (2, 4), (4, 4), (3, 5)), ("V", "X")),  # b differs between V and X
        (((3, 5), (2, 4), (3, 4), (3, 5)), ("Y", "U")),  # a differs between Y and U
    ],
    ids=["N", "d", "b", "a"],
)
def test_expected_loss_rejects_mismatched_shapes(shapes, names):
    Y, U, V, X = (np.ones(shape) for shape in shapes)
    with pytest.raises(ValueError) as info:
        sd.expected_loss(Y, U, V, X, sd.Bernoulli(0.5))
    assert _mentions(info, *names), str(info.value)


def test_penalty_rejects_mismatched_shapes():
    with pytest.raises(ValueError) as info:
        sd.penalty(np.ones((2, 4)), np.ones((3, 5)), sd.Bernoulli(0.5))
    assert _mentions(info, "U", "G"), str(info.value)
    with pytest.raises(ValueError) as info:
        sd.linear_penalty(np.ones((2, 4)), np.ones((3, 4)), np.ones((2, 5)), sd.Bernoulli(0.5))
    assert _mentions(info, "V", "X"), str(info.value)


def test_penalty_rejects_non_matrix_inputs():
    with pytest.raises(ValueError) as info:
        sd.penalty(np.ones(4), np.ones((4, 3)), sd.Bernoulli(0.5))
    assert _mentions(info, "U"), str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["Y", "U", "V", "X"])
def test_expected_loss_rejects_non_finite_entries(which, bad):
    arrays = dict(zip("YUVX", gaussian_problem(2, 3, 4, 5, seed=26), strict=True))
    arrays[which][0, 1] = bad
    with pytest.raises(ValueError) as info:
        sd.expected_loss(arrays["Y"], arrays["U"], arrays["V"], arrays["X"], sd.Bernoulli(0.5))
    assert _mentions(info, which), str(info.value)


@pytest.mark.parametrize("which", ["U", "G"])
def test_penalty_rejects_non_finite_entries(which):
    arrays = {"U": np.ones((2, 4)), "G": np.ones((4, 3))}
    arrays[which][1, 1] = np.nan
    with pytest.raises(ValueError) as info:
        sd.penalty(arrays["U"], arrays["G"], sd.Bernoulli(0.5))
    assert _mentions(info, which), str(info.value)


@pytest.mark.parametrize("which", ["U", "V", "X"])
def test_linear_penalty_rejects_non_finite_entries(which):
    arrays = dict(zip("UVX", gaussian_problem(2, 3, 4, 5, seed=27)[1:], strict=True))
    arrays[which][0, 0] = np.inf
    with pytest.raises(ValueError) as info:
        sd.linear_penalty(arrays["U"], arrays["V"], arrays["X"], sd.GridBlock(0.5, 2))
    assert _mentions(info, which), str(info.value)


def test_torch_non_finite_entries_are_rejected():
    Y, U, V, X = (torch.from_numpy(A) for A in gaussian_problem(2, 3, 4, 5, seed=28))
    X[1, 1] = float("nan")
    with pytest.raises(ValueError) as info:
        sd.expected_loss(Y, U, V, X, sd.Bernoulli(0.5))
    assert _mentions(info, "X"), str(info.value)


@pytest.mark.parametrize(
    "shapes",
    [((2, 0), (2, 4), (3, 4), (3, 0)), ((2, 5), (2, 0), (3, 0), (3, 5))],
    ids=["no-samples", "no-units"],
)
def test_expected_loss_rejects_empty_arrays(shapes):
    Y, U, V, X = (np.ones(shape) for shape in shapes)
    with pytest.raises(ValueError) as info:
        sd.expected_loss(Y, U, V, X, sd.Bernoulli(0.5))
    assert _mentions(info, "Y", "U", "V", "X"), str(info.value)


@pytest.mark.parametrize("bad_n", [0, -5])
def test_sampled_loss_rejects_fewer_than_one_sample(bad_n):
    Y, U, V, X = gaussian_problem(2, 3, 4, 5, seed=29)
    with pytest.raises(ValueError) as info:
        sd.sampled_loss(Y, U, V, X, sd.Bernoulli(0.5), bad_n, seed=0)
    assert "num_samples" in str(info.value)
    assert str(bad_n) in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda Y, U, V, X, s: sd.expected_loss(Y, U, V, X, s),
        lambda Y, U, V, X, s: sd.linear_penalty(U, V, X, s),
        lambda Y, U, V, X, s: sd.penalty(U, V.T @ X, s),
        lambda Y, U, V, X, s: sd.sampled_loss(Y, U, V, X, s, 10, seed=0),
    ],
    ids=["expected_loss", "linear_penalty", "penalty", "sampled_loss"],
)
def test_grid_block_size_not_dividing_width_is_rejected(call):
    Y, U, V, X = gaussian_problem(2, 3, 6, 5, seed=30)
    with pytest.raises(ValueError) as info:
        call(Y, U, V, X, sd.GridBlock(0.5, 4))
    assert "4" in str(info.value)
    assert "6" in str(info.value)


def test_discrete_width_must_match_number_of_units():
    Y, U, V, X = gaussian_problem(2, 3, 4, 5, seed=31)
    masks, probs = discrete_binary_law(5)
    with pytest.raises(ValueError):
        sd.expected_loss(Y, U, V, X, sd.Discrete(masks, probs))


class _CorrelatedWeightMasks(sd.Scheme):
    """A law on the entries of a weight matrix that are not independent: no formula of
    DropConnect's applies to it."""

    acts_on = "weights"

    @property
    def keep_prob(self) -> float:
        return 0.5

    def mean(self, d):
        return np.full(d, 0.5)

    def second_moment(self, d):
        return np.full((d, d), 0.5)  # all entries kept or dropped together

    def _sample(self, n, d, rng):
        return np.repeat((rng.random((n, 1)) < 0.5).astype(float), d, axis=1)


@pytest.mark.parametrize(
    "call",
    [
        lambda Y, U, V, X, s: sd.expected_loss(Y, U, V, X, s),
        lambda Y, U, V, X, s: sd.linear_penalty(U, V, X, s),
        lambda Y, U, V, X, s: sd.sampled_loss(Y, U, V, X, s, 10, seed=0),
    ],
    ids=["expected_loss", "linear_penalty", "sampled_loss"],
)
def test_masks_on_weights_must_be_independent(call):
    Y, U, V, X = gaussian_problem(2, 3, 4, 5, seed=33)
    with pytest.raises(ValueError, match="must be independent"):
        call(Y, U, V, X, _CorrelatedWeightMasks())
