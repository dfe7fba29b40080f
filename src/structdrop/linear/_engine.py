"""Compiled inner loops of Algorithm 1 (single-sample SGD with dropout masks).

Per step t with sample j = indices[t] and scaled mask s = z / mu (a row of ``scales``)::

    h = V^T x_j,   e = U (s * h) - y_j,
    U <- U - lr_t e (s * h)^T,   V <- V - lr_t x_j ((U_old^T e) * s)^T,

which is Algorithm 1, steps 7-9 (the factor 2 of the gradient is absorbed in the learning rate, as
in the paper). DropConnect masks the entries of V instead (eq. 19). The loops are written for
row-major U (a x d), V (b x d) and sample-major data XT (N x b), YT (N x a), so every inner loop
runs over contiguous memory. Both kernels stop early, returning the number of steps done, when a
loss is not finite or exceeds ``limit``.
"""

from __future__ import annotations

import numpy as np

from .._extras import require

require("experiments", ("numba",), "structdrop.linear (Algorithm 1's compiled SGD)")
import numba  # noqa: E402

# Reassociation lets the reductions vectorise; NaN/Inf semantics are kept (no "nnan"/"ninf"), so
# the divergence test below still sees non-finite losses.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _learning_rate(lr: float, lr_decay: float, t: int) -> float:
    if lr_decay > 0.0:
        return lr / (1.0 + t / lr_decay)
    return lr


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def sgd_unit_masks(
    XT: np.ndarray,
    YT: np.ndarray,
    U: np.ndarray,
    V: np.ndarray,
    indices: np.ndarray,
    scales: np.ndarray,
    lr: float,
    lr_decay: float,
    t0: int,
    limit: float,
    losses: np.ndarray,
) -> int:
    """Steps ``t0 .. t0 + len(indices) - 1`` with masks on the hidden units; U, V in place."""
    a, d = U.shape
    b = V.shape[0]
    sh = np.empty(d)
    g = np.empty(d)
    e = np.empty(a)
    for step in range(indices.shape[0]):
        j = indices[step]
        x = XT[j]
        y = YT[j]
        s = scales[step]
        sh[:] = 0.0
        for row in range(b):
            xr = x[row]
            for k in range(d):
                sh[k] += V[row, k] * xr
        for k in range(d):
            sh[k] *= s[k]
        loss = 0.0
        for i in range(a):
            acc = -y[i]
            for k in range(d):
                acc += U[i, k] * sh[k]
            e[i] = acc
            loss += acc * acc
        losses[step] = loss
        if not loss <= limit:  # also catches NaN
            return step
        eta = _learning_rate(lr, lr_decay, t0 + step)
        g[:] = 0.0
        for i in range(a):
            ei = e[i]
            step_i = eta * ei
            for k in range(d):
                g[k] += U[i, k] * ei
                U[i, k] -= step_i * sh[k]
        for k in range(d):
            g[k] *= s[k]
        for row in range(b):
            step_r = eta * x[row]
            for k in range(d):
                V[row, k] -= step_r * g[k]
    return indices.shape[0]


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def sgd_dropconnect(
    XT: np.ndarray,
    YT: np.ndarray,
    U: np.ndarray,
    V: np.ndarray,
    indices: np.ndarray,
    keep: np.ndarray,
    keep_prob: float,
    lr: float,
    lr_decay: float,
    t0: int,
    limit: float,
    losses: np.ndarray,
) -> int:
    """Steps with the masks ``keep[step]`` (b x d, boolean) on V's entries, scaled by
    ``1 / keep_prob`` (eq. 19)."""
    a, d = U.shape
    b = V.shape[0]
    inverse = 1.0 / keep_prob
    h = np.empty(d)
    g = np.empty(d)
    e = np.empty(a)
    for step in range(indices.shape[0]):
        j = indices[step]
        x = XT[j]
        y = YT[j]
        Z = keep[step]
        h[:] = 0.0
        for row in range(b):
            xr = x[row] * inverse
            for k in range(d):
                if Z[row, k]:
                    h[k] += V[row, k] * xr
        loss = 0.0
        for i in range(a):
            acc = -y[i]
            for k in range(d):
                acc += U[i, k] * h[k]
            e[i] = acc
            loss += acc * acc
        losses[step] = loss
        if not loss <= limit:
            return step
        eta = _learning_rate(lr, lr_decay, t0 + step)
        g[:] = 0.0
        for i in range(a):
            ei = e[i]
            step_i = eta * ei
            for k in range(d):
                g[k] += U[i, k] * ei
                U[i, k] -= step_i * h[k]
        for row in range(b):
            step_r = eta * x[row] * inverse
            for k in range(d):
                if Z[row, k]:
                    V[row, k] -= step_r * g[k]
    return indices.shape[0]
