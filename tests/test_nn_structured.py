"""StructuredDropout and structured_dropout: any mask law on units, unbiased (Thm 3.1, eq. 13);
a law on weights (DropConnect) is refused with a pointer to DropConnectLinear.

Monte Carlo checks use z-bounds with the exact variance of each statistic (see
``nn_oracles.py``); all use fixed seeds, so outcomes are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import structdrop as sd
from nn_oracles import SCHEME_IDS, SCHEMES, Z, assert_mask_law, seeded
from structdrop import nn as sdnn
from structdrop.nn import functional as F


@pytest.mark.parametrize(("name", "scheme", "d"), SCHEMES, ids=SCHEME_IDS)
def test_structured_dropout_masks_follow_the_scheme_law_and_are_unbiased(name, scheme, d):
    # The output of an all-ones input is z / mu, so mu * output recovers the masks: their
    # moments are checked as in test_nn_masks.py (false failures below 2e-5 per scheme). Then
    # E[output] = input for a random input: d more statistics at Z, with
    # Var(out_i) = x_i^2 C_ii / mu_i^2. DropConnect's masks fall on weights; its law on units
    # (scheme.on_units(), the same masks) is the one a layer on units applies.
    layer = sdnn.StructuredDropout(scheme.on_units(), generator=seeded(2))
    mu = torch.as_tensor(scheme.mean(d), dtype=torch.float64)
    out = layer(torch.ones(10000, 2, d, dtype=torch.float64))
    assert out.shape == (10000, 2, d)
    assert_mask_law((out * mu).reshape(-1, d), scheme)

    x = torch.linspace(-2.0, 3.0, d, dtype=torch.float64)
    out = layer(x.expand(20000, d).clone())
    var = x**2 * torch.from_numpy(np.diag(scheme.covariance(d)).copy()) / mu**2
    err = (out.mean(0) - x).abs()
    assert bool((err <= Z * (var / 20000).sqrt() + 1e-12).all())


def test_structured_dropout_identities_and_checks():
    x = torch.randn(4, 6)
    assert sdnn.StructuredDropout(sd.Bernoulli(0.0))(x) is x
    assert sdnn.StructuredDropout(sd.SlidingBlock(0.0, 3))(x) is x
    assert sdnn.StructuredDropout(sd.Discrete(np.ones((2, 6)), np.array([0.5, 0.5])))(x) is x
    layer = sdnn.StructuredDropout(sd.GridBlock(0.5, 2)).eval()
    assert layer(x) is x
    assert F.structured_dropout(x, sd.Bernoulli(0.5), training=False) is x
    with pytest.raises(TypeError, match="scheme"):
        sdnn.StructuredDropout(0.5)
    with pytest.raises(ValueError, match="0-d"):
        F.structured_dropout(torch.tensor(1.0), sd.Bernoulli(0.5))
    with pytest.raises(TypeError, match="floating-point"):
        F.structured_dropout(torch.ones(3, 4, dtype=torch.long), sd.Bernoulli(0.5))
    with pytest.raises(ValueError, match="block_size must divide"):
        sdnn.StructuredDropout(sd.GridBlock(0.5, 4))(x)
    assert repr(sdnn.StructuredDropout(sd.Bernoulli(0.25))) == (
        "StructuredDropout(scheme=Bernoulli(p=0.25))"
    )


class _OnWeights(sd.Bernoulli):
    """A law defined elsewhere whose masks fall on weights (only ``acts_on`` says so)."""

    acts_on = "weights"


@pytest.mark.parametrize("law", [sd.DropConnect(0.3), sd.DropConnect(0.0), _OnWeights(0.3)])
def test_a_law_on_weights_is_refused_with_a_pointer_to_dropconnect_linear(law):
    # Its masks belong on the entries of a weight matrix: applied to units they would be
    # Dropout's, silently. Refused also where nothing would drop (p = 0, eval mode).
    x = torch.randn(4, 6)
    name = type(law).__name__
    calls = {
        "StructuredDropout": lambda: sdnn.StructuredDropout(law),
        "structured_dropout": lambda: F.structured_dropout(x, law),
        "structured_dropout-eval": lambda: F.structured_dropout(x, law, training=False),
    }
    for where, call in calls.items():
        match = rf"{name}\(p=0\.[03]\).*acts_on='weights'.*DropConnectLinear.*dropconnect_linear"
        with pytest.raises(ValueError, match=match) as error:
            call()
        assert str(error.value).startswith(where.split("-")[0])  # names the layer


def test_a_law_on_weights_applies_on_units_as_its_law_on_units():
    law = sd.DropConnect(0.3)
    x = torch.randn(50, 6)
    out = sdnn.StructuredDropout(law.on_units(), generator=seeded(4))(x)
    assert torch.equal(out, sdnn.StructuredDropout(sd.Bernoulli(0.3), generator=seeded(4))(x))
    # sample_masks draws any law's masks, DropConnect's included (the same masks as Dropout's)
    z = F.sample_masks(law, (50,), 6, generator=seeded(5))
    assert torch.equal(z, F.sample_masks(sd.Bernoulli(0.3), (50,), 6, generator=seeded(5)))
