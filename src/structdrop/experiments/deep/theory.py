"""The least deterministic objective of the Fig. 2 network (Prop. 3.3 generalized, Thm 2.7).

If the trunk can produce any features G (sufficient capacity), the least value of
``||Y - U G||^2 + <Cbar, U^T U * G G^T>`` over ``(U, G)`` at width d is that of the problem on
the predictions ``A = U G``::

    min_A ||Y - A||^2 + beta ||A||_(r)^2,   beta = (r/d)(1-theta)/theta,

which is :func:`structdrop.global_minimum` with inputs ``X = I_N`` (``A = U V^T``, any
``V``). Both terms are unitarily invariant, so with ``Y = W diag(m) Z^T`` the minimizer is
``W diag(x) Z^T`` with ``x`` the prox of the squared r-support norm of ``m``
(:func:`structdrop.prox_ksupport_sq`): the problem is solved on the a singular values of Y,
never on an N x N identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ksupport import ksupport_norm, prox_ksupport_sq
from ...optimum import regularization_strength
from ...schemes import IndependentBlocks, Scheme

__all__ = ["Theory", "closed_form_law", "theoretical_minimum"]


@dataclass(frozen=True)
class Theory:
    """The global minimum of ``||Y - A||^2 + beta ||A||_(r)^2`` (sufficient capacity).

    Attributes:
        value: the minimum ``sum_i (m_i - x_i)^2 + beta ||x||_(r)^2``.
        singular_values: ``x``, predicted singular values of ``U G`` (descending).
        target_singular_values: ``m``, those of ``Y`` (``sqrt`` of the class counts).
        beta: ``(r/d)(1-theta)/theta``.
        block_size: r (1 for Dropout).
    """

    value: float
    singular_values: list[float]
    target_singular_values: list[float]
    beta: float
    block_size: int


def closed_form_law(scheme: Scheme) -> Scheme | None:
    """The law on the hidden units whose regularizer has a closed form, or None.

    It is ``scheme.on_units()`` (DropConnect on the last matrix U regularizes as Dropout,
    docs/theory.md) when its masks fall on the units and keep independent blocks of units
    (Dropout: blocks of 1, grid DropBlock: blocks of r): their regularizer is
    ``beta ||A||_(r)^2`` (Thm 2.3, Lemma 2.1). Sliding blocks and finite mask laws have none.
    """
    law = scheme.on_units()
    if law.acts_on == "units" and isinstance(law.sampler, IndependentBlocks):
        return law
    return None


def theoretical_minimum(Y: np.ndarray, scheme: Scheme, width: int) -> Theory | None:
    """The least deterministic objective over ``(U, G)`` at width d (Thm 2.7, docs/theory.md).

    ``min_{U, G} ||Y - U G||^2 + <Cbar, U^T U * G G^T> >= min_A ||Y - A||^2 + beta ||A||_(r)^2``
    with equality when d >= rank(A*) (and the blocks can share its directions). For Dropout
    ``beta ||A||_(1)^2 = (1-theta)/(theta d) ||A||_*^2`` (Prop. 3.3, eq. 18, with the 1/d it
    misses). With ``Y = W diag(m) Z^T`` the minimizer is ``W diag(x) Z^T``, ``x`` the prox of
    the squared r-support norm of ``m`` (``x_i = (m_i - tau)_+`` for Dropout).

    Args:
        Y: (a, N) targets.
        scheme: the mask law (see :func:`closed_form_law`).
        width: d.

    Returns:
        A :class:`Theory`, or None when the scheme's regularizer has no known closed form.
    """
    law = closed_form_law(scheme)
    if law is None:
        return None
    beta = regularization_strength(law, width)
    sampler = law.sampler
    assert isinstance(sampler, IndependentBlocks)  # see closed_form_law
    r = sampler.block_size
    m = np.linalg.svd(np.asarray(Y, dtype=np.float64), compute_uv=False)
    x = np.asarray(prox_ksupport_sq(m, beta, r))
    value = float(np.sum((m - x) ** 2) + beta * float(ksupport_norm(x, r)) ** 2)
    return Theory(value, x.tolist(), m.tolist(), beta, r)
