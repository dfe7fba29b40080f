"""Exact expected losses of dropout schemes, their penalties, and Monte Carlo estimates.

For any mask law with mean ``mu`` (all nonzero) and characteristic matrix ``Cbar`` (Thm 3.1,
eq. 14-16)::

    E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>.

For the single hidden layer ``G = V^T X`` everything depends on the data only through the Gram
statistics ``X X^T``, ``Y X^T`` and ``||Y||^2`` (docs/theory.md), so once :class:`Gram` is
built an evaluation costs ``O(abd + b^2 d + (a+b) d^2)``, independent of the number of samples N.

Inputs are NumPy arrays or torch tensors; results come back in the same kind (a torch scalar keeps
autograd), in float64 unless the inputs are float32. Data are column-wise: X (b x N), Y (a x N),
G (d x N), U (a x d), V (b x d).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np

from . import _validation as check
from ._arrays import Kind, common_kind, convert, scalar, to_numpy
from ._threads import small_work
from ._validation import as_generator
from .schemes import IndependentBlocks, Scheme, check_scheme

if TYPE_CHECKING:
    from ._arrays import Array

__all__ = [
    "Gram",
    "MonteCarloEstimate",
    "expected_loss",
    "linear_penalty",
    "penalty",
    "sampled_loss",
    "weight_keep_prob",
]


class MonteCarloEstimate(NamedTuple):
    """A sample mean and its standard error (sample standard deviation / sqrt(n))."""

    mean: float
    stderr: float


def weight_keep_prob(scheme: Scheme) -> float | None:
    """``theta`` of a law whose masks fall on the entries of a weight matrix (DropConnect,
    eq. 19), or None for a law on the hidden units.

    The regularizers and the samplers of masks on weights (the corrected Thm 4.1 in docs/theory.md,
    Algorithm 1 on V's entries) hold for entries kept independently with probability theta.

    Raises:
        ValueError: a law on weights whose entries are not independent.
    """
    if scheme.acts_on != "weights":
        return None
    sampler = scheme.sampler
    if not (isinstance(sampler, IndependentBlocks) and sampler.block_size == 1):
        raise ValueError(
            "masks on the entries of a weight matrix must be independent (as DropConnect's), "
            f"got {scheme!r}"
        )
    return sampler.keep_prob


@functools.lru_cache(maxsize=64)
def _weights(scheme: Scheme | None, d: int, kind: Kind, plus_one: bool = False) -> Array | None:
    """``Cbar`` (``1 + Cbar`` if ``plus_one``) in the evaluation's kind, cached per scheme, width
    and kind (read-only: callers only multiply by it); None means all ones (the fit alone)."""
    if scheme is None:
        return None
    cbar = scheme.characteristic(d)
    if plus_one:
        cbar = cbar + 1.0
    cbar.setflags(write=False)
    return convert(cbar, kind)


def _check_factors(U: Array, V: Array, *, finite: bool = True) -> tuple[Array, Array]:
    U = check.check_matrix(U, "U", finite=finite)
    V = check.check_matrix(V, "V", finite=finite)
    check.check_same(U.shape[1], V.shape[1], "U and V must have the same number of columns d")
    return U, V


def penalty(U: Array, G: Array, scheme: Scheme) -> Array:
    """The regularizer induced by masks on the hidden features ``G`` (Thm 3.1, eq. 15).

    ``Omega = <Cbar, (U^T U) * (G G^T)> = sum_ij Cbar_ij (u_i^T u_j)(g_i^T g_j)``, where ``g_i``
    is row i of G. For Dropout this is ``(1-theta)/theta sum_i ||u_i||^2 ||g_i||^2`` (Cor. 3.2;
    eq. 17 omits the factor ``(1-theta)/theta``, see docs/theory.md). A law on weights (DropConnect)
    here masks the entries of the last matrix U, whose regularizer is that of
    ``scheme.on_units()``: exactly Dropout's.

    Args:
        U: (a, d) last-layer weights.
        G: (d, N) hidden features, one column per sample.
        scheme: the mask law on the d units.

    Returns:
        The penalty, a scalar of the inputs' kind.
    """
    scheme = check_scheme(scheme)
    U = check.check_matrix(U, "U")
    G = check.check_matrix(G, "G")
    check.check_same(U.shape[1], G.shape[0], "U's columns must match G's rows (d)")
    kind = common_kind(U, G)
    U, G = convert(U, kind), convert(G, kind)
    cbar = _weights(scheme.on_units(), U.shape[1], kind)
    assert cbar is not None  # None only without a scheme
    return scalar((cbar * (U.T @ U) * (G @ G.T)).sum(), kind)


@dataclass(frozen=True)
class Gram:
    """The statistics of a data set that the linear objectives depend on (docs/theory.md).

    ``xx = X X^T`` (b x b), ``yx = Y X^T`` (a x b) and ``yy = ||Y||_F^2``. Build once with
    :meth:`from_data`; every evaluation afterwards costs nothing in N.

    The statistics keep the kind of the data; an evaluation runs in the common kind of the
    statistics and the factors (NumPy data with torch ``U, V`` gives a torch result that keeps
    autograd through ``U, V``, on their device).
    """

    xx: Array
    yx: Array | None
    yy: Array | None
    kind: Kind
    #: ``[Y X^T; X X^T]`` ((a+b) x b), of which yx and xx are views: one product with V gives both.
    stacked: Array | None = None

    @classmethod
    def from_data(cls, X: Array, Y: Array | None = None) -> Gram:
        """Gram statistics of inputs X (b x N) and, optionally, targets Y (a x N)."""
        X = check.check_matrix(X, "X")
        if Y is None:
            kind = common_kind(X)
            X = convert(X, kind)
            with small_work(float(X.shape[0]) ** 2 * X.shape[1]):
                return cls(xx=X @ X.T, yx=None, yy=None, kind=kind)
        Y = check.check_matrix(Y, "Y")
        check.check_same(Y.shape[1], X.shape[1], "X and Y must have the same number of samples N")
        kind = common_kind(X, Y)
        X, Y = convert(X, kind), convert(Y, kind)
        a = Y.shape[0]
        if kind.is_torch:
            import torch  # loaded: the data hold a tensor

            assert isinstance(Y, torch.Tensor) and isinstance(X, torch.Tensor)
            both: Array = torch.cat([Y, X])
        else:
            both = np.concatenate([Y, X])
        with small_work(float(both.shape[0]) * X.shape[0] * X.shape[1]):
            stacked = both @ X.T
        return cls(xx=stacked[a:], yx=stacked[:a], yy=(Y * Y).sum(), kind=kind, stacked=stacked)

    def check_factors(
        self, U: Array, V: Array, *, needs_y: bool = False
    ) -> tuple[Array, Array, Kind]:
        """Factors ``U`` (a x d) and ``V`` (b x d) of shapes that fit these statistics (``needs_y``:
        Y's as well), converted to the kind of an evaluation (the statistics' and theirs), and
        that kind. Their values are not scanned: an evaluation checks its result instead.

        Raises:
            ValueError: a shape that does not fit, naming it; ``needs_y`` without Y.
        """
        U, V = _check_factors(U, V, finite=False)
        check.check_same(V.shape[0], self.xx.shape[0], "V's rows must match X's rows (b)")
        if needs_y:
            if self.yx is None:
                raise ValueError("these statistics were built without Y; pass Y to from_data")
            check.check_same(U.shape[0], self.yx.shape[0], "U's rows must match Y's rows (a)")
        kind = common_kind(U, V, self.xx)
        return convert(U, kind), convert(V, kind), kind

    def fit(self, U: Array, V: Array) -> Array:
        """``||Y - U V^T X||_F^2 = ||Y||^2 - 2 <U, Y X^T V> + <U^T U, V^T X X^T V>``."""
        return self._evaluate(U, V, None, fit=True)

    def penalty(self, U: Array, V: Array, scheme: Scheme) -> Array:
        """The regularizer of ``scheme`` on the single hidden layer ``U V^T X``.

        Masks on the hidden units: ``<Cbar * (U^T U), V^T X X^T V>`` (eq. 15 with G = V^T X;
        eq. 5 for GridBlock). ``DropConnect`` masks the entries of V (eq. 19), and its
        regularizer is ``(1-theta)/theta sum_k ||u_k||^2 sum_j V_jk^2 ||x_j||^2`` with ``x_j`` row
        j of X: Thm 4.1's ``sum_k ||u_k||^2 ||X^T v_k||^2`` holds only when ``X X^T`` is diagonal
        (docs/theory.md).
        """
        return self._evaluate(U, V, check_scheme(scheme), fit=False)

    def expected_loss(self, U: Array, V: Array, scheme: Scheme) -> Array:
        """``E ||Y - U diag(mu)^-1 diag(z) V^T X||^2 = fit + penalty`` (eq. 4, eq. 14)."""
        return self._evaluate(U, V, check_scheme(scheme), fit=True)

    def _evaluate(self, U: Array, V: Array, scheme: Scheme | None, *, fit: bool) -> Array:
        """The fit (if ``fit``) plus the penalty of ``scheme`` (if any), sharing the products."""
        U, V, kind = self.check_factors(U, V, needs_y=fit)
        theta = None if scheme is None else weight_keep_prob(scheme)
        on_units = theta is None  # else the masks fall on V's entries (eq. 19)
        (a, d), b = U.shape, V.shape[0]
        flops = float(d) * ((a + b) * b + (a + b) * d)  # [Y X^T; X X^T] V, U^T U, V^T X X^T V
        with np.errstate(all="ignore"), small_work(flops):  # non-finite: reported below
            xx = convert(self.xx, kind)
            if fit:  # Y X^T V and X X^T V in one product
                assert self.stacked is not None  # from_data with Y
                products = convert(self.stacked, kind) @ V
                yx_v, xx_v = products[:a], products[a:]
            elif on_units:
                xx_v = xx @ V
            value: Array | float = 0.0
            if fit or on_units:
                # fit + penalty = ||Y||^2 - 2 <U, Y X^T V> + <(1 + Cbar) * U^T U, V^T X X^T V>
                weights = _weights(scheme, d, kind, fit) if on_units else None
                quadratic = (U.T @ U) * (V.T @ xx_v)
                value = (quadratic if weights is None else weights * quadratic).sum()
            if fit:
                assert self.yy is not None  # from_data with Y
                value = convert(self.yy, kind) - 2.0 * (U * yx_v).sum() + value
            if theta is not None:  # not on_units
                unit_norms = (U * U).sum(0)
                weight_norms = (xx.diagonal()[:, None] * V * V).sum(0)
                value = value + (1.0 - theta) / theta * (unit_norms * weight_norms).sum()
        check.check_result(value, U=U, V=V)
        return scalar(cast("Array", value), kind)  # an array: one branch above always runs


def linear_penalty(U: Array, V: Array, X: Array, scheme: Scheme) -> Array:
    """The regularizer of ``scheme`` on the network ``U V^T X`` (eq. 5, eq. 15, docs/theory.md).

    Equals ``penalty(U, V^T X, scheme)`` for masks on the hidden units, computed in the Gram form;
    for ``DropConnect`` the masks fall on V's entries (corrected Thm 4.1, see :meth:`Gram.penalty`).

    Args:
        U: (a, d) output weights.
        V: (b, d) input weights.
        X: (b, N) inputs, one column per sample.
        scheme: the mask law.
    """
    return Gram.from_data(X).penalty(U, V, scheme)


def expected_loss(Y: Array, U: Array, V: Array, X: Array, scheme: Scheme) -> Array:
    """The deterministic objective ``||Y - U V^T X||^2 + linear_penalty(U, V, X, scheme)``.

    It equals ``E_z ||Y - U diag(mu)^-1 diag(z) V^T X||_F^2`` (Lemma 2.1 eq. 4, Thm 3.1 eq. 14),
    and for DropConnect ``E_Z ||Y - (1/theta) U (Z * V)^T X||_F^2`` (eq. 19). Computed in the Gram
    form: absolute accuracy about ``eps * ||Y||^2``.

    Args:
        Y: (a, N) targets.
        U: (a, d) output weights.
        V: (b, d) input weights.
        X: (b, N) inputs.
        scheme: the mask law.
    """
    return Gram.from_data(X, Y).expected_loss(U, V, scheme)


def sampled_loss(
    Y: Array,
    U: Array,
    V: Array,
    X: Array,
    scheme: Scheme,
    num_samples: int,
    seed: np.random.Generator | int | None = None,
) -> MonteCarloEstimate:
    """Monte Carlo estimate of :func:`expected_loss` from ``num_samples`` independent masks.

    Each mask's loss ``||Y - U diag(z / mu) V^T X||^2`` is evaluated exactly (in the Gram form,
    ``O(d^2)`` per mask); DropConnect draws a fresh (b, d) mask of V per sample.

    Args:
        Y: (a, N) targets.
        U: (a, d) output weights.
        V: (b, d) input weights.
        X: (b, N) inputs.
        scheme: the mask law.
        num_samples: number of masks, >= 2 (the standard error needs two).
        seed: a ``numpy.random.Generator``, an integer seed, or None.

    Returns:
        ``MonteCarloEstimate(mean, stderr)`` as Python floats.
    """
    scheme = check_scheme(scheme)
    num_samples = check.check_positive_int(num_samples, "num_samples")
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a standard error, got {num_samples}")
    rng = as_generator(seed)
    stats = Gram.from_data(X, Y)
    stats.check_factors(U, V, needs_y=True)
    U, V = to_numpy(U), to_numpy(V)
    check.check_finite(U, "U")
    check.check_finite(V, "V")
    assert stats.yx is not None and stats.yy is not None  # built with Y
    xx, yx, yy = to_numpy(stats.xx), to_numpy(stats.yx), float(to_numpy(stats.yy))
    theta = weight_keep_prob(scheme)
    if theta is not None:
        losses = _weight_mask_losses(U, V, xx, yx, yy, scheme, theta, num_samples, rng)
    else:
        d = U.shape[1]
        scales = scheme.sample(num_samples, d, rng) / scheme.mean(d)
        linear = (U * (yx @ V)).sum(0)
        quadratic = (U.T @ U) * (V.T @ xx @ V)
        losses = yy - 2.0 * scales @ linear + np.einsum("ni,ij,nj->n", scales, quadratic, scales)
    return MonteCarloEstimate(
        float(losses.mean()), float(losses.std(ddof=1) / np.sqrt(num_samples))
    )


def _weight_mask_losses(
    U: np.ndarray,
    V: np.ndarray,
    xx: np.ndarray,
    yx: np.ndarray,
    yy: float,
    scheme: Scheme,
    theta: float,
    num_samples: int,
    rng: np.random.Generator,
    chunk: int = 256,
) -> np.ndarray:
    """``||Y - (1/theta) U (Z * V)^T X||^2`` for ``num_samples`` masks Z of V's entries drawn
    from ``scheme`` (eq. 19), in the Gram form."""
    b, d = V.shape
    gram_u = U.T @ U
    losses = np.empty(num_samples)
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        masked = scheme.sample(n, b * d, rng).reshape(n, b, d) * V / theta
        linear = np.einsum("ad,ab,nbd->n", U, yx, masked)
        quadratic = np.einsum("nbi,bc,ncj,ij->n", masked, xx, masked, gram_u, optimize=True)
        losses[start : start + n] = yy - 2.0 * linear + quadratic
    return losses
