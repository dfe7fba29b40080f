"""Independent oracles for the mask laws, the objectives and the k-support norms, and the data
the tests share.

Everything here is built from the definitions alone (which units a window covers, which
entries a Bernoulli mask hits, the rho rule of Argyriou et al.), never from the library's
moments or closed forms. A mask law is represented by its full support: a matrix ``z`` whose
rows are the possible masks and a vector ``probs`` of their probabilities.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

#: The boundaries of a sliding block law that :func:`sliding_windows` enumerates.
BOUNDARIES = ("valid", "clipped", "ring")


def all_binary(k: int) -> np.ndarray:
    """All 2**k rows of {0, 1}^k as a float array of shape (2**k, k)."""
    rows = list(itertools.product([0.0, 1.0], repeat=k))
    return np.array(rows, dtype=float).reshape(len(rows), k)


def _iid_probs(bits: np.ndarray, one_prob: float) -> np.ndarray:
    """Probability of each row of ``bits`` when entries are iid with P(1) = one_prob."""
    return np.prod(np.where(bits == 1.0, one_prob, 1.0 - one_prob), axis=1)


def bernoulli_law(p: float, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Every unit kept independently with probability 1 - p."""
    z = all_binary(d)
    return z, _iid_probs(z, 1.0 - p)


def grid_law(p: float, r: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of r consecutive units share one Ber(1 - p) variable."""
    w = all_binary(d // r)
    z = np.empty((w.shape[0], d))
    for i in range(d):
        z[:, i] = w[:, i // r]
    return z, _iid_probs(w, 1.0 - p)


def sliding_windows(d: int, r: int, boundary: str) -> list[set[int]]:
    """The candidate windows of a 1-D sliding block law, as sets of unit indices."""
    if boundary == "valid":
        if r >= d:
            return [set(range(d))]
        return [set(range(s, s + r)) for s in range(d - r + 1)]
    if boundary == "clipped":
        return [set(range(max(0, c - (r - 1) // 2), min(d, c + r // 2 + 1))) for c in range(d)]
    if boundary == "ring":
        return [{(s + j) % d for j in range(r)} for s in range(d)]
    raise AssertionError(boundary)


def sliding_gamma(p: float, r: int) -> float:
    """Default window drop probability: an interior unit is kept with probability 1 - p."""
    return 1.0 - (1.0 - p) ** (1.0 / r)


def sliding_law(
    p: float, r: int, d: int, boundary: str, gamma: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Enumerate all window-drop patterns; unit i is kept iff no dropped window covers it."""
    if gamma is None:
        gamma = sliding_gamma(p, r)
    windows = sliding_windows(d, r, boundary)
    dropped = all_binary(len(windows))
    probs = _iid_probs(dropped, gamma)
    z = np.ones((dropped.shape[0], d))
    for pattern in range(dropped.shape[0]):
        for w, window in enumerate(windows):
            if dropped[pattern, w] == 1.0:
                for i in window:
                    z[pattern, i] = 0.0
    return z, probs


def moments(z: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a finite law, as explicit probability-weighted sums."""
    mu = np.zeros(z.shape[1])
    second = np.zeros((z.shape[1], z.shape[1]))
    for row, prob in zip(z, probs, strict=True):
        mu += prob * row
        second += prob * np.outer(row, row)
    return mu, second - np.outer(mu, mu)


def characteristic(z: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Cbar_ij = C_ij / (mu_i mu_j) of a finite law."""
    mu, cov = moments(z, probs)
    return cov / np.outer(mu, mu)


def feature_loss(
    Y: np.ndarray, U: np.ndarray, G: np.ndarray, z: np.ndarray, probs: np.ndarray
) -> float:
    """E ||Y - U diag(z / mu) G||_F^2, one mask at a time."""
    mu = probs @ z
    total = 0.0
    for row, prob in zip(z, probs, strict=True):
        residual = Y - U @ np.diag(row / mu) @ G
        total += prob * float(np.sum(residual**2))
    return total


def linear_loss(
    Y: np.ndarray,
    U: np.ndarray,
    V: np.ndarray,
    X: np.ndarray,
    z: np.ndarray,
    probs: np.ndarray,
) -> float:
    """E ||Y - U diag(z / mu) V^T X||_F^2, one mask at a time."""
    return feature_loss(Y, U, V.T @ X, z, probs)


def dropconnect_v_loss(
    Y: np.ndarray, U: np.ndarray, V: np.ndarray, X: np.ndarray, p: float
) -> float:
    """E ||Y - (1/theta) U (Z * V)^T X||_F^2 over all 2**(b d) entry masks Z of V."""
    theta = 1.0 - p
    b, d = V.shape
    masks = all_binary(b * d)
    probs = _iid_probs(masks, theta)
    total = 0.0
    for flat, prob in zip(masks, probs, strict=True):
        Z = flat.reshape(b, d)
        residual = Y - U @ (Z * V).T @ X / theta
        total += prob * float(np.sum(residual**2))
    return total


def dropconnect_u_loss(Y: np.ndarray, U: np.ndarray, G: np.ndarray, p: float) -> float:
    """E ||Y - (1/theta) (Z * U) G||_F^2 over all 2**(a d) entry masks Z of U."""
    theta = 1.0 - p
    a, d = U.shape
    masks = all_binary(a * d)
    probs = _iid_probs(masks, theta)
    total = 0.0
    for flat, prob in zip(masks, probs, strict=True):
        Z = flat.reshape(a, d)
        residual = Y - (Z * U) @ G / theta
        total += prob * float(np.sum(residual**2))
    return total


def sq_norm(A: np.ndarray) -> float:
    return float(np.sum(np.asarray(A) ** 2))


# ----------------------------------------------------------------------------------------------
# Finite laws given by their support
# ----------------------------------------------------------------------------------------------
def discrete_binary_law(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Five fixed 0/1 masks (their first d <= 6 columns) with fixed probabilities."""
    masks = np.array(
        [
            [1, 1, 0, 0, 1, 1],
            [0, 1, 1, 1, 0, 1],
            [1, 0, 1, 0, 1, 1],
            [1, 1, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=float,
    )[:, :d]
    probs = np.array([0.15, 0.25, 0.2, 0.3, 0.1])
    return masks, probs


def discrete_real_law(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Seven real-valued masks around 1 with Dirichlet probabilities (seeded)."""
    rng = np.random.default_rng(3)
    masks = 1.0 + 0.8 * rng.standard_normal((7, d))
    probs = rng.dirichlet(np.ones(7))
    return masks, probs


def two_point_law(d: int, s: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """z_i in {1 - s, 1 + s}, iid with probability 1/2: a finite law with Gaussian dropout's
    moments."""
    signs = np.array([[1 if (k >> i) & 1 else -1 for i in range(d)] for k in range(2**d)])
    return 1.0 + s * signs.astype(float), np.full(2**d, 1.0 / 2**d)


# ----------------------------------------------------------------------------------------------
# The k-support norm by the rho rule
# ----------------------------------------------------------------------------------------------
def sorted_abs(w: Any, length: int) -> np.ndarray:
    """|w| sorted in decreasing order, padded with zeros to ``length``."""
    a = np.sort(np.abs(np.asarray(w, dtype=float)))[::-1]
    return np.concatenate([a, np.zeros(max(0, length - a.size))])


def ksupport_sq(w: Any, k: int) -> float:
    """||w||_(k)^2 by Argyriou et al. 2012, Prop 2.1.

    rho is the unique integer in {1..k} with a_{rho-1} > S_rho / (k - rho + 1) >= a_rho
    (a_0 = +inf, S_rho = sum_{i >= rho} a_i); w is padded with zeros to length k. Under
    rounding (ties) the rho with the smallest violation is taken: the formula is continuous
    across the boundary between two consecutive rho.
    """
    a = sorted_abs(w, k)
    best = None
    for rho in range(1, k + 1):
        s = a[rho - 1 :].sum()
        q = s / (k - rho + 1)
        prev = math.inf if rho == 1 else a[rho - 2]
        violation = max(0.0, q - prev, a[rho - 1] - q)
        value = float(np.sum(a[: rho - 1] ** 2) + s**2 / (k - rho + 1))
        if best is None or violation < best[0]:
            best = (violation, value)
    return best[1]


# ----------------------------------------------------------------------------------------------
# CVXPY
# ----------------------------------------------------------------------------------------------
#: Interior-point accuracy asked of CLARABEL. With 1e-8 it reports "optimal" on every problem of
#: the tests; observed objective errors are <= 1e-8 relative.
SOLVER_TOL = {"tol_gap_abs": 1e-8, "tol_gap_rel": 1e-8, "tol_feas": 1e-8}
#: Objective values from CVXPY are compared at 1e-6 relative: two orders of magnitude above the
#: observed solver error.
CVX_RTOL = 1e-6


def spectral_ksupport_constraints(T: Any, rows: int, k: int) -> list[Any]:
    """The constraints 0 <= T <= I, tr T <= k of the variational form
    ||A||_(k)^2 = min {tr(A^T T^-1 A) : 0 <= T <= I, tr T <= k} (McDonald et al. 2014)."""
    import cvxpy as cp

    return [T >> 0, np.eye(rows) - T >> 0, cp.trace(T) <= k]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def gaussian_problem(
    a: int, b: int, d: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(Y, U, V, X) with iid standard normal entries: Y (a x n), U (a x d), V (b x d), X (b x n)."""
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((a, n))
    U = rng.standard_normal((a, d))
    V = rng.standard_normal((b, d))
    X = rng.standard_normal((b, n))
    return Y, U, V, X


def low_rank_problem(
    seed: int = 0, a: int = 5, b: int = 7, d: int = 6, n: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, U0, V0) for training: Y = W X with W of rank 3, initial weights iid normal."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((b, n))
    Y = rng.standard_normal((a, 3)) @ rng.standard_normal((3, b)) @ X
    return X, Y, rng.standard_normal((a, d)), rng.standard_normal((b, d))


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n x k with orthonormal columns."""
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


def with_spectrum(rng: np.random.Generator, spectrum: Any, N: int) -> np.ndarray:
    """Y (a x N) with the given singular values, a = len(spectrum)."""
    a = len(spectrum)
    return orthonormal(rng, a, a) @ np.diag(spectrum) @ orthonormal(rng, N, a).T


def as_numpy(value: Any) -> np.ndarray:
    """A NumPy array of a NumPy or torch value (detached, on the CPU)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def gradcheck_optimum(X, Y, scheme, width, field, reduce=None) -> None:
    """Central finite differences (float64, eps 1e-6: truncation and rounding ~1e-9) against the
    autograd of ``global_minimum(X, Y, scheme, width).<field>`` (reduced by ``reduce``)."""
    import torch

    import structdrop as sd

    def function(X, Y):
        out = getattr(sd.global_minimum(X, Y, scheme, width), field)
        return out if reduce is None else reduce(out)

    inputs = (torch.tensor(X, requires_grad=True), torch.tensor(Y, requires_grad=True))
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
