"""Formulas the synthetic figures compare with the training curves.

:func:`paper_dropconnect_objective` is Thm 4.1 as printed (docs/theory.md corrects it);
:func:`late_relative_difference` measures Lemma 2.1 along a run; :func:`ema` smooths Fig. 4's
curves on a log axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..schemes import Scheme, check_scheme

__all__ = ["ema", "late_relative_difference", "paper_dropconnect_objective"]


def paper_dropconnect_objective(
    Y: np.ndarray, U: np.ndarray, V: np.ndarray, X: np.ndarray, scheme: Scheme
) -> float:
    """Thm 4.1 / Cor. 4.2 (eq. 20) *as printed in the paper*, at the law's keep probability
    ``theta``: ``||Y - U V^T X||^2 + (1-theta)/theta sum_k ||u_k||^2 ||X^T v_k||^2``.

    This is Dropout's expected objective (Cor. 3.2), and it is the DropConnect expectation only
    when ``X X^T`` is diagonal; the exact one is ``expected_loss(Y, U, V, X, DropConnect(p))``
    (docs/theory.md#dropconnect).

    Args:
        Y: (a, N) targets.
        U: (a, d) output weights.
        V: (b, d) input weights.
        X: (b, N) inputs.
        scheme: the law whose keep probability ``theta`` enters the formula (DropConnect(p)).
    """
    theta = check_scheme(scheme).keep_prob
    hidden = V.T @ X
    fit = float(np.sum((Y - U @ hidden) ** 2))
    return fit + (1.0 - theta) / theta * float(np.sum(U * U, axis=0) @ np.sum(hidden**2, axis=1))


def late_relative_difference(
    iterations: Sequence[int] | np.ndarray,
    stochastic: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
) -> float:
    """``sum_k n_k s_k / sum_k n_k r_k - 1`` over the record intervals of the last decade of a
    run: ``s_k`` is the stochastic objective averaged over interval k (``n_k`` steps), ``r_k`` the
    mean of a deterministic objective at its two ends (Lemma 2.1 says they agree in expectation).
    """
    t = np.asarray(iterations, dtype=float)
    s, r = np.asarray(stochastic, dtype=float), np.asarray(reference, dtype=float)
    lengths = np.diff(t)
    late = t[:-1] >= 0.1 * t[-1]
    late[-1] = True
    mean_reference = 0.5 * (r[:-1] + r[1:])
    return float((lengths * s[1:])[late].sum() / (lengths * mean_reference)[late].sum() - 1.0)


def ema(iterations: Sequence[int], values: Sequence[float], fraction: float) -> np.ndarray:
    """Exponential moving average over irregular record points whose time constant is
    ``fraction`` of the current iteration count: even smoothing on a log axis, without lag."""
    t, v = np.asarray(iterations, dtype=float), np.asarray(values, dtype=float)
    out = np.empty_like(v)
    out[0] = v[0]
    for k in range(1, v.size):
        weight = 1.0 - np.exp(-(t[k] - t[k - 1]) / max(fraction * t[k], 1.0))
        out[k] = out[k - 1] + weight * (v[k] - out[k - 1])
    return out
