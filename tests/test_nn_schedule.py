"""DropRateSchedule: a linear warm-up of the drop probability of several layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import structdrop as sd
from structdrop import nn as sdnn


def test_schedule_warms_up_every_layer_linearly_then_holds():
    layers = [sdnn.BlockDropout(0.5, 2), sdnn.DropBlock2d(0.5, 3), nn.Dropout(0.5)]
    schedule = sdnn.DropRateSchedule(layers, stop=0.2, steps=4, start=0.04)
    assert all(layer.p == 0.04 for layer in layers)  # step 0 sets start
    seen = [schedule.step() for _ in range(6)]
    np.testing.assert_allclose(seen, [0.08, 0.12, 0.16, 0.2, 0.2, 0.2], rtol=1e-12)
    assert all(layer.p == pytest.approx(0.2) for layer in layers)
    assert schedule.p == pytest.approx(0.2)
    assert schedule.last_step == 6


def test_schedule_finds_the_layers_of_a_model_and_applies_them():
    model = nn.Sequential(
        nn.Linear(4, 4),
        sdnn.BlockDropout(0.0, 2),
        nn.Dropout(0.0),
        sdnn.StructuredDropout(sd.Bernoulli(0.1)),
    )
    schedule = sdnn.DropRateSchedule(model, stop=0.5, steps=2)
    assert len(schedule.layers) == 2
    schedule.step()
    assert model[1].p == 0.25
    assert model[2].p == 0.25
    x = torch.ones(1000, 4)
    assert bool((model[1](x) == 0).any())
    single = sdnn.BlockDropout(0.3, 2)
    assert sdnn.DropRateSchedule(single, 0.1, 3).layers == [single]


def test_schedule_state_dict_round_trip():
    layers = [sdnn.BlockDropout(0.0, 2), sdnn.BlockDropout(0.0, 4)]
    schedule = sdnn.DropRateSchedule(layers, stop=0.3, steps=10)
    for _ in range(3):
        schedule.step()
    state = schedule.state_dict()
    assert state == {"last_step": 3, "start": 0.0, "stop": 0.3, "steps": 10}
    fresh_layers = [sdnn.BlockDropout(0.0, 2), sdnn.BlockDropout(0.0, 4)]
    resumed = sdnn.DropRateSchedule(fresh_layers, stop=0.9, steps=1)
    resumed.load_state_dict(state)
    assert [layer.p for layer in fresh_layers] == pytest.approx([0.09, 0.09])
    assert resumed.step() == schedule.step()
    assert "last_step=4" in repr(resumed)


def test_schedule_rejects_bad_arguments():
    layer = sdnn.BlockDropout(0.0, 2)
    with pytest.raises(ValueError, match=r"stop must be in \[0, 1\), got 1.0"):
        sdnn.DropRateSchedule([layer], stop=1.0, steps=3)
    with pytest.raises(ValueError, match="start must be in"):
        sdnn.DropRateSchedule([layer], stop=0.1, steps=3, start=-0.1)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        sdnn.DropRateSchedule([layer], stop=0.1, steps=0)
    with pytest.raises(ValueError, match="layers must not be empty"):
        sdnn.DropRateSchedule([], stop=0.1, steps=3)
    with pytest.raises(TypeError, match=r"layers\[1\] must have a drop probability"):
        sdnn.DropRateSchedule([layer, nn.ReLU()], stop=0.1, steps=3)
    with pytest.raises(ValueError, match="layers must contain a module"):
        sdnn.DropRateSchedule(nn.Linear(2, 2), stop=0.1, steps=3)
    with pytest.raises(TypeError, match="layers must be a module or an iterable"):
        sdnn.DropRateSchedule(3, stop=0.1, steps=3)
    schedule = sdnn.DropRateSchedule([layer], stop=0.1, steps=3)
    with pytest.raises(ValueError, match="misses the keys"):
        schedule.load_state_dict({"last_step": 1})
    with pytest.raises(ValueError, match="last_step must be >= 0"):
        schedule.load_state_dict({"last_step": -1, "start": 0.0, "stop": 0.1, "steps": 3})


def _stepped(schedule: sdnn.DropRateSchedule, steps: int) -> sdnn.DropRateSchedule:
    for _ in range(steps):
        schedule.step()
    return schedule


def test_state_dict_round_trip_restores_start_stop_steps_and_position():
    layers = [sdnn.BlockDropout(0.0, 2), sdnn.DropBlock2d(0.0, 3), nn.Dropout(0.0)]
    schedule = _stepped(sdnn.DropRateSchedule(layers, stop=0.35, steps=8, start=0.03), 3)
    state = schedule.state_dict()
    assert state == {"last_step": 3, "start": 0.03, "stop": 0.35, "steps": 8}
    fresh = [sdnn.BlockDropout(0.0, 2), sdnn.DropBlock2d(0.0, 3), nn.Dropout(0.0)]
    resumed = sdnn.DropRateSchedule(fresh, stop=0.1, steps=20, start=0.07)
    resumed.load_state_dict(state)
    expected = 0.03 + (0.35 - 0.03) * 3 / 8
    assert [layer.p for layer in fresh] == pytest.approx([expected] * 3, rel=1e-12)
    assert resumed.p == pytest.approx(expected, rel=1e-12)
    assert resumed.state_dict() == state
    for _ in range(7):  # on to the end of the warm-up and past it, in step with the original
        assert resumed.step() == pytest.approx(schedule.step(), rel=1e-12)
        assert [layer.p for layer in fresh] == pytest.approx([v.p for v in layers], rel=1e-12)
    assert [layer.p for layer in fresh] == pytest.approx([0.35] * 3, rel=1e-12)


def test_state_dict_round_trip_restores_each_layers_own_rate_in_order():
    """With stop=None every layer warms up to its own rate: they come back layer by layer."""
    rates = [0.1, 0.25, 0.05, 0.4]
    layers = [sdnn.BlockDropout(rate, 2) for rate in rates]
    schedule = _stepped(sdnn.DropRateSchedule(layers, stop=None, steps=5, start=0.02), 2)
    state = schedule.state_dict()
    assert state["stops"] == rates and state["start"] == 0.02 and state["last_step"] == 2
    fresh = [sdnn.BlockDropout(rate, 2) for rate in (0.3, 0.3, 0.3, 0.3)]
    resumed = sdnn.DropRateSchedule(fresh, stop=None, steps=9, start=0.0)
    resumed.load_state_dict(state)
    expected = [0.02 + (rate - 0.02) * 2 / 5 for rate in rates]
    assert [layer.p for layer in fresh] == pytest.approx(expected, rel=1e-12)
    assert [layer.p for layer in fresh] == pytest.approx([v.p for v in layers], rel=1e-12)
    assert resumed.p == pytest.approx(0.02 + (0.4 - 0.02) * 2 / 5, rel=1e-12)
    assert resumed.state_dict() == state
    _stepped(resumed, 3)
    assert [layer.p for layer in fresh] == pytest.approx(rates, rel=1e-12)


GOOD_STATE = {"last_step": 2, "start": 0.1, "stop": 0.3, "steps": 5}


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps must be >= 1, got 0"),
        ({"steps": 2.5}, TypeError, "steps must be an integer, got 2.5"),
        ({"stop": 1.0}, ValueError, r"stop must be in \[0, 1\), got 1.0"),
        ({"start": -0.1}, ValueError, r"start must be in \[0, 1\), got -0.1"),
        ({"last_step": -1}, ValueError, "last_step must be >= 0, got -1"),
        ({"last_step": 1.5}, TypeError, "last_step must be an integer, got 1.5"),
        ({"stop": None}, ValueError, "state_dict must hold 'stops'"),
        ({"stop": None, "stops": [0.2, 1.5]}, ValueError, r"stops must be in \[0, 1\)"),
    ],
    ids=[
        "steps-0",
        "steps-float",
        "stop-1",
        "start-negative",
        "last-step-negative",
        "last-step-float",
        "no-stops",
        "bad-stops",
    ],
)
def test_a_failing_load_state_dict_changes_neither_the_schedule_nor_the_layers(
    changes, error, match
):
    layers = [sdnn.DropBlock2d(0.0, 3), sdnn.BlockDropout(0.0, 2)]
    schedule = _stepped(sdnn.DropRateSchedule(layers, stop=0.2, steps=4, start=0.04), 1)
    state, rates = schedule.state_dict(), [layer.p for layer in layers]
    with pytest.raises(error, match=match):
        schedule.load_state_dict({**GOOD_STATE, **changes})
    assert schedule.state_dict() == state and schedule.stops == [0.2, 0.2]
    assert [layer.p for layer in layers] == rates
    assert schedule.step() == pytest.approx(0.04 + (0.2 - 0.04) * 2 / 4, rel=1e-12)
    assert [layer.p for layer in layers] == pytest.approx([0.12, 0.12], rel=1e-12)
