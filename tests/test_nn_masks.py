"""sample_masks: every mask law drawn with torch, exactly its law (its exact mean and
covariance), as the law's own recipe (``scheme.sampler``) says.

Monte Carlo checks use z-bounds with the exact variance of each statistic (see
``nn_oracles.py``); each test states its false-failure probability; all use fixed seeds, so
outcomes are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import structdrop as sd
from nn_oracles import P_TWO_SIDED, SCHEME_IDS, SCHEMES, assert_mask_law, discrete_law, seeded
from structdrop.nn import functional as F


@pytest.mark.parametrize(("name", "scheme", "d"), SCHEMES, ids=SCHEME_IDS)
def test_sample_masks_follow_the_scheme_law(name, scheme, d):
    # Up to d + d(d+1)/2 = 27 statistics per scheme, each failing with prob 5.7e-7 under the
    # CLT at n = 20000: the false-failure probability is below 2e-5 per scheme, 2e-4 overall.
    z = F.sample_masks(scheme, (20000,), d, generator=seeded(1))
    assert z.shape == (20000, d)
    assert z.dtype == torch.float32
    count = assert_mask_law(z, scheme)
    assert count * P_TWO_SIDED < 2e-5


def test_sample_masks_shapes_dtypes_and_reproducibility():
    grid = sd.GridBlock(0.5, 2)
    z = F.sample_masks(grid, (3, 4), 6, dtype=torch.float64, generator=seeded(0))
    assert z.shape == (3, 4, 6)
    assert z.dtype == torch.float64
    blocks = z.reshape(3, 4, 3, 2)
    assert torch.equal(blocks[..., 0], blocks[..., 1])  # whole blocks
    assert torch.equal(z, F.sample_masks(grid, (3, 4), 6, dtype=torch.float64, generator=seeded(0)))
    assert F.sample_masks(grid, 5, 4).shape == (5, 4)
    assert F.sample_masks(grid, (), 4).shape == (4,)
    for _, scheme, d in SCHEMES:
        empty = F.sample_masks(scheme, (0, 3), d)
        assert empty.shape == (0, 3, d)
        one = F.sample_masks(scheme, (2,), d, generator=seeded(5))
        assert torch.equal(one, F.sample_masks(scheme, (2,), d, generator=seeded(5)))


def test_sample_masks_of_a_scheme_defined_elsewhere_use_its_sampler():
    class Halves(sd.Scheme):
        keep_prob = 0.5

        def mean(self, d):
            return np.full(d, 0.5)

        def second_moment(self, d):
            return np.full((d, d), 0.5)

        def _sample(self, n, d, rng):
            return np.repeat((rng.random((n, 1)) < 0.5).astype(float), d, axis=1)

    z = F.sample_masks(Halves(), (2000,), 3, generator=seeded(3))
    assert torch.equal(z, F.sample_masks(Halves(), (2000,), 3, generator=seeded(3)))
    assert bool((z[:, :1] == z).all())
    # 3 + 6 statistics at Z: false failures below 1e-5.
    assert_mask_law(z, Halves())


def test_sample_masks_rejects_bad_arguments():
    with pytest.raises(TypeError, match="scheme"):
        F.sample_masks("dropout", (2,), 4)
    with pytest.raises(ValueError, match="block_size must divide"):
        F.sample_masks(sd.GridBlock(0.1, 3), (2,), 4)
    with pytest.raises(ValueError, match="d must equal"):
        F.sample_masks(discrete_law(), (2,), 5)
    with pytest.raises(ValueError, match="d must be >= 1"):
        F.sample_masks(sd.Bernoulli(0.1), (2,), 0)
    with pytest.raises(ValueError, match="batch_shape"):
        F.sample_masks(sd.Bernoulli(0.1), (-1,), 3)
    with pytest.raises(TypeError, match="batch_shape"):
        F.sample_masks(sd.Bernoulli(0.1), "ab", 3)
    with pytest.raises(TypeError, match="generator"):
        F.sample_masks(sd.Bernoulli(0.1), (2,), 3, generator=0)
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        F.sample_masks(sd.Bernoulli(0.1), (2,), 3, dtype=torch.int64)


class _Pairs(sd.Scheme):
    """A law defined elsewhere that says how it is drawn: blocks of 2 units kept together with
    probability 1/2 (GridBlock(0.5, 2)'s law), never through its own sampler."""

    keep_prob = 0.5

    @property
    def sampler(self):
        return sd.schemes.IndependentBlocks(0.5, 2)

    def check_width(self, d):
        return sd.GridBlock(0.5, 2).check_width(d)

    def mean(self, d):
        return np.full(self.check_width(d), 0.5)

    def second_moment(self, d):
        return sd.GridBlock(0.5, 2).second_moment(d)

    def _sample(self, n, d, rng):
        raise AssertionError("drawn by torch from its recipe, not by its own sampler")


def test_sample_masks_follow_the_recipe_a_law_gives():
    # The law is asked how it is drawn (its sampler) and which widths it takes (check_width),
    # not which class it is: the same draws as GridBlock(0.5, 2) from the same seed.
    z = F.sample_masks(_Pairs(), (3000,), 6, generator=seeded(6))
    assert torch.equal(z, F.sample_masks(sd.GridBlock(0.5, 2), (3000,), 6, generator=seeded(6)))
    with pytest.raises(ValueError, match="block_size must divide"):
        F.sample_masks(_Pairs(), (3,), 5)
    # 6 + 21 statistics at Z: false failures below 2e-5.
    assert_mask_law(z, sd.GridBlock(0.5, 2))
