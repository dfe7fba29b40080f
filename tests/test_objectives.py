"""Objectives: exact expected losses and penalties against enumeration of every mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import structdrop as sd
from oracles import (
    BOUNDARIES,
    bernoulli_law,
    characteristic,
    discrete_binary_law,
    discrete_real_law,
    dropconnect_u_loss,
    dropconnect_v_loss,
    feature_loss,
    gaussian_problem,
    grid_law,
    linear_loss,
    sliding_law,
    sq_norm,
    two_point_law,
)

# Enumerated expectations are sums of at most 4096 nonnegative terms of size O(10-100), each
# accurate to a few ulps, and the library's closed forms are a handful of O(d^2) reductions:
# both sides agree to ~1e-14 relative, so 1e-10 only fails on a genuine formula error.
RTOL = 1e-10


def feature_cases(d):
    """(id, scheme, enumerated law) for every mask-on-features scheme at width d."""
    cases = [
        ("bernoulli-0.3", sd.Bernoulli(0.3), bernoulli_law(0.3, d)),
        ("bernoulli-0.7", sd.Bernoulli(0.7), bernoulli_law(0.7, d)),
        ("grid-2", sd.GridBlock(0.4, 2), grid_law(0.4, 2, d)),
        ("grid-3", sd.GridBlock(0.6, 3), grid_law(0.6, 3, d)),
        ("grid-d", sd.GridBlock(0.5, d), grid_law(0.5, d, d)),
    ]
    for boundary in BOUNDARIES:
        for r in (2, 3):
            cases.append(
                (
                    f"sliding-{boundary}-{r}",
                    sd.SlidingBlock(0.35, r, boundary=boundary),
                    sliding_law(0.35, r, d, boundary),
                )
            )
    cases.append(
        (
            "sliding-clipped-gamma",
            sd.SlidingBlock(0.35, 4, boundary="clipped", gamma=0.2),
            sliding_law(0.35, 4, d, "clipped", gamma=0.2),
        )
    )
    masks, probs = discrete_binary_law(d)
    cases.append(("discrete-binary", sd.Discrete(masks, probs), (masks, probs)))
    masks, probs = discrete_real_law(d)
    cases.append(("discrete-real", sd.Discrete(masks, probs), (masks, probs)))
    masks, probs = two_point_law(d)
    cases.append(("discrete-two-point", sd.Discrete(masks, probs), (masks, probs)))
    return cases


D = 6
FEATURE_CASES = feature_cases(D)
FEATURE_IDS = [case[0] for case in FEATURE_CASES]


# --------------------------------------------------------------------------------------------
# Exact expectations by enumeration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scheme", "law"), FEATURE_CASES, ids=FEATURE_IDS)
def test_expected_loss_matches_enumeration_of_all_masks(name, scheme, law):
    Y, U, V, X = gaussian_problem(2, 3, D, 5, seed=1)
    expected = linear_loss(Y, U, V, X, *law)
    got = sd.expected_loss(Y, U, V, X, scheme)
    assert float(got) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize(("name", "scheme", "law"), FEATURE_CASES, ids=FEATURE_IDS)
def test_penalty_matches_enumerated_excess_loss(name, scheme, law):
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((3, 4))
    U = rng.standard_normal((3, D))
    G = rng.standard_normal((D, 4))
    expected = feature_loss(Y, U, G, *law) - sq_norm(Y - U @ G)
    got = float(sd.penalty(U, G, scheme))
    # The difference of two O(50) numbers: absolute error ~1e-13, the penalty is O(10).
    assert got == pytest.approx(expected, rel=RTOL, abs=1e-11)
    # The penalty does not depend on Y: check with another target.
    Y2 = 5.0 * rng.standard_normal((3, 4))
    assert got == pytest.approx(feature_loss(Y2, U, G, *law) - sq_norm(Y2 - U @ G), rel=1e-9)


@pytest.mark.parametrize("p", [0.25, 0.5, 0.8])
@pytest.mark.parametrize(("b", "d"), [(3, 4), (2, 5), (1, 3)])
def test_dropconnect_expected_loss_matches_enumeration_of_weight_masks(b, d, p):
    # b * d <= 12 entries of V, so at most 4096 masks.
    Y, U, V, X = gaussian_problem(2, b, d, 4, seed=3)
    expected = dropconnect_v_loss(Y, U, V, X, p)
    got = float(sd.expected_loss(Y, U, V, X, sd.DropConnect(p)))
    assert got == pytest.approx(expected, rel=RTOL)
    pen = float(sd.linear_penalty(U, V, X, sd.DropConnect(p)))
    assert pen == pytest.approx(expected - sq_norm(Y - U @ V.T @ X), rel=1e-9, abs=1e-11)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.7])
def test_dropconnect_penalty_on_last_layer_equals_dropout(p):
    # penalty(U, G, DropConnect) masks the entries of U; enumerate all 2^(a d) masks.
    rng = np.random.default_rng(4)
    a, d, n = 3, 4, 5
    Y = rng.standard_normal((a, n))
    U = rng.standard_normal((a, d))
    G = rng.standard_normal((d, n))
    expected = dropconnect_u_loss(Y, U, G, p) - sq_norm(Y - U @ G)
    got = float(sd.penalty(U, G, sd.DropConnect(p)))
    assert got == pytest.approx(expected, rel=RTOL, abs=1e-11)
    assert got == pytest.approx(float(sd.penalty(U, G, sd.Bernoulli(p))), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Corrections to the paper
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [0.3, 0.7, 0.9])
def test_dropout_penalty_has_the_factor_missing_from_eq_17(theta):
    # Cor. 3.2, eq. 17 / 48 state Omega = sum_i ||u_i||^2 ||g_i||^2. Enumeration shows the
    # factor (1 - theta)/theta is needed; at theta != 0.5 the paper's form is off by it.
    rng = np.random.default_rng(5)
    Y = rng.standard_normal((2, 5))
    U = rng.standard_normal((2, 5))
    G = rng.standard_normal((5, 5))
    p = 1.0 - theta
    truth = feature_loss(Y, U, G, *bernoulli_law(p, 5)) - sq_norm(Y - U @ G)
    paper = float(np.sum(np.sum(U**2, axis=0) * np.sum(G**2, axis=1)))
    ours = float(sd.penalty(U, G, sd.Bernoulli(p)))
    assert ours == pytest.approx(truth, rel=RTOL)
    assert truth == pytest.approx((1 - theta) / theta * paper, rel=RTOL)
    # (1 - theta)/theta is 7/3, 3/7 or 1/9 here, far from 1.
    assert abs(paper - truth) > 0.5 * truth


def test_dropout_penalty_agrees_with_eq_17_at_theta_one_half():
    rng = np.random.default_rng(6)
    U = rng.standard_normal((2, 4))
    G = rng.standard_normal((4, 3))
    paper = float(np.sum(np.sum(U**2, axis=0) * np.sum(G**2, axis=1)))
    assert float(sd.penalty(U, G, sd.Bernoulli(0.5))) == pytest.approx(paper, rel=RTOL)


def _correlated_inputs(n, seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n)
    rows = [base + 0.3 * rng.standard_normal(n) for _ in range(3)]
    return np.array(rows)


def _orthogonal_rows(b, n, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, b)))
    return np.diag([1.0, 2.5, 0.4][:b]) @ q.T


def _dropout_form(U, V, X, theta):
    # Thm 4.1's claim: DropConnect regularizes like Dropout,
    # (1 - theta)/theta * sum_i ||u_i||^2 ||X^T v_i||^2.
    return (
        (1 - theta) / theta * float(np.sum(np.sum(U**2, axis=0) * np.sum((X.T @ V) ** 2, axis=0)))
    )


@pytest.mark.parametrize("p", [0.3, 0.6])
def test_dropconnect_differs_from_dropout_when_inputs_are_correlated(p):
    theta = 1 - p
    rng = np.random.default_rng(8)
    X = _correlated_inputs(6, seed=9)
    assert abs(np.corrcoef(X)[0, 1]) > 0.5  # X X^T is far from diagonal
    Y = rng.standard_normal((2, 6))
    U = rng.standard_normal((2, 4))
    V = np.abs(rng.standard_normal((3, 4)))  # same-sign weights: the cross terms add up
    truth = dropconnect_v_loss(Y, U, V, X, p) - sq_norm(Y - U @ V.T @ X)
    dropout = _dropout_form(U, V, X, theta)
    ours = float(sd.linear_penalty(U, V, X, sd.DropConnect(p)))
    assert ours == pytest.approx(truth, rel=1e-9)
    assert abs(dropout - truth) > 0.1 * truth
    # The corrected closed form of the notes.
    row_norms = np.sum(X**2, axis=1)
    corrected = (1 - theta) / theta * float(np.sum(np.sum(U**2, axis=0) * (row_norms @ V**2)))
    assert truth == pytest.approx(corrected, rel=1e-9)


@pytest.mark.parametrize("p", [0.3, 0.6])
def test_dropconnect_equals_dropout_when_input_gram_is_diagonal(p):
    theta = 1 - p
    rng = np.random.default_rng(10)
    X = _orthogonal_rows(3, 6, seed=11)
    gram = X @ X.T
    assert np.max(np.abs(gram - np.diag(np.diag(gram)))) < 1e-14
    Y = rng.standard_normal((2, 6))
    U = rng.standard_normal((2, 4))
    V = rng.standard_normal((3, 4))
    truth = dropconnect_v_loss(Y, U, V, X, p) - sq_norm(Y - U @ V.T @ X)
    dropout = _dropout_form(U, V, X, theta)
    assert truth == pytest.approx(dropout, rel=1e-9)
    assert float(sd.linear_penalty(U, V, X, sd.DropConnect(p))) == pytest.approx(truth, rel=1e-9)
    assert float(sd.linear_penalty(U, V, X, sd.Bernoulli(p))) == pytest.approx(truth, rel=1e-9)


def _kron_mask_loss(Y, U, V, X, theta, w_len, rep):
    """E ||Y - (1/theta) U (diag(w) kron I_rep) V^T X||^2 over all w in {0,1}^w_len."""
    total = 0.0
    for w in bernoulli_law(1 - theta, w_len)[0]:
        prob = theta ** w.sum() * (1 - theta) ** (w_len - w.sum())
        mask = np.kron(np.diag(w), np.eye(rep))
        total += prob * sq_norm(Y - U @ mask @ V.T @ X / theta)
    return total


def _block_formula(U, V, X, theta, r):
    d = U.shape[1]
    blocks = [slice(i, i + r) for i in range(0, d, r)]
    return (1 - theta) / theta * sum(sq_norm(U[:, s] @ V[:, s].T @ X) for s in blocks)


@pytest.mark.parametrize(("d", "r"), [(6, 2), (6, 3), (8, 2)])
def test_grid_dropblock_needs_kron_with_identity_of_block_size(d, r):
    # Lemma 2.1, eq. 3: with w of length d/r, diag(w) kron I_r gives the block formula;
    # the printed diag(w) kron I_{d/r} (w of length r to be d x d) is DropBlock with
    # blocks of d/r units, a different regularizer when r != d/r.
    theta = 0.6
    Y, U, V, X = gaussian_problem(2, 3, d, 4, seed=12)
    fit = sq_norm(Y - U @ V.T @ X)
    right = _kron_mask_loss(Y, U, V, X, theta, d // r, r)
    printed = _kron_mask_loss(Y, U, V, X, theta, r, d // r)
    formula = _block_formula(U, V, X, theta, r)
    assert right - fit == pytest.approx(formula, rel=1e-9)
    ours = float(sd.expected_loss(Y, U, V, X, sd.GridBlock(1 - theta, r)))
    assert ours == pytest.approx(right, rel=RTOL)
    assert abs((printed - fit) - formula) > 0.01 * formula


def test_grid_dropblock_kron_forms_coincide_when_block_size_is_sqrt_width():
    theta, d, r = 0.6, 4, 2
    Y, U, V, X = gaussian_problem(2, 3, d, 4, seed=13)
    right = _kron_mask_loss(Y, U, V, X, theta, d // r, r)
    printed = _kron_mask_loss(Y, U, V, X, theta, r, d // r)
    assert right == pytest.approx(printed, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Gram form
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scheme", "law"), FEATURE_CASES, ids=FEATURE_IDS)
def test_linear_penalty_equals_penalty_on_hidden_features(name, scheme, law):
    _, U, V, X = gaussian_problem(3, 4, D, 7, seed=14)
    direct = float(sd.penalty(U, V.T @ X, scheme))
    gram = float(sd.linear_penalty(U, V, X, scheme))
    assert gram == pytest.approx(direct, rel=1e-12, abs=1e-12)


@st.composite
def gram_problems(draw):
    a = draw(st.integers(1, 4))
    b = draw(st.integers(1, 4))
    n = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["bernoulli", "grid", *BOUNDARIES, "discrete"]))
    r = draw(st.integers(1, 3))
    d = r * draw(st.integers(1, 3)) if kind == "grid" else draw(st.integers(1, 6))
    p = draw(st.floats(0.0, 0.9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((a, n))
    U = rng.standard_normal((a, d))
    V = rng.standard_normal((b, d))
    X = rng.standard_normal((b, n))
    if draw(st.booleans()):  # rank-deficient X: repeated rows
        X = np.tile(X[:1], (b, 1))
    if draw(st.booleans()):  # zero columns of U and a zero row of V
        U[:, 0] = 0.0
        V[-1, :] = 0.0
    if draw(st.booleans()):
        X = np.zeros_like(X)
    if kind == "bernoulli":
        scheme, law = sd.Bernoulli(p), bernoulli_law(p, d)
    elif kind == "grid":
        scheme, law = sd.GridBlock(p, r), grid_law(p, r, d)
    elif kind == "discrete":
        masks = 1.0 + rng.random((3, d))
        probs = rng.dirichlet(np.ones(3))
        scheme, law = sd.Discrete(masks, probs), (masks, probs)
    else:
        if kind == "ring":
            r = min(r, d)
        scheme, law = sd.SlidingBlock(p, r, boundary=kind), sliding_law(p, r, d, kind)
    return Y, U, V, X, scheme, law


@settings(max_examples=30, deadline=None)
@given(gram_problems())
def test_gram_form_equals_direct_evaluation(case):
    Y, U, V, X, scheme, law = case
    G = V.T @ X
    cbar = characteristic(*law)
    direct = float(np.sum(cbar * (U.T @ U) * (G @ G.T)))
    fit = sq_norm(Y - U @ G)
    # Terms are O(1)-O(100) with Cbar <= 100 (theta >= 0.1); 1e-9 absolute covers rounding.
    scale = 1.0 + sq_norm(Y) + sq_norm(U) * sq_norm(G) * (1 + float(np.max(np.abs(cbar))))
    tol = 1e-12 * scale
    assert float(sd.linear_penalty(U, V, X, scheme)) == pytest.approx(direct, abs=tol)
    assert float(sd.penalty(U, G, scheme)) == pytest.approx(direct, abs=tol)
    assert float(sd.expected_loss(Y, U, V, X, scheme)) == pytest.approx(fit + direct, abs=tol)
