"""The DropBlock options shared by the functions, the modules and convert_dropblock: the window
``boundary`` (the mask laws' name, ``structdrop.SlidingBlock(..., boundary=...)``) and its
deprecated name ``placement``, still accepted with a DeprecationWarning.
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
from structdrop.nn._options import BOUNDARIES, GAMMA_RULES, SCALES

DEPRECATED = r"placement is deprecated .* use boundary"

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


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_placement_keyword_warns_and_gives_the_same_output(name):
    call, shape = FUNCTIONS[name]
    x = torch.randn(shape, generator=seeded(1))
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as record:
        old = call(x, placement="clipped")
    assert record[0].filename == __file__  # the warning points at the caller
    assert torch.equal(old, call(x, boundary="clipped"))
    assert not torch.equal(old, call(x, boundary="valid"))  # the value is used, not dropped
    with pytest.raises(TypeError, match=r"both boundary='clipped' and placement='valid'"):
        call(x, boundary="clipped", placement="valid")


def test_placement_keyword_of_the_rate_functions():
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        gamma = F.window_drop_prob(0.2, 3, (8, 7), placement="clipped", rule="mean")
    assert gamma == F.window_drop_prob(0.2, 3, (8, 7), "clipped", "mean")
    assert gamma != F.window_drop_prob(0.2, 3, (8, 7), "valid", "mean")
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        mu = F.drop_block_keep_prob((8, 7), 3, placement="clipped", gamma=0.1)
    assert torch.equal(mu, F.drop_block_keep_prob((8, 7), 3, boundary="clipped", gamma=0.1))
    with pytest.raises(TypeError, match="both boundary"):
        F.window_drop_prob(0.2, 3, (8, 7), boundary="valid", placement="clipped")
    with pytest.raises(TypeError, match=r"both boundary \(by position\) and placement='clipped'"):
        F.drop_block_keep_prob((8, 7), 3, "valid", 0.1, placement="clipped")


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        (sdnn.DropBlock1d, (2, 3, 9)),
        (sdnn.DropBlock2d, (2, 3, 7, 6)),
        (sdnn.DropBlock3d, (2, 3, 4, 5, 3)),
    ],
    ids=["1d", "2d", "3d"],
)
def test_placement_keyword_and_attribute_of_the_modules(cls, shape):
    x = torch.randn(shape, generator=seeded(2))
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as record:
        old = cls(0.3, 2, placement="clipped")
    assert record[0].filename == __file__
    new = cls(0.3, 2, boundary="clipped")
    assert old.boundary == "clipped"
    assert repr(old) == repr(new)
    assert "boundary='clipped'" in repr(old) and "placement" not in repr(old)
    assert torch.equal(old(x, generator=seeded(3)), new(x, generator=seeded(3)))
    with pytest.raises(TypeError, match=rf"{cls.__name__} got both boundary"):
        cls(0.3, 2, boundary="valid", placement="clipped")

    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        assert new.placement == "clipped"
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        new.placement = "valid"
    assert new.boundary == "valid"
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="boundary must be"):
        new.placement = "ring"
    assert new.boundary == "valid"


def test_a_layer_pickled_with_the_deprecated_attribute_loads():
    layer = sdnn.DropBlock2d(0.3, 3, boundary="clipped")
    state = dict(layer.__dict__)
    state["placement"] = state.pop("boundary")
    loaded = sdnn.DropBlock2d.__new__(sdnn.DropBlock2d)
    loaded.__setstate__(state)
    assert loaded.boundary == "clipped" and "placement" not in loaded.__dict__
    x = torch.randn(2, 3, 7, 6)
    assert torch.equal(loaded(x, generator=seeded(4)), layer(x, generator=seeded(4)))
    again = pickle.loads(pickle.dumps(layer))
    assert again.boundary == "clipped" and repr(again) == repr(layer)


def test_the_current_names_do_not_warn():
    x = torch.randn(2, 3, 7, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = sdnn.DropBlock2d(0.3, 3, boundary="clipped")
        layer(x)
        repr(layer)
        F.drop_block2d(x, 0.3, 3, boundary="valid")
        F.window_drop_prob(0.3, 3, (7, 6), "clipped")
        sdnn.convert_dropblock(nn.Sequential(nn.ReLU()), boundary="clipped")


def test_placement_option_of_convert_dropblock():
    torchvision_ops = pytest.importorskip("torchvision.ops")
    model = nn.Sequential(torchvision_ops.DropBlock2d(0.1, 3))
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as record:
        sdnn.convert_dropblock(model, placement="clipped")
    assert record[0].filename == __file__
    assert isinstance(model[0], sdnn.DropBlock2d) and model[0].boundary == "clipped"
    with pytest.raises(TypeError, match="convert_dropblock got both boundary"):
        sdnn.convert_dropblock(model, boundary="valid", placement="clipped")


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
