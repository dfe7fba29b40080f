"""structdrop.HeadMonitor on real models: the head and the law found in timm's, torchvision's and
structdrop's models, the features it captures, compiled and autocast eval passes, bad input."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import structdrop as sd
from structdrop import nn as sdnn
from structdrop.head import find_head, head_law

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _loader(n_batches: int, batch: int, shape: tuple[int, ...], classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, *shape, generator=generator),
            torch.randint(classes, (batch,), generator=generator),
        )
        for _ in range(n_batches)
    ]


def _torchvision_resnet(*layers: nn.Module | None) -> nn.Module:
    """torchvision's ResNet-18 with ``fc = Sequential(*layers, Linear(512, 10))`` (the layers
    given as classes with their arguments), built from seed 0: two calls, the same model."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.fc = nn.Sequential(*layers, nn.Linear(512, 10))
    return model


def _with_dropconnect_head() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.fc = sdnn.DropConnectLinear(512, 10, p=0.4)
    return model


# --------------------------------------------------------------------------------------------
# Finding the head and its law
# --------------------------------------------------------------------------------------------
def _timm(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **options)


FOUND = {
    "torchvision Sequential(Dropout, Linear)": (
        lambda: _torchvision_resnet(nn.Dropout(0.2)),
        "fc.1",
        sd.Bernoulli(0.2),
    ),
    "torchvision efficientnet classifier": (
        lambda: torchvision.models.efficientnet_b0(weights=None, num_classes=10),
        "classifier.1",
        sd.Bernoulli(0.2),
    ),
    "torchvision mobilenet_v3 classifier": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=10),
        "classifier.3",
        sd.Bernoulli(0.2),
    ),
    "timm resnet drop_rate": (
        lambda: _timm("test_resnet", drop_rate=0.25),
        "fc",
        sd.Bernoulli(0.25),
    ),
    "timm efficientnet drop_rate": (
        lambda: _timm("test_efficientnet", drop_rate=0.3),
        "classifier",
        sd.Bernoulli(0.3),
    ),
    "timm vit head_drop": (lambda: _timm("test_vit", drop_rate=0.1), "head", sd.Bernoulli(0.1)),
    "timm ClassifierHead drop": (
        lambda: _timm("test_convnext", drop_rate=0.4),
        "head.fc",
        sd.Bernoulli(0.4),
    ),
    "structdrop BlockDropout": (
        lambda: _torchvision_resnet(sdnn.BlockDropout(0.3, 4)),
        "fc.1",
        sd.GridBlock(0.3, 4),
    ),
    "structdrop StructuredDropout": (
        lambda: _torchvision_resnet(sdnn.StructuredDropout(sd.SlidingBlock(0.3, 3))),
        "fc.1",
        sd.SlidingBlock(0.3, 3),
    ),
    "structdrop DropConnectLinear head": (
        lambda: _with_dropconnect_head(),
        "fc",
        sd.DropConnect(0.4),
    ),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_the_head_and_its_law_are_found(case: str) -> None:
    build, path, law = FOUND[case]
    model = build()
    head, found_path = find_head(model)
    assert found_path == path
    assert head_law(model, head) == law
    monitor = sd.HeadMonitor(model)
    assert monitor.head is head and monitor.scheme == law
    # through the wrappers a user has: torch.compile's
    assert sd.HeadMonitor(torch.compile(model, backend="eager")).head is head


def test_a_model_without_dropout_in_front_of_its_head_says_what_to_pass() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    with pytest.raises(ValueError, match=r"no dropout in front of the head.*scheme="):
        sd.HeadMonitor(model)
    monitor = sd.HeadMonitor(model, scheme=sd.Bernoulli(0.1))  # the law given: measured
    assert monitor.scheme == sd.Bernoulli(0.1)
    timm_model = _timm("test_resnet", drop_rate=0.0)
    with pytest.raises(ValueError, match="no dropout in front of the head"):
        sd.HeadMonitor(timm_model)


def test_a_head_that_is_not_linear_or_not_in_the_model_is_refused() -> None:
    model = _torchvision_resnet(nn.Dropout(0.2))
    with pytest.raises(TypeError, match=r"the head must be a linear layer.*Conv2d"):
        sd.HeadMonitor(model, head=model.conv1)
    with pytest.raises(TypeError, match="not a submodule"):
        sd.HeadMonitor(model, head=nn.Linear(512, 10))
    with pytest.raises(ValueError, match=r"found no head.*head="):
        sd.HeadMonitor(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        sd.HeadMonitor("resnet18")  # type: ignore[arg-type]


def test_an_unknown_dropout_in_front_of_the_head_is_named() -> None:
    model = nn.Sequential(nn.Flatten(), nn.AlphaDropout(0.2), nn.Linear(12, 3))
    with pytest.raises(ValueError, match=r"AlphaDropout.*scheme="):
        sd.HeadMonitor(model, head=model[2])


def test_a_law_that_cannot_act_on_the_features_is_refused() -> None:
    model = _torchvision_resnet(nn.Dropout(0.2))
    with pytest.raises(ValueError, match="512"):
        sd.HeadMonitor(model, scheme=sd.GridBlock(0.2, 7))  # 7 does not divide 512


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
class _Net(nn.Module):
    """A small network whose features are easy to compute on their own."""

    def __init__(self, p: float = 0.3, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(8, 4, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.body(x)))


def test_measure_captures_the_heads_input_and_reports_on_the_heads_weights() -> None:
    """The report of a pass equals head_report on statistics of the features computed
    independently; the model's mode is restored, and no gradient is recorded."""
    model = _Net().train()
    loader = _loader(3, 16, (5,), 4)
    report = sd.HeadMonitor(model).measure(loader)
    assert model.training
    stats = sd.HeadStats(8, 4)
    with torch.no_grad():
        for x, y in loader:
            stats.update(model.body(x), y)
    expected = sd.head_report(stats, model.fc.weight, sd.Bernoulli(0.3), bias=model.fc.bias)
    assert report.samples == 48 and report.centred
    assert report.objective == pytest.approx(expected.objective, rel=1e-12)
    assert report.best_objective == pytest.approx(expected.best_objective, rel=1e-12)
    assert report.regularizer > 0 and report.objective > report.best_objective


def test_the_monitor_does_not_change_what_the_model_computes() -> None:
    model = _Net().eval()
    x = torch.randn(7, 5)
    before = model(x)
    monitor = sd.HeadMonitor(model)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    monitor.measure(_loader(1, 4, (5,), 4))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    monitor.close()
    assert not model.fc._forward_pre_hooks


def test_max_batches_and_an_empty_loader() -> None:
    monitor = sd.HeadMonitor(_Net())
    assert monitor.measure(_loader(5, 4, (5,), 4), max_batches=2).samples == 8
    with pytest.raises(ValueError, match="no batch"):
        monitor.measure([])


def test_bad_batches_raise_one_clear_error_each() -> None:
    monitor = sd.HeadMonitor(_Net())
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*got 4"):
        monitor.measure([(x, torch.tensor([0, 1, 2, 4]))])
    with pytest.raises(ValueError, match="features must be finite"):
        monitor.measure([(torch.full((4, 5), float("nan")), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ValueError, match=r"targets must be labels of shape \(4,\)"):
        monitor.measure([(x, torch.zeros(3, dtype=torch.long))])


def test_a_head_called_twice_per_pass_is_refused() -> None:
    class Twice(_Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = self.drop(self.body(x))
            return self.fc(g) + self.fc(g)

    with pytest.raises(ValueError, match="head ran 2 times"):
        sd.HeadMonitor(Twice()).measure(_loader(1, 4, (5,), 4))


@pytest.mark.slow
def test_a_compiled_model_measures_as_the_eager_one_without_recompiling() -> None:
    from torch._dynamo.utils import counters

    loader = _loader(3, 8, (3, 32, 32), 10)
    eager = sd.HeadMonitor(_torchvision_resnet(nn.Dropout(0.2))).measure(loader)
    model = _torchvision_resnet(nn.Dropout(0.2))
    compiled = torch.compile(model, backend="aot_eager")
    monitor = sd.HeadMonitor(compiled)
    first = monitor.measure(loader)
    frames = counters["stats"]["unique_graphs"]
    second = monitor.measure(loader)
    assert counters["stats"]["unique_graphs"] == frames  # the second pass compiles nothing
    for report in (first, second):
        assert report.objective == pytest.approx(eager.objective, rel=1e-5)
        assert report.gap_to_best_head == pytest.approx(eager.gap_to_best_head, rel=1e-4)


def test_autocast_features_are_captured_in_float64() -> None:
    """Under bfloat16 autocast the head's input is bfloat16: the statistics hold it exactly
    (upcast), and the report stays close to the float32 pass (bfloat16 keeps 8 bits)."""
    model = _Net(bias=False)
    loader = _loader(2, 16, (5,), 4)
    plain = sd.HeadMonitor(model).measure(loader)
    monitor = sd.HeadMonitor(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = monitor.measure(loader)
    assert monitor.stats is not None and monitor.stats.gram.dtype == torch.float64
    assert mixed.objective == pytest.approx(plain.objective, rel=0.05)
    assert mixed.objective != plain.objective  # the features were bfloat16 indeed
