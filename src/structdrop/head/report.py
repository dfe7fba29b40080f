"""What a mask law does to a last linear layer, from its streaming statistics.

For features ``G`` (d x N) entering a last layer ``U`` (a x d) through masks of a law with
characteristic matrix ``Cbar`` (eq. 16), :func:`head_report` gives, from :class:`HeadStats`:

* the deterministic objective of Thm 3.1 (eq. 14-15) and its two terms::

      ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>

  (for DropConnect on ``U`` itself, ``Cbar`` is Dropout's: docs/theory.md);
* the best head for these features: with ``G`` fixed the objective is the quadratic
  ``||Y||^2 - 2 <U, Y G^T> + <U M, U>``, ``M = (G G^T) * (1 + Cbar)``, whose minimizer solves the
  linear system ``U M = Y G^T`` (any law); its value and the gap of ``U`` to it;
* the capacity bound over ``U`` and ``G`` together (Prop. 3.3 with its 1/d, Thm 2.7; corrected
  in docs/theory.md): for laws of independent blocks of ``r`` units (Dropout, grid DropBlock,
  DropConnect), ``min_A ||Y - A||^2 + beta ||A||_(r)^2`` with ``beta = (r/d)(1-theta)/theta``,
  whose minimizer shrinks the singular values ``m`` of ``Y`` to ``x = prox(m)``. Every ``(U, G)``
  at width d is at least this; it is attained when d is at least the rank of the minimizer
  (and the blocks can share its directions). The trained spectrum of ``U G`` is reported
  beside the predicted ``x``, and the block norms ``||U_i G_i||_F``, equal at a minimizer
  (Thm 2.5);
* with a bias ``b`` in the head (not masked): the objective is ``||Y - U G - b 1^T||^2`` plus
  the same regularizer (of the uncentred ``G G^T``: the masks act on ``g``, not on its
  deviation from the mean). The best ``b`` for any ``U`` is ``(Y - U G) 1 / N``: the best head
  solves the problem of the centred ``Y`` and ``G`` (``U M_c = Y_c G_c^T`` with
  ``M_c = G_c G_c^T + Cbar * (G G^T)``), and the capacity bound is that of the centred
  targets ``Y_c`` (a free offset fits the mean, and the regularizer only grows with a mean in
  ``G``: ``Cbar * U^T U`` is positive semi-definite). Spectra and block norms are then those of
  the centred predictions ``U G_c``.

Cost: ``O(a d^2 + d^3)`` (one Cholesky factorization of ``M``), nothing in N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from .. import _validation as check
from .._arrays import to_numpy
from .._threads import small_work
from ..ksupport import ksupport_norm, prox_ksupport_sq
from ..optimum import regularization_strength
from ..schemes import IndependentBlocks, Scheme, check_scheme
from .stats import HeadStats

__all__ = ["HeadReport", "head_report"]


@dataclass(frozen=True)
class HeadReport:
    """What a mask law does to a head (see the module docstring for the formulas).

    Scalars are Python floats, spectra tuples of floats in decreasing order; the best head is a
    float64 CPU tensor. :meth:`to_dict` gives everything but the best head's weights as JSON.

    Attributes:
        scheme: the law's identity (``Scheme.to_dict()``).
        samples: N.
        width: d.
        outputs: a.
        centred: whether the head has a bias (the statistics are then centred, see above).
        objective: ``fit + regularizer`` of the head (Thm 3.1, eq. 14).
        fit: ``||Y - U G (- b 1^T)||^2``.
        regularizer: ``<Cbar, (U^T U) * (G G^T)>`` (eq. 15).
        regularizer_fraction: ``regularizer / objective`` (None when the objective is 0).
        best_objective: the least objective over heads, for these features.
        excess_over_best_head: ``objective - best_objective``.
        gap_to_best_head: that excess relative to ``best_objective`` (None when it is 0).
        capacity_bound: the least objective over heads and features at width d (Prop. 3.3,
            Thm 2.7); None for laws without a closed form (``capacity_note`` says why).
        excess_over_capacity_bound: ``objective - capacity_bound``.
        capacity_gap: that excess relative to ``capacity_bound`` (None when it is 0 or None).
        capacity_note: why there is no bound, or when it is attained.
        beta: ``(r/d)(1-theta)/theta`` (None without a bound).
        block_size: r of the law's independent blocks (1 for Dropout; None for other laws).
        singular_values: of ``U G`` (``U G_c`` with a bias), measured.
        predicted_singular_values: ``x``, those of the bound's minimizer (None without one).
        target_singular_values: ``m``, those of ``Y`` (``Y_c``).
        block_norms: ``||U_i G_i||_F`` per block of r units (Def. 2.4; None for other laws).
        balance: ``std / mean`` of the block norms, 0 at a minimizer (Thm 2.5).
        best_weight: the best head's weight (a x d), float64.
        best_bias: its bias (a), or None without one.
    """

    scheme: dict[str, Any]
    samples: int
    width: int
    outputs: int
    centred: bool
    objective: float
    fit: float
    regularizer: float
    regularizer_fraction: float | None
    best_objective: float
    excess_over_best_head: float
    gap_to_best_head: float | None
    capacity_bound: float | None
    excess_over_capacity_bound: float | None
    capacity_gap: float | None
    capacity_note: str
    beta: float | None
    block_size: int | None
    singular_values: tuple[float, ...]
    predicted_singular_values: tuple[float, ...] | None
    target_singular_values: tuple[float, ...]
    block_norms: tuple[float, ...] | None
    balance: float | None
    best_weight: Tensor = field(repr=False)
    best_bias: Tensor | None = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the best head's weights, JSON-able (tuples as lists)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        del data["best_weight"], data["best_bias"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def summary(self) -> str:
        """One line: the objective, its regularizer's share and the two gaps."""
        parts = [
            f"objective {self.objective:.6g}",
            f"regularizer {self.regularizer:.4g}"
            + (
                f" ({self.regularizer_fraction:.1%})"
                if self.regularizer_fraction is not None
                else ""
            ),
            "gap to the best head "
            + ("-" if self.gap_to_best_head is None else f"{self.gap_to_best_head:.2%}"),
            "to the capacity bound "
            + ("-" if self.capacity_gap is None else f"{self.capacity_gap:.2%}"),
        ]
        return ", ".join(parts)


def _relative(excess: float, reference: float | None) -> float | None:
    return None if reference is None or reference <= 0.0 else excess / reference


def _as_matrix(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` (a tensor or an array) as a finite float64 NumPy array of ``shape``."""
    array = to_numpy(value, name)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got NaN or infinite values")
    return array


def _spectrum(gram: np.ndarray) -> np.ndarray:
    """The singular values of a matrix ``B`` from ``B B^T`` (symmetric PSD), decreasing.

    Eigenvalues at most ``n eps lambda_max`` (n the size: the resolution of the Gram matrix,
    whose rounding is of that order) are zeros: a rank-deficient ``B`` (centred labels, say)
    has exact zero singular values, not the square roots of rounding errors (1e-8 of the
    largest), which the prox would keep and the rank would count."""
    if not np.any(gram - np.diag(np.diag(gram))):  # diagonal: one-hot labels, no bias
        values = np.sort(np.diag(gram))
    else:
        values = scipy.linalg.eigvalsh(gram, driver="evd", check_finite=False)
    tolerance = values.size * np.finfo(float).eps * max(float(values[-1]), 0.0)
    values = np.where(values > tolerance, values, 0.0)
    return np.sqrt(values)[::-1]


def _solve_psd(M: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The minimum-norm ``U`` with ``U M = R`` in the least-squares sense (M symmetric PSD).

    Features that are zero on every sample (a dead unit: a zero row and column of M) get zero
    weights. The rest is solved by Cholesky when every pivot of the factor is above the
    tolerance ``n eps max(diag M)`` (n the number of live features); otherwise M is singular
    there to working precision (collinear features), and the minimum-norm solution comes from
    an eigendecomposition whose eigenvalues at most ``n eps max(eig M)`` count as zeros, so
    that the weights of identical features are split evenly on every machine, not as the
    rounding of a tiny pivot would split them."""
    d = M.shape[0]
    diagonal = np.diag(M)
    live = np.flatnonzero(diagonal > 0.0)
    U = np.zeros((R.shape[0], d))
    if live.size == 0:
        return U
    every = live.size == d  # no dead feature: no copies
    M_live = M if every else M[np.ix_(live, live)]
    R_live = R if every else R[:, live]
    tolerance = live.size * np.finfo(float).eps
    try:
        factor, lower = scipy.linalg.cho_factor(M_live, lower=True, check_finite=False)
        pivots = np.diag(factor) ** 2
        if pivots.min() > tolerance * float(diagonal[live].max()):
            solution = scipy.linalg.cho_solve((factor, lower), R_live.T, check_finite=False).T
            if every:
                return np.ascontiguousarray(solution)
            U[:, live] = solution
            return U
    except np.linalg.LinAlgError:
        pass
    values, vectors = scipy.linalg.eigh(M_live, check_finite=False)
    keep = values > tolerance * max(float(values[-1]), 0.0)
    inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    U[:, live] = R_live @ inverse
    return U


def _capacity(
    law: Scheme, width: int, m: np.ndarray
) -> tuple[float | None, float | None, int | None, np.ndarray | None, str]:
    """``(bound, beta, r, x, note)``: Prop. 3.3 / Thm 2.7 for ``law`` at ``width``, from the
    singular values ``m`` of ``Y`` (or ``Y_c``), decreasing."""
    sampler = law.sampler
    if law.acts_on != "units" or not isinstance(sampler, IndependentBlocks):
        return (
            None,
            None,
            None,
            None,
            f"no closed form for {type(law).__name__}: the bound of Thm 2.7 holds for laws of "
            "independent blocks of units (Bernoulli, GridBlock, DropConnect on the head)",
        )
    beta = regularization_strength(law, width)
    r = sampler.block_size
    x = np.asarray(prox_ksupport_sq(m, beta, r))
    bound = float(np.sum((m - x) ** 2) + beta * float(ksupport_norm(x, r)) ** 2)
    rank = int(np.count_nonzero(x > 0))
    note = (
        f"attained at width d >= rank(A*) = {rank}"
        + (" (and blocks that share its directions)" if r > 1 else "")
        + f"; d = {width}"
    )
    return bound, beta, r, x, note


def head_report(stats: HeadStats, weight: Any, scheme: Scheme, *, bias: Any = None) -> HeadReport:
    """The report of a head ``U`` (``weight``, a x d) reading the features of ``stats``
    through masks of ``scheme`` (see the module docstring).

    Args:
        stats: the head's statistics (:class:`HeadStats`), at least one sample.
        weight: ``U`` (a x d), a tensor or an array (e.g. ``head.weight``).
        scheme: the mask law on the d features (for DropConnect: on the head's entries).
        bias: the head's bias (a), or None for a head without one.

    Returns:
        A :class:`HeadReport`.

    Raises:
        TypeError: ``scheme`` is not a mask law.
        ValueError: no samples, shapes that do not fit the statistics, non-finite weights, or a
            law that cannot act on d features (e.g. a block size that does not divide d).
    """
    if not isinstance(stats, HeadStats):
        raise TypeError(f"stats must be HeadStats, got {type(stats).__name__}")
    if stats.samples == 0:
        raise ValueError("stats holds no samples: update it with a batch first")
    law = check_scheme(scheme)
    d, a, n = stats.width, stats.outputs, stats.samples
    law.check_width(d)
    units = law.on_units()  # DropConnect on the head regularizes as Dropout (docs/theory.md)
    check.check_law_on_units(units, "head_report")
    U = _as_matrix(weight, "weight", (a, d))
    b = None if bias is None else _as_matrix(bias, "bias", (a,))
    sums = {name: to_numpy(value, name) for name, value in stats._sums().items()}
    S, R = sums["gram"], sums["cross"]
    g_sum, y_sum = sums["feature_sum"], sums["target_sum"]
    YY = np.diag(y_sum) if stats.labels else sums["target_gram"]
    with small_work(float(a) * d * d + float(d) ** 3 / 3):
        # the fit and the regularizer of U (and b): one product U S
        US = U @ S
        quadratic = float(np.vdot(US, U))
        fit = float(np.trace(YY)) - 2.0 * float(np.vdot(U, R)) + quadratic
        if b is not None:
            Ug = U @ g_sum
            fit += -2.0 * float(b @ y_sum) + 2.0 * float(b @ Ug) + n * float(b @ b)
        # the best head for these features: U M = R (centred with a bias)
        if b is None:
            S_fit, R_fit, YY_fit = S, R, YY
        else:
            S_fit = S - np.outer(g_sum, g_sum) / n
            R_fit = R - np.outer(y_sum, g_sum) / n
            YY_fit = YY - np.outer(y_sum, y_sum) / n
        M = S_fit + 0.0  # a copy: S may share the statistics' memory
        sampler = units.sampler
        blocks: int | None = None
        energies: np.ndarray | None = None  # <U_i S_ii, U_i> of each block
        if isinstance(sampler, IndependentBlocks):  # Cbar = c blockdiag(1 1^T): blockwise
            blocks = sampler.block_size
            c = (1.0 - sampler.keep_prob) / sampler.keep_prob
            energies = _block_energies(U, S, blocks)
            regularizer = c * math.fsum(energies)
            k = d // blocks
            index = np.arange(k)
            M.reshape(k, blocks, k, blocks)[index, :, index, :] += c * _diagonal_blocks(S, blocks)
        else:
            P = units.characteristic(d) * S
            regularizer = float(np.vdot(U @ P, U))
            M += P
        objective = fit + regularizer
        best = _solve_psd(M, R_fit)
        best_objective = float(np.trace(YY_fit)) - float(np.vdot(best, R_fit))
        best_bias = None if b is None else (y_sum - best @ g_sum) / n
        # spectra and blocks of the (centred) predictions
        US_fit = US if b is None else US - np.outer(Ug, g_sum) / n
        singular = _spectrum(US_fit @ U.T)[: min(a, d)]
        if blocks is not None and b is not None:
            energies = _block_energies(U, S_fit, blocks)  # of the centred features
        norms = None if energies is None else np.sqrt(np.clip(energies, 0.0, None))
    targets = _spectrum(YY_fit)
    bound, beta, r, predicted, note = _capacity(units, d, targets)
    excess_best = objective - best_objective
    excess_bound = None if bound is None else objective - bound
    mean_norm = None if norms is None else float(norms.mean())
    return HeadReport(
        scheme=law.to_dict(),
        samples=n,
        width=d,
        outputs=a,
        centred=b is not None,
        objective=objective,
        fit=fit,
        regularizer=regularizer,
        regularizer_fraction=_relative(regularizer, objective),
        best_objective=best_objective,
        excess_over_best_head=excess_best,
        gap_to_best_head=_relative(excess_best, best_objective),
        capacity_bound=bound,
        excess_over_capacity_bound=excess_bound,
        capacity_gap=None if excess_bound is None else _relative(excess_bound, bound),
        capacity_note=note,
        beta=beta,
        block_size=r,
        singular_values=tuple(float(v) for v in singular),
        predicted_singular_values=None if predicted is None else tuple(float(v) for v in predicted),
        target_singular_values=tuple(float(v) for v in targets),
        block_norms=None if norms is None else tuple(float(v) for v in norms),
        balance=None if norms is None or not mean_norm else float(norms.std() / mean_norm),
        best_weight=torch.from_numpy(best),
        best_bias=None if best_bias is None else torch.from_numpy(best_bias),
    )


def _diagonal_blocks(S: np.ndarray, r: int) -> np.ndarray:
    """The k = d / r diagonal blocks of S, shape (k, r, r) (a copy)."""
    k = S.shape[0] // r
    index = np.arange(k)
    return S.reshape(k, r, k, r)[index, :, index, :]


def _block_energies(U: np.ndarray, S: np.ndarray, r: int) -> np.ndarray:
    """``<U_i S_ii, U_i>`` for each block i of r consecutive units: ``||U_i G_i||_F^2``."""
    a, d = U.shape
    blocks = U.reshape(a, d // r, r)
    return np.einsum("akr,krs,aks->k", blocks, _diagonal_blocks(S, r), blocks, optimize=True)
