"""Mask laws: a dropout method *is* a distribution of masks ``z`` on the hidden units.

Its mean ``mu`` and covariance ``C`` determine the regularizer it induces through the
characteristic matrix ``Cbar_ij = C_ij / (mu_i mu_j)`` (Thm 3.1, eq. 15-16). Every law here gives
its moments in exact closed form (never as estimates) and samples masks from a seeded generator.

References:
    Pal, Lane, Vidal, Haeffele. On the Regularization Properties of Structured Dropout. CVPR 2020.
    Ghiasi, Lin, Le. DropBlock: A regularization method for convolutional networks. NeurIPS 2018.
    Wan, Zeiler, Zhang, LeCun, Fergus. Regularization of neural networks using DropConnect. 2013.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from . import _validation as check
from ._validation import Seed, as_generator

if TYPE_CHECKING:
    import scipy.sparse as sparse

__all__ = [
    "Bernoulli",
    "Discrete",
    "DropConnect",
    "DroppedWindows",
    "FiniteMasks",
    "GridBlock",
    "IndependentBlocks",
    "Scheme",
    "SlidingBlock",
    "as_generator",
    "check_scheme",
]

Boundary = Literal["valid", "clipped", "ring"]
BOUNDARIES: tuple[str, ...] = ("valid", "clipped", "ring")


class Scheme(abc.ABC):
    """A law of masks ``z`` in R^d applied to d hidden units (scaled by ``1 / mu``).

    A law's identity is :meth:`to_dict`: a JSON-able dict that :meth:`from_dict` reads back into
    an equal law. Files (checkpoint fingerprints, figure data) name laws by it, never by
    ``repr``.
    """

    #: Number of consecutive units that share one Bernoulli variable (1 but for GridBlock).
    block_size: int = 1
    #: Every concrete law by its name in :meth:`to_dict` (filled by ``__init_subclass__``).
    _laws: ClassVar[dict[str, type[Scheme]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            Scheme._laws[cls.__name__] = cls

    #: Where the masks fall: ``"units"`` (a mask per hidden unit, scaled by ``1 / mu``) or
    #: ``"weights"`` (a mask per entry of a weight matrix: DropConnect).
    acts_on: ClassVar[Literal["units", "weights"]] = "units"

    @property
    def is_identity(self) -> bool:
        """Whether every mask equals its mean, so that ``z / mu = 1`` and dropping does nothing."""
        return False

    @property
    def sampler(self) -> Sampler | None:
        """How the law is drawn (:class:`IndependentBlocks`, :class:`DroppedWindows` or
        :class:`FiniteMasks`), for samplers outside this module such as the torch layers; None
        for a law that only its own :meth:`sample` can draw."""
        return None

    def on_units(self) -> Scheme:
        """The law on the hidden units that induces the same regularizer when the masks fall on
        the last weight matrix ``U`` (Thm 3.1): the law itself, but for DropConnect, whose iid
        masks on ``U``'s entries regularize as Dropout does (docs/theory.md)."""
        return self

    def check_width(self, d: int) -> int:
        """``d`` as the number of units of a mask, or a ValueError saying why the law cannot act
        on ``d`` units (e.g. GridBlock's block size must divide it)."""
        return check.check_positive_int(d, "d")

    @classmethod
    def laws(cls) -> dict[str, type[Scheme]]:
        """Every concrete law by the name that :meth:`to_dict` gives it (``"Bernoulli"``, ...)."""
        return dict(Scheme._laws)

    def to_dict(self) -> dict[str, Any]:
        """The law's identity as a JSON-able dict: ``{"law": name, **parameters}``.

        Floats are stored exactly (JSON round-trips a Python float bit for bit), so
        ``Scheme.from_dict(s.to_dict()) == s`` for every law.
        """
        return {"law": type(self).__name__, **self._parameters()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scheme:
        """The law described by ``data`` (the output of :meth:`to_dict`, e.g. read from JSON).

        Raises:
            ValueError: ``data`` names no known law or its parameters are invalid.
        """
        if not isinstance(data, Mapping) or "law" not in data:
            raise ValueError(f"a mask law must be a dict with a 'law' entry, got {data!r}")
        name = data["law"]
        law = Scheme._laws.get(name) if isinstance(name, str) else None
        if law is None:
            raise ValueError(
                f"unknown mask law {name!r}; known laws: {', '.join(sorted(Scheme._laws))}"
            )
        parameters = {key: value for key, value in data.items() if key != "law"}
        try:
            return law._from_parameters(parameters)
        except TypeError as error:
            raise ValueError(f"invalid parameters for {name}: {error}") from None

    def _parameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def _from_parameters(cls, parameters: dict[str, Any]) -> Scheme:
        return cls(**parameters)

    @property
    @abc.abstractmethod
    def keep_prob(self) -> float:
        """``theta``: the keep probability the law is parameterized by."""

    @abc.abstractmethod
    def mean(self, d: int) -> np.ndarray:
        """``mu = E[z]``, shape (d,)."""

    @abc.abstractmethod
    def second_moment(self, d: int) -> np.ndarray:
        """``E[z z^T]``, shape (d, d)."""

    @abc.abstractmethod
    def _sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray: ...

    def covariance(self, d: int) -> np.ndarray:
        """``C = E[z z^T] - mu mu^T``, shape (d, d)."""
        mu = self.mean(d)
        return self.second_moment(d) - np.outer(mu, mu)

    def characteristic(self, d: int) -> np.ndarray:
        """``Cbar_ij = C_ij / (mu_i mu_j)`` (eq. 16): the regularizer's weights in eq. 15."""
        mu = self.mean(d)
        return self.covariance(d) / np.outer(mu, mu)

    def sample(self, n: int, d: int, generator: Seed = None) -> np.ndarray:
        """``n`` independent masks as the rows of a float64 array of shape (n, d).

        Args:
            n: number of masks.
            d: number of hidden units.
            generator: a ``numpy.random.Generator``, an integer seed, or None.
        """
        n = check.check_positive_int(n, "n")
        d = self.check_width(d)
        return self._sample(n, d, as_generator(generator))


@dataclass(frozen=True)
class _Independent(Scheme):
    """Independent Ber(``1 - p``) entries."""

    p: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", check.check_probability(self.p))

    @property
    def keep_prob(self) -> float:
        return 1.0 - self.p

    @property
    def is_identity(self) -> bool:
        return self.p == 0.0

    @property
    def sampler(self) -> Sampler:
        return IndependentBlocks(self.keep_prob, 1)

    def mean(self, d: int) -> np.ndarray:
        return np.full(self.check_width(d), self.keep_prob)

    def second_moment(self, d: int) -> np.ndarray:
        theta = self.keep_prob
        d = self.check_width(d)
        return np.full((d, d), theta * theta) + np.diag(np.full(d, theta - theta * theta))

    def _sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        return (rng.random((n, d)) < self.keep_prob).astype(np.float64)


@dataclass(frozen=True)
class Bernoulli(_Independent):
    """Dropout (Srivastava et al.): every unit kept independently with probability ``1 - p``.

    ``Cbar = (1-theta)/theta * I`` (Cor. 3.2; eq. 17 omits the factor, see docs/theory.md).

    Args:
        p: drop probability, in [0, 1).
    """


@dataclass(frozen=True)
class DropConnect(_Independent):
    """DropConnect (Wan et al.): independent Ber(``1 - p``) masks on the *entries* of a weight
    matrix, scaled by ``1 / theta``.

    As a law on a vector of d entries it is Bernoulli's; what differs is where it acts. In
    :func:`structdrop.linear_penalty` the masks fall on ``V`` (eq. 19), whose regularizer
    ``(1-theta)/theta * sum_k ||u_k||^2 sum_j V_jk^2 ||x_j||^2`` is *not* Dropout's unless
    ``X X^T`` is diagonal: Thm 4.1 and Cor. 4.2 are corrected in docs/theory.md. In
    :func:`structdrop.penalty` they fall on ``U``, where the regularizer equals Dropout's.

    Args:
        p: drop probability of each weight, in [0, 1).
    """

    acts_on: ClassVar[Literal["units", "weights"]] = "weights"

    def on_units(self) -> Scheme:
        return Bernoulli(self.p)


@dataclass(frozen=True)
class GridBlock(Scheme):
    """The paper's DropBlock (Algorithm 1, DropBlockSample): the d units are cut into ``d / r``
    consecutive blocks of ``r`` units; each block is kept whole with probability ``1 - p``.

    The mask is ``z = w kron 1_r`` with ``w`` iid Ber(theta); eq. 3 must read
    ``diag(w) kron I_r`` (not ``I_{d/r}``, docs/theory.md). Its characteristic matrix is
    ``(1-theta)/theta * blockdiag(1_r 1_r^T)`` (Lemma 2.1, eq. 5).

    Args:
        p: drop probability of each block, in [0, 1).
        block_size: ``r``, which must divide the number of units d.
    """

    p: float
    block_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", check.check_probability(self.p))
        object.__setattr__(self, "block_size", check.check_block_size(self.block_size))

    @property
    def keep_prob(self) -> float:
        return 1.0 - self.p

    @property
    def is_identity(self) -> bool:
        return self.p == 0.0

    @property
    def sampler(self) -> Sampler:
        return IndependentBlocks(self.keep_prob, self.block_size)

    def check_width(self, d: int) -> int:
        d = check.check_positive_int(d, "d")
        check.check_block_divides(self.block_size, d)
        return d

    def mean(self, d: int) -> np.ndarray:
        return np.full(self.check_width(d), self.keep_prob)

    def second_moment(self, d: int) -> np.ndarray:
        d = self.check_width(d)
        theta, r = self.keep_prob, self.block_size
        same_block = np.kron(np.eye(d // r), np.ones((r, r)))
        return theta * theta + (theta - theta * theta) * same_block

    def _sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        kept = (rng.random((n, d // self.block_size)) < self.keep_prob).astype(np.float64)
        return np.repeat(kept, self.block_size, axis=1)


def window_incidence(d: int, block_size: int, boundary: str) -> sparse.csr_matrix:
    """The candidate windows of a sliding DropBlock as a 0/1 matrix (windows x units).

    ``"valid"``: windows ``[s, s + r)`` that fit inside the d units (Ghiasi et al., torchvision);
    one window covering all units when ``r >= d``. ``"clipped"``: one window per centre
    ``c = 0..d-1`` covering ``[c - (r-1)//2, c + r//2]`` clipped to the units (timm).
    ``"ring"``: d windows ``{(s + j) mod d : j < r}`` on a circle (no border effects).
    """
    r = block_size
    if boundary == "valid":
        width = min(r, d)
        starts = np.arange(d - width + 1)
        rows = np.repeat(np.arange(starts.size), width)
        cols = (starts[:, None] + np.arange(width)).ravel()
    elif boundary == "clipped":
        first = np.maximum(np.arange(d) - (r - 1) // 2, 0)
        last = np.minimum(np.arange(d) + r // 2, d - 1)
        lengths = last - first + 1
        rows = np.repeat(np.arange(d), lengths)
        cols = np.concatenate([np.arange(f, g + 1) for f, g in zip(first, last, strict=True)])
    elif boundary == "ring":
        width = min(r, d)
        rows = np.repeat(np.arange(d), width)
        cols = ((np.arange(d)[:, None] + np.arange(width)) % d).ravel()
    else:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    import scipy.sparse as sparse

    data = np.ones(rows.size)
    return sparse.csr_matrix((data, (rows, cols)), shape=(int(rows.max()) + 1, d))


@dataclass(frozen=True)
class SlidingBlock(Scheme):
    """Ghiasi et al.'s DropBlock in 1-D (the paper's "DropBlockOriginal", Sec. 5.3).

    Every candidate window of ``r`` consecutive units is dropped independently with
    probability ``gamma``; a unit survives iff no window covering it is dropped. With ``n_i``
    windows covering unit i and ``W(i)`` their set (docs/theory.md):
    ``mu_i = (1-gamma)^{n_i}`` and ``E[z_i z_j] = (1-gamma)^{|W(i) U W(j)|}``.

    The default ``gamma = 1 - (1-p)^(1/r)`` makes every unit covered by r windows drop with
    probability exactly p. The paper's Sec. 5.3 choice ``1 - (1-theta)^(1/(2k-1))`` and Ghiasi's
    ``gamma = p/r * d/(d-r+1)`` do not (docs/theory.md); pass them as ``gamma`` to compare.

    Args:
        p: nominal drop probability, in [0, 1).
        block_size: window width ``r`` >= 1.
        boundary: ``"valid"``, ``"clipped"`` or ``"ring"`` (see :func:`window_incidence`).
        gamma: window drop probability in [0, 1); derived from p when None.
    """

    p: float
    block_size: int
    boundary: Boundary = "valid"
    gamma: float | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", check.check_probability(self.p))
        object.__setattr__(self, "block_size", check.check_block_size(self.block_size))
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        if self.gamma is None:
            gamma = 1.0 - (1.0 - self.p) ** (1.0 / self.block_size)
        else:
            gamma = check.check_probability(self.gamma, "gamma")
        object.__setattr__(self, "gamma", gamma)

    @property
    def _gamma(self) -> float:
        """``gamma``, never None once ``__post_init__`` has run."""
        assert self.gamma is not None
        return self.gamma

    @property
    def keep_prob(self) -> float:
        return 1.0 - self.p

    @property
    def is_identity(self) -> bool:
        return self.gamma == 0.0

    @property
    def sampler(self) -> Sampler:
        return DroppedWindows(float(self._gamma), self.block_size, self.boundary)

    def windows(self, d: int) -> sparse.csr_matrix:
        """The window incidence matrix for d units (see :func:`window_incidence`)."""
        return window_incidence(self.check_width(d), self.block_size, self.boundary)

    def mean(self, d: int) -> np.ndarray:
        counts = np.asarray(self.windows(d).sum(axis=0)).ravel()
        return (1.0 - self._gamma) ** counts

    def second_moment(self, d: int) -> np.ndarray:
        incidence = self.windows(d)
        counts = np.asarray(incidence.sum(axis=0)).ravel()
        shared = (incidence.T @ incidence).toarray()
        union = counts[:, None] + counts[None, :] - shared
        return (1.0 - self._gamma) ** union

    def _sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        incidence = window_incidence(d, self.block_size, self.boundary)
        dropped = (rng.random((n, incidence.shape[0])) < self._gamma).astype(np.float64)
        hits = np.asarray((incidence.T @ dropped.T).T)
        return (hits == 0).astype(np.float64)


class Discrete(Scheme):
    """Any finite mask law: mask ``masks[j]`` with probability ``probs[j]``.

    Masks may be real-valued and correlated; every unit needs a nonzero mean, since the
    layer output is scaled by ``1 / mu`` (eq. 13).

    Args:
        masks: (m, d) array, one mask per row.
        probs: (m,) nonnegative probabilities summing to 1.
    """

    def __init__(self, masks: np.ndarray, probs: np.ndarray) -> None:
        masks = np.array(check.check_matrix(masks, "masks"), dtype=np.float64)
        probs = np.array(check.check_array(probs, "probs", ndim=1), dtype=np.float64)
        check.check_same(probs.shape[0], masks.shape[0], "probs must have one entry per mask row")
        if (probs < 0).any():
            j = int(np.argmin(probs))
            raise ValueError(f"probs must be >= 0, got {probs[j]} at index {j}")
        total = probs.sum()
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"probs must sum to 1, got sum {total!r}")
        mu = probs @ masks
        tiny = 1e-12 * max(1.0, float(np.abs(masks).max()))
        if (np.abs(mu) <= tiny).any():
            i = int(np.argmin(np.abs(mu)))
            raise ValueError(
                f"masks must give every unit a nonzero mean (outputs are scaled by 1/mu), "
                f"got mean {mu[i]} for unit {i}"
            )
        self.masks = masks
        self._given_probs = probs  # kept for to_dict: from_dict(to_dict()) is bit-identical
        self.probs = probs if total == 1.0 else probs / total
        self._mu = self.probs @ masks
        for array in (self.masks, self._given_probs, self.probs, self._mu):
            array.setflags(write=False)

    def _parameters(self) -> dict[str, Any]:
        return {"masks": self.masks.tolist(), "probs": self._given_probs.tolist()}

    @classmethod
    def _from_parameters(cls, parameters: dict[str, Any]) -> Scheme:
        return cls(**parameters)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Discrete):
            return NotImplemented
        return np.array_equal(self.masks, other.masks) and np.array_equal(
            self._given_probs, other._given_probs
        )

    def __hash__(self) -> int:
        return hash(self._digest())

    def _digest(self) -> str:
        digest = hashlib.sha256()
        for array in (self.masks, self._given_probs):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:12]

    def __repr__(self) -> str:
        m, d = self.masks.shape
        return f"Discrete(<{m} masks on {d} units, sha256 {self._digest()}>)"

    @property
    def keep_prob(self) -> float:
        """The mean of the masks over units and law (the keep rate for 0/1 masks)."""
        return float(self._mu.mean())

    @property
    def is_identity(self) -> bool:
        return bool(np.all(self.masks == self.masks[0]))

    @property
    def sampler(self) -> Sampler:
        return FiniteMasks(self.masks, self.probs)

    def check_width(self, d: int) -> int:
        d = check.check_positive_int(d, "d")
        check.check_same(d, self.masks.shape[1], "d must equal the number of columns of masks")
        return d

    def mean(self, d: int) -> np.ndarray:
        self.check_width(d)
        return self._mu.copy()

    def second_moment(self, d: int) -> np.ndarray:
        self.check_width(d)
        return (self.masks.T * self.probs) @ self.masks

    def _sample(self, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
        return self.masks[rng.choice(self.masks.shape[0], size=n, p=self.probs)].copy()


# --------------------------------------------------------------------------------------------
# How a law is drawn: the recipes that samplers elsewhere (torch layers, Algorithm 1) follow
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndependentBlocks:
    """Blocks of ``block_size`` consecutive units, each kept whole with probability
    ``keep_prob``, independently (Dropout: blocks of 1; the paper's grid DropBlock: blocks of r).
    """

    keep_prob: float
    block_size: int


@dataclass(frozen=True)
class DroppedWindows:
    """Every candidate window of :func:`window_incidence` is dropped with probability ``gamma``,
    independently; a unit is kept iff no dropped window covers it."""

    gamma: float
    block_size: int
    boundary: str

    def incidence(self, d: int) -> sparse.csr_matrix:
        """The windows for ``d`` units (windows x units)."""
        return window_incidence(d, self.block_size, self.boundary)


@dataclass(frozen=True, eq=False)
class FiniteMasks:
    """Row ``j`` of ``masks`` with probability ``probs[j]`` (read-only arrays)."""

    masks: np.ndarray
    probs: np.ndarray


Sampler = IndependentBlocks | DroppedWindows | FiniteMasks


def check_scheme(scheme: Any) -> Scheme:
    """A :class:`Scheme`, or a TypeError naming what was passed instead."""
    if not isinstance(scheme, Scheme):
        raise TypeError(f"scheme must be a structdrop Scheme, got {scheme!r}")
    return scheme
