"""The DropBlock options shared by the functions, the modules and convert_dropblock: one frozen,
validated spec (``DropBlockOptions``); the window ``boundary`` is the mask laws' name
(``structdrop.SlidingBlock(..., boundary=...)``).
"""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import nn

import structdrop as sd
from nn_oracles import seeded
from structdrop import nn as sdnn
from structdrop.nn import functional as F
from structdrop.nn.dropblock import BOUNDARIES, GAMMA_RULES, SCALES, DropBlockOptions

# name -> (call with options, input shape)
FUNCTIONS = {
    "drop_block": (lambda x, **o: F.drop_block(x, 0.3, 3, generator=seeded(0), **o), (2, 3, 9)),
    "drop_block1d": (lambda x, **o: F.drop_block1d(x, 0.3, 3, generator=seeded(0), **o), (2, 3, 9)),
    "drop_block2d": (
        lambda x, **o: F.drop_block2d(x, 0.3, 3, generator=seeded(0), **o),
        (2, 3, 7, 6),
    ),
    "drop_block3d": (
        lambda x, **o: F.drop_block3d(x, 0.3, 2, generator=seeded(0), **o),
        (2, 3, 4, 5, 3),
    ),
}


def test_the_layers_boundaries_are_the_laws_with_a_border():
    assert BOUNDARIES == ("valid", "clipped")
    assert set(BOUNDARIES) < set(sd.schemes.BOUNDARIES)
    assert GAMMA_RULES == ("mean", "interior", "ghiasi")
    assert SCALES == ("expected", "batch")


def test_the_spec_is_validated_once_and_frozen():
    spec = DropBlockOptions.make([3, 2], 2, boundary="clipped", gamma=0.25, method="dense")
    assert spec.block_size == (3, 2) and spec.spatial_dims == 2
    assert (spec.boundary, spec.gamma, spec.method) == ("clipped", 0.25, "dense")
    with pytest.raises(AttributeError):
        spec.boundary = "valid"
    with pytest.raises(ValueError, match=r"boundary must be one of .* got .ring."):
        DropBlockOptions.make(3, 2, boundary="ring")
    with pytest.raises(ValueError, match=r"sequence of 2 ints .* got \(3, 2, 1\)"):
        DropBlockOptions.make((3, 2, 1), 2)
    with pytest.raises(TypeError, match=r"unknown DropBlock options \['placement'\]"):
        DropBlockOptions.make(3, 2, placement="clipped")


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        (sdnn.DropBlock1d, (2, 3, 9)),
        (sdnn.DropBlock2d, (2, 3, 7, 6)),
        (sdnn.DropBlock3d, (2, 3, 4, 5, 3)),
    ],
    ids=["1d", "2d", "3d"],
)
def test_a_layers_options_are_its_spec_and_setting_one_validates_it(cls, shape):
    layer = cls(0.3, 2, boundary="clipped", gamma="interior", shared_channels=True)
    assert layer.options == DropBlockOptions.make(
        2, cls._spatial_dims, boundary="clipped", gamma="interior", shared_channels=True
    )
    x = torch.randn(shape, generator=seeded(2))
    before = layer(x, generator=seeded(3))
    layer.boundary = "valid"
    assert layer.options.boundary == "valid" and "boundary='valid'" in repr(layer)
    after = layer(x, generator=seeded(3))
    assert not torch.equal(before, after)  # the new value is used
    with pytest.raises(ValueError, match="boundary must be one of"):
        layer.boundary = "ring"
    assert layer.boundary == "valid"  # a refused value leaves the spec as it was
    with pytest.raises(ValueError, match="p must be in"):
        layer.p = 1.5
    assert layer.p == 0.3
    with pytest.raises(TypeError, match="placement"):
        cls(0.3, 2, placement="clipped")


def test_a_pickled_layer_keeps_its_options_and_rate():
    layer = sdnn.DropBlock2d(0.3, (3, 2), boundary="clipped", gamma=0.1, scale="batch", eps=0.5)
    again = pickle.loads(pickle.dumps(layer))
    assert again.options == layer.options and again.p == 0.3 and repr(again) == repr(layer)
    x = torch.randn(2, 3, 7, 6)
    assert torch.equal(again(x, generator=seeded(4)), layer(x, generator=seeded(4)))


def test_the_functions_validate_their_options():
    x = torch.randn(2, 3, 7, 6)
    for _name, (call, shape) in FUNCTIONS.items():
        with pytest.raises(ValueError, match="boundary must be one of"):
            call(torch.randn(shape), boundary="ring")
        with pytest.raises(TypeError, match="placement"):
            call(torch.randn(shape), placement="clipped")
    with pytest.raises(ValueError, match=r"4-D tensor \(N, C, H, W\) for drop_block2d"):
        F.drop_block2d(torch.randn(2, 3, 7), 0.3, 3)
    with pytest.raises(TypeError, match="unknown options"):
        sdnn.convert_dropblock(nn.Sequential(nn.ReLU()), placement="clipped")
    assert F.drop_block2d(x, 0.0, 3) is x


def test_the_names_do_not_warn():
    x = torch.randn(2, 3, 7, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = sdnn.DropBlock2d(0.3, 3, boundary="clipped")
        layer(x)
        repr(layer)
        F.drop_block2d(x, 0.3, 3, boundary="valid")
        F.window_drop_prob(0.3, 3, (7, 6), "clipped")
        sdnn.convert_dropblock(nn.Sequential(nn.ReLU()), boundary="clipped")


@pytest.mark.parametrize("flag", [True, False])
def test_a_bool_block_size_is_refused_as_p_is(flag):
    for make in (
        lambda: sdnn.DropBlock2d(0.1, block_size=flag),
        lambda: sdnn.DropBlock1d(0.1, block_size=(flag,)),
        lambda: sdnn.BlockDropout(0.1, block_size=flag),
    ):
        with pytest.raises(TypeError, match=rf"block_size must be an integer, got {flag}"):
            make()
    with pytest.raises(TypeError, match="p must be"):
        sdnn.DropBlock2d(flag, 3)
