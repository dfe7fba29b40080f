"""The k-support norm, its spectral version, and the proximal maps of their squares.

DropBlock with blocks of r units regularizes the prediction ``A`` by ``beta ||A||_(r)^2``, the
squared spectral r-support norm (Thm 2.3, eq. 11, corrected in docs/theory.md). With ``a`` the
sorted absolute values (or singular values), ``a_0 = +inf`` and ``S_rho = sum_{i >= rho} a_i``::

    ||a||_(k)^2 = sum_{i < rho} a_i^2 + S_rho^2 / (k - rho + 1),

where ``rho`` is the unique index in ``{1..k}`` with ``a_{rho-1} > S_rho/(k-rho+1) >= a_rho``
(Argyriou et al. 2012, Prop. 2.1). Thm 2.3 says rho "maximizes (11)"; that rule is wrong (for
``w = (1, 1, 1)``, ``k = 2`` it gives 5 instead of 4.5). It is also the smallest ``rho`` with
``S_rho/(k-rho+1) >= a_rho``, which is how it is found here: the rule degrades gracefully under
rounding.

Every routine is scale-safe: the norm is absolutely homogeneous and the prox positively
homogeneous (``prox(c w) = c prox(w)`` for ``c > 0``), so they work on the input divided by a
power of two near its largest entry (exact) and scale the result back. A result is therefore
right whenever it is representable (``ksupport_norm([1e300, 1e300], 2)`` is ``sqrt(2) 1e300``,
not inf), and a ValueError names the overflow when it is not.

References:
    A. Argyriou, R. Foygel, N. Srebro. Sparse prediction with the k-support norm. NIPS 2012.
    A. M. McDonald, M. Pontil, D. Stamos. Spectral k-support norm regularization. NIPS 2014.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import _validation as check
from ._arrays import binary_exponent, common_kind, scalar, scale_back, to_numpy
from ._threads import small_work

if TYPE_CHECKING:
    from ._arrays import Array

__all__ = [
    "TIE_RTOL",
    "ProxParts",
    "ksupport_norm",
    "ksupport_split",
    "ksupport_sq_sorted",
    "prox_ksupport_sq",
    "prox_parts",
    "prox_sorted",
    "prox_spectral_ksupport_sq",
    "spectral_ksupport_norm",
]


#: Relative tolerance of the decisions taken on sorted values such as singular values: two
#: values within ``TIE_RTOL * max`` of each other are tied, values at most ``TIE_RTOL * max``
#: are zero. LAPACK returns singular values to about ``n eps max`` (1e-13 for n in the
#: hundreds); 1e-10 leaves a margin of three orders, so that the rounding of another BLAS kernel
#: or a nudge of the inputs by a few ulps cannot change a decision, while a decision moves only
#: for data within 1e-10 (relative) of a tie, a zero or a kink. See docs/theory.md,
#: "Decisions on computed numbers".
TIE_RTOL = 1e-10


def ksupport_split(a: np.ndarray, k: int) -> int:
    """The index ``rho`` in ``{1..min(k, n)}`` of the k-support norm of sorted ``a >= 0``.

    ``a`` must be sorted in decreasing order. Returns the smallest ``rho`` with
    ``S_rho / (k - rho + 1) >= a_rho - TIE_RTOL * a_1`` (see the module docstring): ties of
    ``a`` within the tolerance give the same ``rho`` on every machine. The norm is the same to
    second order in the tolerance for either neighbouring ``rho`` (the two formulas agree, with
    their first derivatives, where ``S_rho / (k - rho + 1) = a_rho``).
    """
    k = min(k, a.size)  # for k >= n the k-support norm is the l2 norm, i.e. k = n
    tails = np.cumsum(a[::-1])[::-1]  # tails[i] = S_{i+1}
    rho = np.arange(1, k + 1)
    slack = TIE_RTOL * a[0] if a.size else 0.0
    ok = tails[:k] / (k - rho + 1) >= a[:k] - slack  # ok[-1] holds: S_k >= a_k
    return int(rho[np.argmax(ok)])


def ksupport_sq_sorted(a: np.ndarray, k: int) -> float:
    """``||a||_(k)^2`` for sorted ``a >= 0`` of moderate scale (callers normalize: see
    :func:`_ksupport_norm_sorted`)."""
    k = min(k, a.size)
    rho = ksupport_split(a, k)
    head = a[: rho - 1]
    tail = a[rho - 1 :].sum()
    return float(head @ head + tail * tail / (k - rho + 1))


def _ksupport_norm_sorted(a: np.ndarray, k: int) -> tuple[float, int]:
    """``||a||_(k) = value * 2**exponent`` for sorted ``a >= 0`` at any scale.

    The norm of ``a / 2**e`` (largest entry in [0.5, 1), exact) is in [0.5, sqrt(n)); scaling it
    back by ``2**e`` is left to the caller, which reports an overflow.
    """
    exponent = binary_exponent(a[:1])
    return float(np.sqrt(ksupport_sq_sorted(np.ldexp(a, -exponent), k))), exponent


def _check_k(k: object) -> int:
    return check.check_positive_int(k, "k")


def ksupport_norm(w: Array, k: int) -> Array:
    """The k-support norm ``||w||_(k)`` (Argyriou et al. 2012; the paper's eq. 11 for vectors).

    ``k = 1`` gives the l1 norm, ``k >= len(w)`` the l2 norm.

    Args:
        w: a vector (NumPy or torch).
        k: the support size, >= 1.

    Returns:
        The norm, a scalar of w's kind.
    """
    w = check.check_array(w, "w", ndim=1)
    k = _check_k(k)
    kind = common_kind(w)
    a = np.sort(np.abs(to_numpy(w)))[::-1]
    value, exponent = _ksupport_norm_sorted(a, k)
    return scalar(scale_back(value, exponent, kind, "the k-support norm", "w"), kind)


def spectral_ksupport_norm(A: Array, k: int) -> Array:
    """The spectral k-support norm: the k-support norm of A's singular values (McDonald et al.).

    ``k = 1`` gives the nuclear norm, ``k >= rank`` the Frobenius norm.
    """
    A = check.check_matrix(A, "A")
    k = _check_k(k)
    kind = common_kind(A)
    values = to_numpy(A)
    exponent = binary_exponent(values)  # the SVD of A / 2**e: no overflow, no underflow
    with small_work(_svd_flops(values.shape)):
        singular_values = np.linalg.svd(np.ldexp(values, -exponent), compute_uv=False)
    value, more = _ksupport_norm_sorted(singular_values, k)
    return scalar(
        scale_back(value, exponent + more, kind, "the spectral k-support norm", "A"), kind
    )


class ProxParts(NamedTuple):
    """The prox ``x`` of sorted ``m`` and the piece of the prox map it lies on.

    ``x_i = m_i / (1 + beta)`` on ``head``, ``x_i = m_i - tau`` on ``middle`` (where ``tau``
    depends on ``m`` through ``tau = beta sum_middle m / (k - #head + beta #middle)``, so
    ``dtau/dm_i = coupling`` there) and ``x_i = 0`` elsewhere. The masks are those of the piece
    of the piecewise linear prox map that contains ``m``, decided with the tolerance
    ``TIE_RTOL``: tied entries share a piece, entries at most ``TIE_RTOL * max m`` are zeros
    (on the head when ``k`` leaves a block for them, else on the zero piece), and at a kink the
    piece on the side of the larger ``tau`` is taken. Its Jacobian is
    ``diag(slope) - coupling 1_middle 1_middle^T`` (see :meth:`jacobian`).
    """

    x: np.ndarray
    head: np.ndarray
    middle: np.ndarray
    tau: float
    coupling: float
    beta: float

    @property
    def slope(self) -> np.ndarray:
        """``dx_i/dm_i`` without the coupling: 1/(1+beta) on head, 1 on middle, 0 elsewhere."""
        return np.where(self.head, 1.0 / (1.0 + self.beta), np.where(self.middle, 1.0, 0.0))

    def jacobian(self) -> np.ndarray:
        """``dx/dm`` on this piece (symmetric)."""
        middle = self.middle.astype(np.float64)
        return np.diag(self.slope) - self.coupling * np.outer(middle, middle)


def _breakpoints(positive: np.ndarray, beta: float) -> np.ndarray:
    """The sorted breakpoints ``{m_i, beta m_i / (1 + beta)}`` of ``g`` (see :func:`prox_parts`)."""
    return np.unique(np.concatenate([positive, beta * positive / (1.0 + beta)]))


def _root_piece(m: np.ndarray, beta: float, k: int) -> tuple[float, float]:
    """The piece ``(left, right)`` between two breakpoints on which ``g(tau) = k`` has its root,
    for sorted ``m`` of unit scale with more than ``k`` positive entries."""
    positive = m[m > 0]

    def g(tau: float) -> float:
        with np.errstate(over="ignore"):  # a subnormal tau: terms of inf are clipped to 1
            return float(np.clip(beta * (positive - tau) / tau, 0.0, 1.0).sum())

    breakpoints = _breakpoints(positive, beta)
    # g(breakpoints[0]) = #positive > k and g(breakpoints[-1]) = g(max m) = 0 < k: bisect for
    # the last breakpoint with g >= k; the root lies on the piece that starts there.
    lo, hi = 0, breakpoints.size - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if g(breakpoints[mid]) >= k:
            lo = mid
        else:
            hi = mid
    return float(breakpoints[lo]), float(breakpoints[hi])


def _on_piece(
    m: np.ndarray, beta: float, k: int, probe: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(head, middle, tau, coupling)`` on the piece of ``g`` that contains ``probe``."""
    # On the piece every term of g is 1, 0 or beta (m_i - tau)/tau: classify at the probe.
    head = (m > 0) & (m * beta / (1.0 + beta) >= probe)
    middle = (m > 0) & ~head & (m > probe)
    denominator = k - head.sum() + beta * middle.sum()
    if middle.any() and denominator > 0:
        return head, middle, float(beta * m[middle].sum() / denominator), beta / denominator
    return head, middle, probe, 0.0  # g is flat at k here: any tau in it gives the same x


def _tied(m: np.ndarray) -> np.ndarray:
    """``m`` (sorted decreasing, unit scale) with its zeros and ties made exact: entries at most
    ``TIE_RTOL * m_1`` become 0 (as :func:`~structdrop._optimum_grad.spectral_tables` treats
    them), then each run of entries whose neighbours are within ``TIE_RTOL * m_1`` of each
    other takes the run's first (largest) value. Zeros come first, so that no run ties a zero
    to a positive value: a positive entry left is more than ``TIE_RTOL * m_1`` from 0."""
    if not m.size:
        return m.copy()
    tolerance = TIE_RTOL * m[0]
    m = np.where(m <= tolerance, 0.0, m)
    starts = np.concatenate([[True], np.diff(m) < -tolerance])
    return m[np.flatnonzero(starts)[np.cumsum(starts) - 1]]


def _decided_piece(m: np.ndarray, beta: float, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(head, middle, coupling)``: the piece of the prox map whose derivative is returned at
    ``m`` (sorted decreasing, unit scale), decided with the tolerance ``TIE_RTOL``.

    The decision is taken on :func:`_tied` values, so tied entries share their piece and
    entries at most ``TIE_RTOL * m_1`` count as zeros (whatever their last bits: 1e-17 and 0
    are decided alike). Zeros are on the ridge piece (slope ``1/(1+beta)``) when a block is
    left for them (``k > #positive``), else on the zero piece. When ``tau`` lies within
    ``TIE_RTOL * m_1`` of a breakpoint, the two pieces that meet there are candidates: a piece
    on which g is flat at k wins (the map is differentiable there: x does not depend on tau),
    else the piece on the side of the larger ``tau`` (a kink: the unit at it counts as the
    smaller piece, zero rather than middle, middle rather than head).
    """
    none = np.zeros(m.shape, dtype=bool)
    tied = _tied(m)
    positive = tied > 0
    count = int(positive.sum())
    if k > count:
        return ~none, none, 0.0
    if k == count:
        return positive, none, 0.0
    tolerance = TIE_RTOL * tied[0]
    tau = _on_piece(tied, beta, k, sum(_root_piece(tied, beta, k)) / 2)[2]
    breakpoints = _breakpoints(tied[positive], beta)
    start = int(np.searchsorted(breakpoints, tau + tolerance, side="right")) - 1
    start = min(max(start, 0), breakpoints.size - 2)
    pieces = [start]
    if start > 0 and breakpoints[start] >= tau - tolerance:  # tau at a breakpoint
        pieces.insert(0, start - 1)
    for piece in pieces:
        probe = (breakpoints[piece] + breakpoints[piece + 1]) / 2
        head, middle, _, coupling = _on_piece(tied, beta, k, probe)
        if not middle.any() and head.sum() == k:  # g is flat at k on this piece
            break
    return head, middle, coupling


def prox_parts(m: np.ndarray, beta: float, k: int) -> ProxParts:
    """``argmin_x ||m - x||^2 + beta ||x||_(k)^2`` for ``m`` sorted decreasing, ``m >= 0``,
    and its piece (see :class:`ProxParts`).

    ``x_i = min(m_i / (1 + beta), (m_i - tau)_+)`` with ``tau > 0`` the root of the
    nonincreasing ``g(tau) = sum_i clip(beta (m_i - tau) / tau, 0, 1) = k`` (Thm 2.7, corrected
    in docs/theory.md). g is piecewise of the form ``c0 + c1 / tau`` between the breakpoints
    ``{m_i, beta m_i / (1 + beta)}``: bisect over the sorted breakpoints (O(n log n)), then
    solve on the bracketing piece in closed form. Works on ``m / 2**e`` (largest entry in
    [0.5, 1), exact) and scales back, so any finite ``m`` is safe.

    The values ``x`` are computed from ``m`` as given (the prox is 1-Lipschitz, so rounding in
    ``m`` moves ``x`` by rounding only). The piece (``head``, ``middle``, ``coupling``: what the
    derivative is taken from) is decided with the tolerance ``TIE_RTOL``, so that ties, zeros
    and kinks are decided the same way whatever the last bits of ``m`` (see
    :func:`_decided_piece`).
    """
    none = np.zeros(m.shape, dtype=bool)
    if beta == 0.0:
        return ProxParts(m.copy(), ~none, none, 0.0, 0.0, beta)
    exponent = binary_exponent(m[:1])
    m_scaled = np.ldexp(m, -exponent)
    head, middle, coupling = _decided_piece(m_scaled, beta, k)
    if k >= int(np.count_nonzero(m > 0)):
        return ProxParts(m / (1.0 + beta), head, middle, 0.0, coupling, beta)
    tau = _on_piece(m_scaled, beta, k, sum(_root_piece(m_scaled, beta, k)) / 2)[2]
    x = np.minimum(m_scaled / (1.0 + beta), np.maximum(m_scaled - tau, 0.0))
    return ProxParts(
        np.ldexp(x, exponent), head, middle, float(np.ldexp(tau, exponent)), coupling, beta
    )


def prox_sorted(m: np.ndarray, beta: float, k: int) -> np.ndarray:
    """The prox ``x`` of :func:`prox_parts`."""
    return prox_parts(m, beta, k).x


def _check_beta(beta: object) -> float:
    return check.check_nonnegative(beta, "beta")


def prox_ksupport_sq(w: Array, beta: float, k: int) -> Array:
    """``argmin_x ||w - x||^2 + beta ||x||_(k)^2`` (no 1/2 factors), in O(n log n).

    Acts on ``|w|`` sorted and restores signs and order. ``k = 1`` is the squared-l1 soft
    threshold; ``k >= #nonzeros`` is ridge shrinkage ``w / (1 + beta)``.

    Args:
        w: a vector (NumPy or torch).
        beta: the regularization weight, >= 0.
        k: the support size, >= 1.
    """
    w = check.check_array(w, "w", ndim=1)
    beta, k = _check_beta(beta), _check_k(k)
    kind = common_kind(w)
    values = to_numpy(w)
    order = np.argsort(-np.abs(values), kind="stable")
    shrunk = np.empty_like(values)
    shrunk[order] = prox_sorted(np.abs(values)[order], beta, k)  # scale-safe
    return scale_back(np.sign(values) * shrunk, 0, kind, "the prox", "w")


def prox_spectral_ksupport_sq(A: Array, beta: float, k: int) -> Array:
    """``argmin_X ||A - X||_F^2 + beta ||X||_(k)^2`` for the spectral k-support norm.

    With ``A = W diag(m) Z^T`` the answer is ``W diag(prox(m)) Z^T`` (the norm is unitarily
    invariant).
    """
    A = check.check_matrix(A, "A")
    beta, k = _check_beta(beta), _check_k(k)
    kind = common_kind(A)
    values = to_numpy(A)
    exponent = binary_exponent(values)  # the SVD of A / 2**e, exact scaling
    with small_work(_svd_flops(values.shape)):
        scaled = np.ldexp(values, -exponent)
        left, singular_values, right_t = np.linalg.svd(scaled, full_matrices=False)
        shrunk = prox_sorted(singular_values, beta, k)
        result = (left * shrunk) @ right_t
    return scale_back(result, exponent, kind, "the spectral prox", "A")


def _svd_flops(shape: tuple[int, ...]) -> float:
    """About the multiply-adds of a thin SVD of an m x n matrix: 4 m n min(m, n)."""
    m, n = shape
    return 4.0 * m * n * min(m, n)
