"""Independent oracles for :mod:`structdrop.head` (statistics and report of a last layer).

Every number of :func:`structdrop.head_report` is checked against something computed another
way: real masks drawn by the library's layers and pushed through the head (Monte Carlo), the
exact expectation over every mask of a law (enumeration), L-BFGS on the objective written out
from the raw data, the closed-form optimum of Fig. 2 (:func:`structdrop.global_minimum`) and an
explicit factorization that attains the capacity bound. :class:`structdrop.HeadStats` is checked
against the whole-batch products, across batches, merges and two gloo processes.

Conventions (as the library's): samples are columns (``G`` is d x N, ``Y`` is a x N), objectives
carry no 1/2, ``p`` is the drop probability and ``theta = 1 - p``.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import structdrop as sd
from processes import free_port, join_gloo_group, spawn
from structdrop import nn as sdnn

WIDTH, OUTPUTS, SAMPLES = 8, 3, 40
P = 0.3  # theta/(1 - theta) = 0.43: distinct from 1 and from p, so wrong factors show

DISCRETE_MASKS = np.array(
    [
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [1, 0, 1, 0, 1, 0, 1, 0],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    dtype=np.float64,
)
DISCRETE_PROBS = np.array([0.25, 0.25, 0.2, 0.1, 0.2])

LAWS = {
    "bernoulli": sd.Bernoulli(P),
    "grid": sd.GridBlock(P, 2),
    "sliding": sd.SlidingBlock(P, 3, boundary="valid"),
    "dropconnect": sd.DropConnect(P),
    "discrete": sd.Discrete(DISCRETE_MASKS, DISCRETE_PROBS),
}
BLOCK_LAWS = {
    "bernoulli": sd.Bernoulli(P),
    "grid2": sd.GridBlock(P, 2),
    "grid4": sd.GridBlock(P, 4),
    "dropconnect": sd.DropConnect(P),
}


# --------------------------------------------------------------------------------------------
# Data and independent references
# --------------------------------------------------------------------------------------------


def _data(
    seed: int, labels: bool, n: int = SAMPLES, d: int = WIDTH, a: int = OUTPUTS
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """``(G, Y, targets)``: features with a mean (as after a ReLU-like trunk), one-hot labels
    or real targets that the features partly explain; ``targets`` as HeadStats takes them."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((d, n)) + 0.5
    if labels:
        y = rng.integers(0, a, n)
        return G, np.eye(a)[:, y], torch.as_tensor(y)
    Y = 0.3 * rng.standard_normal((a, d)) @ G + 0.5 * rng.standard_normal((a, n))
    return G, Y, torch.as_tensor(Y.T.copy())


def _stats(G: np.ndarray, targets: torch.Tensor) -> sd.HeadStats:
    d = G.shape[0]
    a = OUTPUTS if targets.ndim == 1 else targets.shape[-1]
    return sd.HeadStats(d, a).update(torch.as_tensor(G.T.copy()), targets)


def _head(
    G: np.ndarray, Y: np.ndarray, seed: int, bias: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """A head near the least-squares fit (so the fit does not drown the regularizer)."""
    rng = np.random.default_rng(seed + 1000)
    U = np.linalg.lstsq(G.T, Y.T, rcond=None)[0].T + 0.2 * rng.standard_normal(
        Y.shape[:1] + G.shape[:1]
    )
    if not bias:
        return U, None
    return U, Y.mean(1) - U @ G.mean(1) + 0.1 * rng.standard_normal(Y.shape[0])


def _fit(G: np.ndarray, Y: np.ndarray, U: np.ndarray, b: np.ndarray | None) -> float:
    residual = Y - U @ G - (0.0 if b is None else b[:, None])
    return float(np.sum(residual**2))


def _independent_blocks(theta: float, blocks: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Every mask of ``blocks`` independent blocks of r units kept with probability theta."""
    kept = np.array(list(itertools.product((0.0, 1.0), repeat=blocks)))
    counts = kept.sum(1)
    probs = theta**counts * (1.0 - theta) ** (blocks - counts)
    return np.repeat(kept, r, axis=1), probs


def _enumerated_law(scheme: sd.Scheme, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(masks, probs)``: every mask on the d units with its probability, written out from the
    law's documented definition (not from its moments)."""
    if isinstance(scheme, sd.Bernoulli | sd.DropConnect):  # DropConnect: its law on units
        return _independent_blocks(1.0 - scheme.p, d, 1)
    if isinstance(scheme, sd.GridBlock):
        return _independent_blocks(1.0 - scheme.p, d // scheme.block_size, scheme.block_size)
    if isinstance(scheme, sd.SlidingBlock):
        assert scheme.boundary == "valid" and scheme.block_size <= d
        r = scheme.block_size
        gamma = 1.0 - (1.0 - scheme.p) ** (1.0 / r)  # every interior unit drops with prob. p
        starts = d - r + 1  # windows [s, s + r) inside the d units
        dropped = np.array(list(itertools.product((0, 1), repeat=starts)))
        masks = np.ones((dropped.shape[0], d))
        for s in range(starts):
            masks[dropped[:, s] == 1, s : s + r] = 0.0
        counts = dropped.sum(1)
        return masks, gamma**counts * (1.0 - gamma) ** (starts - counts)
    if isinstance(scheme, sd.Discrete):
        return DISCRETE_MASKS, DISCRETE_PROBS
    raise AssertionError(f"no enumeration for {scheme!r}")


def _characteristic(scheme: sd.Scheme, d: int) -> np.ndarray:
    """``Cbar = E[z z^T] / (mu mu^T) - 1`` from the enumerated masks."""
    masks, probs = _enumerated_law(scheme, d)
    mu = probs @ masks
    return (masks.T * probs) @ masks / np.outer(mu, mu) - 1.0


def _relative_error(actual: float, expected: float) -> float:
    return abs(actual - expected) / max(abs(expected), np.finfo(float).tiny)


# --------------------------------------------------------------------------------------------
# 1. The regularizer and the objective: real masks through the head
# --------------------------------------------------------------------------------------------

DRAWS = 30_000  # passes over the N samples; the standard error is then below 1% of the
CHUNK = 10_000  # regularizer for every case here (asserted, so that 3 SE stays a tight test)


def _monte_carlo(
    G: np.ndarray,
    Y: np.ndarray,
    U: np.ndarray,
    b: np.ndarray | None,
    scheme: sd.Scheme,
    seed: int,
    draws: int = DRAWS,
) -> tuple[float, float]:
    """``(mean, standard error)`` of ``||Y - head(masked G)||^2`` over independent full passes,
    each with fresh masks drawn by the library's layers in training mode."""
    d, n = G.shape
    a = Y.shape[0]
    generator = torch.Generator().manual_seed(seed)
    masking: torch.nn.Module
    head: torch.nn.Module
    if scheme.acts_on == "weights":  # DropConnect: the head is the masked layer itself
        masking = torch.nn.Identity()
        head = sdnn.DropConnectLinear(
            d,
            a,
            scheme.p,
            bias=b is not None,
            per_sample=True,
            generator=generator,
            dtype=torch.float64,
        )
    else:
        masking = sdnn.StructuredDropout(scheme, generator=generator)
        head = torch.nn.Linear(d, a, bias=b is not None, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(U))
        if b is not None:
            head.bias.copy_(torch.from_numpy(b))
    masking.train()
    head.train()
    features = torch.from_numpy(G.T.copy())
    targets = torch.from_numpy(Y.T.copy())
    losses = []
    with torch.no_grad():
        for start in range(0, draws, CHUNK):
            k = min(CHUNK, draws - start)
            output = head(masking(features.expand(k, n, d)))
            losses.append(((targets - output) ** 2).sum(dim=(1, 2)))
    values = torch.cat(losses).numpy()
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(draws))


@pytest.mark.slow
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "real"])
@pytest.mark.parametrize("name", list(LAWS))
def test_objective_equals_monte_carlo_of_real_masks(name: str, labels: bool, bias: bool) -> None:
    """E||Y - head(masks * G / mu)||^2 = report.objective, and minus the exact fit, the
    regularizer: within 3 standard errors (a z-bound: a correct formula fails one such case in
    370 draws; the seeds are fixed, so the outcome is reproducible)."""
    scheme = LAWS[name]
    seed = 11 + 2 * labels + bias
    G, Y, targets = _data(seed, labels)
    U, b = _head(G, Y, seed, bias)
    report = sd.head_report(_stats(G, targets), U, scheme, bias=b)
    fit = _fit(G, Y, U, b)
    # the fit is a finite sum of N squares computed two ways: rounding only
    assert _relative_error(report.fit, fit) <= 1e-12
    mean, se = _monte_carlo(G, Y, U, b, scheme, seed=seed)
    assert se <= 0.01 * report.regularizer, "too few draws for 3 SE to be a tight test"
    assert abs(mean - report.objective) <= 3 * se, (
        f"{name}: Monte Carlo {mean:.6g} +- {se:.2g} vs report.objective {report.objective:.6g}"
    )
    assert abs((mean - fit) - report.regularizer) <= 3 * se, (
        f"{name}: Monte Carlo regularizer {mean - fit:.6g} +- {se:.2g} vs "
        f"report.regularizer {report.regularizer:.6g}"
    )


@pytest.mark.parametrize("name", ["bernoulli", "grid", "dropconnect"])
def test_monte_carlo_tells_plausible_wrong_regularizers_apart(name: str) -> None:
    """The Monte Carlo of the previous test is sharp enough to tell the regularizer of a law of
    independent blocks, ``(1-theta)/theta * sum_i ||U_i G_i||^2`` (blocks of r units), from
    plausible wrong ones: without the factor ``(1-theta)/theta``, with ``1-theta`` in its
    place, and (GridBlock) the diagonal alone (Dropout's at the same rate, without the
    within-block terms). The right one lies within 3 standard errors, the wrong ones outside."""
    scheme = LAWS[name]
    r = scheme.block_size if isinstance(scheme, sd.GridBlock) else 1
    G, Y, targets = _data(5, labels=True)
    U, b = _head(G, Y, 5, bias=False)
    mean, se = _monte_carlo(G, Y, U, b, scheme, seed=5)
    measured = mean - _fit(G, Y, U, b)
    blocks = sum(float(np.sum((U[:, i : i + r] @ G[i : i + r]) ** 2)) for i in range(0, WIDTH, r))
    diagonal = float(np.sum((U**2).sum(0) * (G**2).sum(1)))
    c = P / (1.0 - P)
    assert abs(measured - c * blocks) <= 3 * se
    report = sd.head_report(_stats(G, targets), U, scheme)
    assert _relative_error(report.regularizer, c * blocks) <= 1e-12
    wrong = {"no factor": blocks, "1 - theta": P * blocks}
    if r > 1:
        wrong["diagonal only"] = c * diagonal
    for what, value in wrong.items():
        assert abs(measured - value) > 3 * se, f"the Monte Carlo does not exclude {what}"


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("name", list(LAWS))
def test_regularizer_equals_expectation_over_every_mask(name: str, bias: bool) -> None:
    """The regularizer is ``E||U ((z/mu - 1) * G)||^2`` (the masks' noise through the head),
    here summed exactly over every mask of the law (at most 2^8 masks): equal to 1e-12
    relative (a sum of a few thousand nonnegative terms in float64)."""
    scheme = LAWS[name]
    G, Y, targets = _data(21, labels=False)
    U, b = _head(G, Y, 21, bias)
    masks, probs = _enumerated_law(scheme, WIDTH)
    noise = masks / (probs @ masks) - 1.0  # (m, d)
    through = np.einsum("ij,kj,jn->kin", U, noise, G)  # U ((z_k/mu - 1) * G)
    exact = float(probs @ (through**2).sum(axis=(1, 2)))
    report = sd.head_report(_stats(G, targets), U, scheme, bias=b)
    assert _relative_error(report.regularizer, exact) <= 1e-12
    assert _relative_error(report.objective, _fit(G, Y, U, b) + exact) <= 1e-12


# --------------------------------------------------------------------------------------------
# 2. The best head: L-BFGS on the objective written out from the raw data
# --------------------------------------------------------------------------------------------


def _lbfgs(
    G: np.ndarray, Y: np.ndarray, Cbar: np.ndarray, bias: bool
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """``min ||Y - U G - b 1^T||^2 + <Cbar, (U^T U) * (G G^T)>`` over U (and b), from zero."""
    a, d = Y.shape[0], G.shape[0]
    Q = Cbar * (G @ G.T)  # symmetric: the gradient of <U Q, U> is 2 U Q

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        U = x[: a * d].reshape(a, d)
        b = x[a * d :] if bias else np.zeros(a)
        residual = Y - U @ G - b[:, None]
        UQ = U @ Q
        value = float(np.sum(residual**2) + np.sum(UQ * U))
        grad_U = -2.0 * residual @ G.T + 2.0 * UQ
        grad_b = -2.0 * residual.sum(1)
        return value, np.concatenate([grad_U.ravel(), grad_b if bias else []])

    x = np.zeros(a * d + (a if bias else 0))
    options = {"maxiter": 20_000, "maxfun": 40_000, "maxcor": 50, "ftol": 1e-16, "gtol": 1e-12}
    for _ in range(3):  # restarts: L-BFGS-B may stop on a line search at this precision
        x = scipy.optimize.minimize(objective, x, jac=True, method="L-BFGS-B", options=options).x
    value = objective(x)[0]
    return value, x[: a * d].reshape(a, d), (x[a * d :] if bias else None)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "real"])
@pytest.mark.parametrize("name", list(LAWS))
def test_best_head_equals_lbfgs(name: str, labels: bool, bias: bool) -> None:
    """The best objective equals L-BFGS's to 1e-8 relative (at a minimum the value is
    second-order in the weights' error, so L-BFGS at gtol 1e-12 is far below that); the best
    weight and bias equal its minimizer to 1e-5 (first-order, and the problem is well
    conditioned: N = 40 > d = 8 and a positive-definite regularizer)."""
    scheme = LAWS[name]
    seed = 31 + 2 * labels + bias
    G, Y, targets = _data(seed, labels)
    U, b = _head(G, Y, seed, bias)
    report = sd.head_report(_stats(G, targets), U, scheme, bias=b)
    value, best_U, best_b = _lbfgs(G, Y, _characteristic(scheme, WIDTH), bias)
    assert _relative_error(report.best_objective, value) <= 1e-8, (report.best_objective, value)
    np.testing.assert_allclose(report.best_weight.numpy(), best_U, rtol=1e-5, atol=1e-5)
    if bias:
        assert report.best_bias is not None
        np.testing.assert_allclose(report.best_bias.numpy(), best_b, rtol=1e-5, atol=1e-5)
    else:
        assert report.best_bias is None
    # the best head is no worse than the given one, and the excess is their difference
    assert report.best_objective <= report.objective
    excess = report.objective - value
    assert abs(report.excess_over_best_head - excess) <= 1e-8 * value


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize(
    ("name", "dead", "twins"),
    [
        pytest.param("bernoulli", 3, None, id="dead-bernoulli"),
        pytest.param("grid", 3, None, id="dead-grid"),
        pytest.param("discrete", 3, None, id="dead-discrete"),
        pytest.param("grid", None, (0, 1), id="twins-grid"),  # one block of GridBlock(p, 2)
        # units 0 and 2 are kept or dropped together by every mask of DISCRETE_MASKS
        pytest.param("discrete", None, (0, 2), id="twins-discrete"),
    ],
)
def test_best_head_of_a_singular_system_equals_lbfgs(
    name: str, dead: int | None, twins: tuple[int, int] | None, bias: bool
) -> None:
    """A dead feature (zero on every sample), or two identical features that the law always
    keeps or drops together: the system of the best head is singular. Its value still equals
    L-BFGS's to 1e-8 relative, the best weight is finite, and equal to L-BFGS's from 0 to 1e-5
    (the least-norm best head): a dead feature gets the weight 0, twins equal weights."""
    scheme = LAWS[name]
    G, Y, targets = _data(41, labels=False)
    if dead is not None:
        G[dead] = 0.0
    else:
        assert twins is not None
        G[twins[1]] = G[twins[0]]
    U, b = _head(G, Y, 41, bias)
    report = sd.head_report(_stats(G, targets), U, scheme, bias=b)
    value, best_U, best_b = _lbfgs(G, Y, _characteristic(scheme, WIDTH), bias)
    weight = report.best_weight.numpy()
    assert np.isfinite(weight).all()
    assert _relative_error(report.best_objective, value) <= 1e-8, (report.best_objective, value)
    if dead is not None:
        assert (weight[:, dead] == 0).all()
        np.testing.assert_allclose(weight, best_U, rtol=1e-5, atol=1e-5)
    else:  # only u_i + u_j of the twins enters the objective (fit and regularizer alike)
        assert twins is not None
        i, j = twins

        def merged(W: np.ndarray) -> np.ndarray:
            W = W.copy()
            W[:, i] += W[:, j]
            return np.delete(W, j, axis=1)

        np.testing.assert_allclose(merged(weight), merged(best_U), rtol=1e-5, atol=1e-5)
        # Along the free direction u_i - u_j nothing changes the objective: the best head is
        # the one of least norm, u_i = u_j (L-BFGS from 0 keeps them equal, its gradients in
        # u_i and u_j being equal), not one whose split between the twins is set by rounding.
        np.testing.assert_allclose(
            weight,
            best_U,
            rtol=1e-5,
            atol=1e-5,
            err_msg=f"best_weight is not the least-norm best head: the identical features {i} "
            f"and {j} get the weights {weight[:, i]} and {weight[:, j]} (the least-norm head "
            f"gives both {best_U[:, i]})",
        )
    if bias:
        assert report.best_bias is not None and np.isfinite(report.best_bias.numpy()).all()
        np.testing.assert_allclose(report.best_bias.numpy(), best_b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# 3. The capacity bound (Prop. 3.3 / Thm 2.7)
# --------------------------------------------------------------------------------------------

#: tolerance of the comparisons with global_minimum: both solve the same closed form in float64,
#: from Y (an SVD) and from Y Y^T (an eigendecomposition); singular values are compared with an
#: absolute tolerance of TOL * max(m) (the largest is exact to eps * max(m) by either route)
TOL = 1e-10


def _units_law(scheme: sd.Scheme) -> sd.Scheme:
    return sd.Bernoulli(scheme.p) if isinstance(scheme, sd.DropConnect) else scheme


def _padded(values: tuple[float, ...] | np.ndarray, size: int) -> np.ndarray:
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    return np.concatenate([values, np.zeros(size - values.size)])


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "real"])
@pytest.mark.parametrize("name", list(BLOCK_LAWS))
def test_capacity_bound_equals_global_minimum(name: str, labels: bool, bias: bool) -> None:
    """The bound is Fig. 2's closed form on the targets: ``global_minimum(I_N, Y)`` (``Y`` centred
    with a bias), its value to 1e-10 relative and its spectra to 1e-10 of the largest."""
    scheme = BLOCK_LAWS[name]
    G, Y, targets = _data(51 + labels, labels)
    U, b = _head(G, Y, 51, bias)
    report = sd.head_report(_stats(G, targets), U, scheme, bias=b)
    Yt = Y - Y.mean(1, keepdims=True) if bias else Y
    optimum = sd.global_minimum(np.eye(SAMPLES), Yt, _units_law(scheme), width=WIDTH)
    assert report.capacity_bound is not None
    assert _relative_error(report.capacity_bound, optimum.value) <= TOL
    assert report.beta == pytest.approx(optimum.beta, rel=1e-15)
    assert report.block_size == optimum.block_size
    assert report.predicted_singular_values is not None
    size = max(len(report.predicted_singular_values), len(optimum.singular_values), OUTPUTS)
    scale = float(np.max(optimum.target_singular_values))
    for what, measured, expected in [
        ("predicted", report.predicted_singular_values, optimum.singular_values),
        ("target", report.target_singular_values, optimum.target_singular_values),
    ]:
        error = np.abs(_padded(measured, size) - _padded(expected, size)).max()
        assert error <= TOL * scale, (
            f"{what} singular values {_padded(measured, size)} vs global_minimum's "
            f"{_padded(expected, size)}: off by {error:.2g} (> {TOL} of the largest)"
        )
    if labels and not bias:  # Y Y^T = diag(counts): m = sqrt(counts), decreasing
        counts = np.bincount(targets.numpy(), minlength=OUTPUTS)
        np.testing.assert_allclose(
            report.target_singular_values, np.sqrt(np.sort(counts)[::-1]), rtol=1e-15
        )
    assert report.excess_over_capacity_bound == pytest.approx(
        report.objective - optimum.value, rel=1e-9
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7])
def test_centred_labels_have_one_rank_less(seed: int) -> None:
    """One-hot labels of a classes, centred (a head with a bias), have rank a - 1: the last
    singular value of ``Y_c`` is 0, and so is that of the bound's minimizer, whose rank the
    capacity note states. Reported: 0 to 1e-10 of the largest (global_minimum's tolerance for
    ties and zeros), and the note's rank equals global_minimum's."""
    scheme = sd.GridBlock(P, WIDTH)  # one block: ||.||_(8) is Frobenius, x = m / (1 + beta)
    G, Y, targets = _data(seed, labels=True)
    report = sd.head_report(
        _stats(G, targets), np.zeros((OUTPUTS, WIDTH)), scheme, bias=np.zeros(OUTPUTS)
    )
    Yc = Y - Y.mean(1, keepdims=True)
    optimum = sd.global_minimum(np.eye(SAMPLES), Yc, scheme, width=WIDTH)
    largest = report.target_singular_values[0]
    assert report.target_singular_values[-1] <= TOL * largest, (
        f"the centred one-hot targets have rank {OUTPUTS - 1}, but the report gives them the "
        f"singular values {report.target_singular_values} (the last one should be 0)"
    )
    assert report.predicted_singular_values is not None
    assert report.predicted_singular_values[-1] <= TOL * largest
    assert f"rank(A*) = {optimum.rank}" in report.capacity_note, (
        f"global_minimum's rank is {optimum.rank}; the note says {report.capacity_note!r}"
    )


def _my_bound(
    Yt: np.ndarray, beta: float, r: int
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``(value, x, W, Z)`` of ``min_A ||Yt - A||^2 + beta ||A||_(r)^2`` written out for the two
    cases where it is elementary: r = 1 (the squared nuclear norm: x = (m - tau)_+ with
    tau = beta sum(x)) and r >= rank (the squared Frobenius norm: x = m / (1 + beta))."""
    W, m, Zt = np.linalg.svd(Yt, full_matrices=False)
    if r == 1:
        for k in range(len(m), 0, -1):
            tau = beta * m[:k].sum() / (1.0 + k * beta)
            if m[k - 1] > tau:
                break
        x = np.clip(m - tau, 0.0, None)
        value = float(np.sum((m - x) ** 2) + beta * x.sum() ** 2)
    else:
        assert r >= np.linalg.matrix_rank(Yt)
        x = m / (1.0 + beta)
        value = float(np.sum((m - x) ** 2) + beta * np.sum(x**2))
    return value, x, W, Zt


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "real"])
@pytest.mark.parametrize("name", ["bernoulli", "dropconnect", "grid4"])
def test_capacity_bound_is_attained(name: str, labels: bool, bias: bool) -> None:
    """A head and features built to attain the bound (Thm 2.5's balanced factorization): the
    report's objective, best objective and bound all equal the bound written out here (1e-10
    relative; rounding of a few products), and the block norms are balanced. Dropout: with an
    orthogonal Q of entries +-1/sqrt(d) (Hadamard), U = W diag(sqrt x) Q_k^T and
    G = Q_k diag(sqrt x) Z^T give U G = A* and equal ||u_j|| ||g_j||. GridBlock(r >= rank):
    every block carries A*/(d/r)."""
    scheme = BLOCK_LAWS[name]
    r = scheme.block_size if isinstance(scheme, sd.GridBlock) else 1
    beta = (r / WIDTH) * P / (1.0 - P)
    _, Y, targets = _data(61 + labels, labels)
    Yt = Y - Y.mean(1, keepdims=True) if bias else Y
    value, x, W, Zt = _my_bound(Yt, beta, r)
    k = x.size
    if r == 1:
        Q = scipy.linalg.hadamard(WIDTH) / math.sqrt(WIDTH)
        U = W @ np.diag(np.sqrt(x)) @ Q[:, :k].T
        G = Q[:, :k] @ np.diag(np.sqrt(x)) @ Zt
    else:
        share = math.sqrt(r / WIDTH)
        U_block = np.zeros((OUTPUTS, r))
        G_block = np.zeros((r, SAMPLES))
        U_block[:, :k] = share * W @ np.diag(np.sqrt(x))
        G_block[:k] = share * np.diag(np.sqrt(x)) @ Zt
        U = np.tile(U_block, (1, WIDTH // r))
        G = np.tile(G_block, (WIDTH // r, 1))
    b = Y.mean(1) if bias else None  # G has zero row means when Zt comes from centred targets
    report = sd.head_report(_stats(G, targets), U, scheme, bias=b)
    assert report.beta == pytest.approx(beta, rel=1e-15)
    assert report.capacity_bound is not None
    assert _relative_error(report.capacity_bound, value) <= TOL
    assert _relative_error(report.objective, value) <= TOL
    assert _relative_error(report.best_objective, value) <= TOL
    assert report.balance is not None and report.balance <= 1e-8


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(sorted(BLOCK_LAWS)),
    labels=st.booleans(),
    bias=st.booleans(),
    scale=st.sampled_from([0.01, 0.3, 1.0, 5.0]),
)
def test_capacity_bound_is_a_lower_bound(
    seed: int, name: str, labels: bool, bias: bool, scale: float
) -> None:
    """Every head, and the best head, on any features at width d, is at least the bound (to
    1e-12 relative: rounding)."""
    scheme = BLOCK_LAWS[name]
    rng = np.random.default_rng(seed)
    G, _, targets = _data(seed, labels)
    G = G * rng.uniform(0.1, 3.0, size=(WIDTH, 1))
    U = scale * rng.standard_normal((OUTPUTS, WIDTH))
    b = rng.standard_normal(OUTPUTS) if bias else None
    report = sd.head_report(_stats(G, targets), U, scheme, bias=b)
    assert report.capacity_bound is not None
    slack = 1e-12 * report.capacity_bound
    assert report.objective >= report.capacity_bound - slack
    assert report.best_objective >= report.capacity_bound - slack


@pytest.mark.parametrize("name", ["sliding", "discrete"])
def test_no_capacity_bound_without_independent_blocks(name: str) -> None:
    G, Y, targets = _data(71, labels=True)
    U, _ = _head(G, Y, 71, bias=False)
    report = sd.head_report(_stats(G, targets), U, LAWS[name])
    assert report.capacity_bound is None
    assert report.excess_over_capacity_bound is None and report.capacity_gap is None
    assert report.beta is None and report.predicted_singular_values is None
    assert report.block_size is None and report.block_norms is None
    assert "no closed form" in report.capacity_note
    assert type(LAWS[name]).__name__ in report.capacity_note


# --------------------------------------------------------------------------------------------
# 4. Streaming equals whole-batch
# --------------------------------------------------------------------------------------------

#: streaming sums and one product differ only in the order of at most N = 30 additions
STREAM_RTOL = 1e-12


def _assert_close_max(actual: object, expected: np.ndarray, what: str) -> None:
    """``max |actual - expected| <= STREAM_RTOL * max |expected|``."""
    assert actual is not None, f"{what} is None"
    if isinstance(actual, torch.Tensor):
        assert actual.dtype == torch.float64, f"{what} is {actual.dtype}, not float64"
        actual = actual.numpy()
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    assert error <= STREAM_RTOL * scale, f"{what}: off by {error:.3g} (scale {scale:.3g})"


def _assert_sums(stats: sd.HeadStats, G: np.ndarray, Y: np.ndarray, labels: bool) -> None:
    """Every sum of ``stats`` against the products of the whole data at once (float64)."""
    assert stats.samples == G.shape[1]
    assert stats.labels is labels
    _assert_close_max(stats.gram, G @ G.T, "gram")
    _assert_close_max(stats.cross, Y @ G.T, "cross")
    _assert_close_max(stats.feature_sum, G.sum(1), "feature_sum")
    _assert_close_max(stats.target_sum, Y.sum(1), "target_sum")
    if labels:
        assert stats.target_gram is None
    else:
        _assert_close_max(stats.target_gram, Y @ Y.T, "target_gram")


def _batches(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    return list(itertools.pairwise(bounds))


@settings(max_examples=40)
@given(
    n=st.integers(1, 30),
    labels=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
@example(n=5, labels=True, seed=0, cuts=[1, 2, 3, 4])  # only batches of one sample
@example(n=5, labels=False, seed=1, cuts=[0, 1, 2, 3, 4, 5])  # with empty batches too
def test_streaming_equals_whole_batch(n: int, labels: bool, seed: int, cuts: list[int]) -> None:
    G, Y, targets = _data(seed, labels, n=n)
    features = torch.as_tensor(G.T.copy())
    stats = sd.HeadStats(WIDTH, OUTPUTS)
    for start, stop in _batches(n, cuts):
        stats.update(features[start:stop], targets[start:stop])
    _assert_sums(stats, G, Y, labels)


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "real"])
def test_leading_axes_are_samples(labels: bool) -> None:
    """Features (2, 3, d) with targets (2, 3) or (2, 3, a): six samples."""
    G, Y, targets = _data(81, labels, n=6)
    stats = sd.HeadStats(WIDTH, OUTPUTS).update(
        torch.as_tensor(G.T.copy()).reshape(2, 3, WIDTH),
        targets.reshape(2, 3, *targets.shape[1:]),
    )
    _assert_sums(stats, G, Y, labels)


@settings(max_examples=20)
@given(
    n=st.integers(1, 30),
    labels=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    split=st.integers(0, 30),
)
def test_merge_equals_one_pass(n: int, labels: bool, seed: int, split: int) -> None:
    """Statistics of two disjoint parts, merged, equal those of the whole (an empty part, i.e.
    HeadStats that saw no batch, included); merging into a fresh HeadStats copies."""
    split = min(split, n)
    G, Y, targets = _data(seed, labels, n=n)
    features = torch.as_tensor(G.T.copy())
    first, second = sd.HeadStats(WIDTH, OUTPUTS), sd.HeadStats(WIDTH, OUTPUTS)
    if split:
        first.update(features[:split], targets[:split])
    if split < n:
        second.update(features[split:], targets[split:])
    _assert_sums(first.merge(second), G, Y, labels)
    _assert_sums(sd.HeadStats(WIDTH, OUTPUTS).merge(first), G, Y, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "real"])
def test_low_precision_features_are_upcast(dtype: torch.dtype, labels: bool) -> None:
    """Features in float32 / bfloat16 / float16 are summed in float64: the sums equal the
    products of the upcast features to 1e-12 (not to the input precision)."""
    G, Y, targets = _data(91, labels, n=20)
    low = torch.as_tensor(G.T.copy()).to(dtype)
    stats = sd.HeadStats(WIDTH, OUTPUTS)
    stats.update(low[:7], targets[:7]).update(low[7:], targets[7:])
    _assert_sums(stats, low.to(torch.float64).numpy().T, Y, labels)


# --------------------------------------------------------------------------------------------
# 5. Two processes equal one
# --------------------------------------------------------------------------------------------

#: (name, labels, split): rank 0 takes samples [0, split), rank 1 the rest
REDUCE_CASES = [
    ("labels-halves", True, 19),
    ("real-halves", False, 23),
    ("labels-rank1-empty", True, SAMPLES),
    ("real-rank0-empty", False, 0),
]
SUM_NAMES = ("gram", "cross", "target_gram", "feature_sum", "target_sum")


def _reduce_case(
    name: str, labels: bool
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
    G, Y, targets = _data(101 + labels, labels)
    U, b = _head(G, Y, 101, bias=True)
    assert b is not None
    return G, Y, targets, U, b


def _reduce_worker(rank: int, port: int, folder: str) -> None:
    """One of two gloo processes: its share of each case, all-reduced; saves what it holds."""
    import torch.distributed as dist

    join_gloo_group(rank, 2, port)
    try:
        saved = {}
        for name, labels, split in REDUCE_CASES:
            G, _, targets, U, b = _reduce_case(name, labels)
            start, stop = (0, split) if rank == 0 else (split, SAMPLES)
            stats = sd.HeadStats(WIDTH, OUTPUTS)
            if stop > start:
                stats.update(torch.as_tensor(G.T[start:stop].copy()), targets[start:stop])
            stats.all_reduce()
            report = sd.head_report(stats, U, sd.GridBlock(P, 2), bias=b)
            saved[name] = {
                **{key: getattr(stats, key) for key in SUM_NAMES},
                "samples": stats.samples,
                "labels": stats.labels,
                "objective": report.objective,
                "best_objective": report.best_objective,
            }
        torch.save(saved, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    """Each rank sums its part (one rank may see no batch: it contributes zeros), all_reduce
    adds them: every rank then holds the sums of all samples (1e-12 relative in max norm: two
    partial sums added) and the same report (1e-12 relative)."""
    spawn(_reduce_worker, (free_port(), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for name, labels, _ in REDUCE_CASES:
        G, _, targets, U, b = _reduce_case(name, labels)
        single = _stats(G, targets)
        expected = sd.head_report(single, U, sd.GridBlock(P, 2), bias=b)
        for rank, saved in enumerate(ranks):
            held = saved[name]
            assert held["samples"] == SAMPLES and held["labels"] is labels, (name, rank)
            for key in SUM_NAMES:
                if getattr(single, key) is None:
                    assert held[key] is None, (name, rank, key)
                else:
                    _assert_close_max(held[key], getattr(single, key).numpy(), f"{name} {key}")
            for key in ("objective", "best_objective"):
                assert _relative_error(held[key], getattr(expected, key)) <= 1e-12, (name, key)


# --------------------------------------------------------------------------------------------
# 6. Bad input: one clear error each, nothing added
# --------------------------------------------------------------------------------------------


def _snapshot(stats: sd.HeadStats) -> dict[str, object]:
    return {
        "samples": stats.samples,
        "labels": stats.labels,
        **{key: copy.deepcopy(getattr(stats, key)) for key in SUM_NAMES},
    }


def _assert_unchanged(stats: sd.HeadStats, before: dict[str, object]) -> None:
    assert stats.samples == before["samples"] and stats.labels is before["labels"]
    for key in SUM_NAMES:
        now, then = getattr(stats, key), before[key]
        if then is None:
            assert now is None, key
        else:
            assert isinstance(now, torch.Tensor) and torch.equal(now, then), key


def _bad_batches(labels: bool) -> list[tuple[str, torch.Tensor, torch.Tensor, type, str]]:
    G, _, targets = _data(111, labels, n=6)
    features = torch.as_tensor(G.T.copy())
    nan = features.clone()
    nan[2, 5] = float("nan")
    cases = [
        ("wrong width", features[:, :5], targets, ValueError, "must have 8 features"),
        ("nan features", nan, targets, ValueError, "features must be finite"),
    ]
    if labels:
        low, high = targets.clone(), targets.clone()
        low[1], high[4] = -1, OUTPUTS
        cases += [
            ("negative label", features, low, ValueError, r"labels must lie in \[0, 3\)"),
            ("label >= a", features, high, ValueError, r"labels must lie in \[0, 3\)"),
            (
                "floats after labels",
                features,
                torch.rand(6, OUTPUTS, dtype=torch.float64),
                TypeError,
                "targets were class labels in earlier batches",
            ),
        ]
    else:
        cases += [
            ("wrong target width", features, targets[:, :2], ValueError, "targets must be"),
            (
                "labels after floats",
                features,
                torch.zeros(6, dtype=torch.int64),
                TypeError,
                "targets were real vectors in earlier batches",
            ),
            (
                "nan targets",
                features,
                torch.full_like(targets, float("nan")),
                ValueError,
                "targets must be finite",
            ),
        ]
    return cases


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "real"])
def test_bad_batches_raise_and_add_nothing(labels: bool) -> None:
    G, _, targets = _data(112, labels, n=9)
    stats = _stats(G, targets)
    for what, features, bad_targets, error, match in _bad_batches(labels):
        before = _snapshot(stats)
        with pytest.raises(error, match=match):
            stats.update(features, bad_targets)
        _assert_unchanged(stats, before)
        assert what  # named for the traceback
    # and a fresh HeadStats stays empty after a refused first batch
    fresh = sd.HeadStats(WIDTH, OUTPUTS)
    features = torch.full((3, WIDTH), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match="features must be finite"):
        fresh.update(features, targets[:3])
    assert fresh.samples == 0 and fresh.labels is None and fresh.gram is None


def test_bad_reports_raise() -> None:
    G, Y, targets = _data(113, labels=True)
    stats = _stats(G, targets)
    U, _ = _head(G, Y, 113, bias=False)
    law = sd.Bernoulli(P)
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 8\)"):
        sd.head_report(stats, U.T, law)
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 8\)"):
        sd.head_report(stats, U[:, :7], law)
    for bad in (np.nan, np.inf):
        broken = U.copy()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match="weight must be finite"):
            sd.head_report(stats, torch.as_tensor(broken), law)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        sd.head_report(stats, U, law, bias=np.zeros(4))
    with pytest.raises(ValueError, match="stats holds no samples"):
        sd.head_report(sd.HeadStats(WIDTH, OUTPUTS), U, law)
    only_empty = sd.HeadStats(WIDTH, OUTPUTS).update(
        torch.zeros(0, WIDTH, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    )
    with pytest.raises(ValueError, match="stats holds no samples"):
        sd.head_report(only_empty, U, law)
    with pytest.raises(ValueError, match="block_size must divide"):
        sd.head_report(stats, U, sd.GridBlock(P, 3))
    with pytest.raises(TypeError, match="stats must be HeadStats"):
        sd.head_report({"gram": None}, U, law)
