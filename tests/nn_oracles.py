"""What the tests of the layers (``tests/test_nn_*.py``) share: z-bounds, seeded generators,
mask laws to test, and the check of sampled masks against a law's exact moments.

Monte Carlo checks use z-bounds with the exact variance of each statistic (from the scheme's
law, not estimated), so the only approximation is the CLT at tens of thousands of samples.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

import structdrop as sd
from structdrop.nn.dropblock import sparse as _sparse
from structdrop.nn.dropblock.functional import drop_block

# A z-bound of 5 standard errors: P(|N(0,1)| > 5) = 5.7e-7 per statistic.
Z = 5.0
P_TWO_SIDED = 5.7e-7


def seeded(seed: int) -> torch.Generator:
    """A CPU torch generator with a fixed seed."""
    return torch.Generator().manual_seed(seed)


def discrete_law() -> sd.Discrete:
    """A real-valued, correlated finite law on 4 units."""
    masks = np.array(
        [[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 2.0]]
    )
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    return sd.Discrete(masks, probs)


def discrete_wide() -> sd.Discrete:
    """A finite law on 12 units: the first half dropped or kept together, with probability 1/2."""
    masks = np.ones((2, 12))
    masks[0, :6] = 0.0
    return sd.Discrete(masks, np.array([0.5, 0.5]))


# (name, law, width): every built-in law on units, and DropConnect's law (sample_masks draws it)
SCHEMES = [
    ("bernoulli", sd.Bernoulli(0.3), 6),
    ("dropconnect", sd.DropConnect(0.45), 5),
    ("grid", sd.GridBlock(0.4, 2), 6),
    ("grid-r3", sd.GridBlock(0.25, 3), 6),
    ("sliding-valid", sd.SlidingBlock(0.3, 3, boundary="valid"), 6),
    ("sliding-clipped", sd.SlidingBlock(0.3, 2, boundary="clipped"), 6),
    ("sliding-ring", sd.SlidingBlock(0.3, 3, boundary="ring"), 6),
    ("sliding-gamma", sd.SlidingBlock(0.3, 4, boundary="valid", gamma=0.2), 5),
    ("sliding-wide", sd.SlidingBlock(0.3, 7, boundary="clipped"), 5),
    ("discrete", discrete_law(), 4),
]
SCHEME_IDS = [case[0] for case in SCHEMES]
#: The laws a unit-mask layer (StructuredDropout) applies: all but those acting on weights.
UNIT_SCHEMES = [case for case in SCHEMES if case[1].acts_on == "units"]
UNIT_SCHEME_IDS = [case[0] for case in UNIT_SCHEMES]


def _pair_law(scheme: sd.Scheme, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``E[z_i]`` and ``Var((z_i - mu_i)(z_j - mu_j))`` for every pair (i, j).

    For 0/1 masks the law of a pair is fixed by ``mu_i, mu_j`` and ``m_ij = E[z_i z_j]``; for a
    Discrete law the masks are enumerated.
    """
    mu = np.asarray(scheme.mean(d))
    cov = np.asarray(scheme.covariance(d))
    if isinstance(scheme, sd.Discrete):
        centred = scheme.masks - mu
        products = centred[:, :, None] * centred[:, None, :]
        fourth = np.einsum("k,kij->ij", scheme.probs, products**2)
        return mu, fourth - cov**2
    m = np.asarray(scheme.second_moment(d))
    mi, mj = mu[:, None], mu[None, :]
    cells = {  # P(z_i = s, z_j = t)
        (1, 1): m,
        (1, 0): mi - m,
        (0, 1): mj - m,
        (0, 0): 1.0 - mi - mj + m,
    }
    fourth = sum(prob * ((s - mi) * (t - mj)) ** 2 for (s, t), prob in cells.items())
    return mu, fourth - cov**2


def assert_mask_law(z: torch.Tensor, scheme: sd.Scheme) -> int:
    """Per-unit means and all covariances of the rows of ``z`` within Z standard errors of the
    scheme's exact moments (covariances centred at the exact mean, so the estimator is unbiased
    with exactly the variance from :func:`_pair_law`). Returns the number of statistics."""
    z = z.detach().double().cpu().numpy()
    n, d = z.shape
    mu, pair_var = _pair_law(scheme, d)
    cov = np.asarray(scheme.covariance(d))
    unit_se = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(z.mean(0) - mu), Z * unit_se + 1e-12)
    centred = z - mu
    got_cov = centred.T @ centred / n
    cov_se = np.sqrt(np.clip(pair_var, 0.0, None) / n)
    np.testing.assert_array_less(np.abs(got_cov - cov), Z * cov_se + 1e-12)
    return d + d * (d + 1) // 2


# ---------------------------------------------------------------------------------------------
# Sliding DropBlock: 0/1 frequencies against exact probabilities, and windows from their
# definition (tests/test_nn_dropblock.py, tests/test_nn_dense.py)


def bound(prob: np.ndarray, n: int, samples: int = 1) -> np.ndarray:
    """The z-bound of a 0/1 frequency over ``n`` draws against its probability (``samples``
    independent frequencies compared with each other: 2)."""
    return Z * np.sqrt(samples * prob * (1.0 - prob) / n) + 1e-12


def kept(input_shape, p, block_size, method="auto", seed=0, **options) -> np.ndarray:
    """The 0/1 masks of :func:`drop_block` as float64, shape (N * C, *spatial), from an
    all-ones input."""
    x = torch.ones(input_shape, dtype=torch.float64)
    out = drop_block(x, p, block_size, method=method, generator=seeded(seed), **options)
    return (out != 0).to(torch.float64).reshape(-1, *input_shape[2:]).numpy()


def oracle_windows(spatial, block, boundary) -> list[set[tuple[int, ...]]]:
    """Every candidate window as a set of unit coordinates (products of 1-D ranges), written
    from the definition."""
    per_axis = []
    for length, r in zip(spatial, block, strict=True):
        if boundary == "valid":
            w = min(r, length)
            ranges = [range(s, s + w) for s in range(length - w + 1)]
        else:
            ranges = [
                range(max(c - (r - 1) // 2, 0), min(c + r // 2, length - 1) + 1)
                for c in range(length)
            ]
        per_axis.append(ranges)
    return [set(itertools.product(*combo)) for combo in itertools.product(*per_axis)]


def oracle_hits(drops: torch.Tensor, geometry) -> torch.Tensor:
    """Units covered by a dropped window (``drops`` on the candidate grid), window by window."""
    planes = drops.shape[0] * drops.shape[1]
    hits = torch.zeros(planes, math.prod(geometry.spatial), dtype=torch.bool)
    where = torch.nonzero(drops.reshape(planes, -1))
    units = _sparse.window_units(where[:, 1], geometry)
    for (plane, _), window in zip(where.tolist(), units, strict=True):
        hits[plane, window] = True
    return hits.reshape(*drops.shape[:2], *geometry.spatial)
