"""Independent oracles for the mask laws and objectives.

Everything here is built from the definitions alone (which units a window covers, which
entries a Bernoulli mask hits), never from the library's moments or closed forms. A mask law
is represented by its full support: a matrix ``z`` whose rows are the possible masks and a
vector ``probs`` of their probabilities.
"""

from __future__ import annotations

import itertools

import numpy as np


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
