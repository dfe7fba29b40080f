"""Convolutions of 1x1 feature maps as one matrix product (experiments/deep/model.py).

Oracle: ``torch.nn.Conv2d`` itself, in float64 (where the two orders of summation agree to
~1e-15 relative): the same outputs, the same gradients of input, weight and bias (the taps on
the padding get exactly 0 from both), and the plain convolution whenever the input is not 1x1
or the layer is not a plain one.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from structdrop.experiments.deep.model import PointAwareConv2d, use_point_products

RTOL = 1e-12  # float64: both compute the same sums in different orders


def _pair(conv: nn.Conv2d) -> tuple[nn.Conv2d, nn.Conv2d]:
    """``conv`` in float64 and a PointAwareConv2d copy with the same parameters."""
    conv = conv.double()
    point = PointAwareConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).double()
    point.load_state_dict(conv.state_dict())
    return conv, point


def _outputs_and_grads(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return [out.detach(), *grads]


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "bias", "size"),
    [
        (3, 1, 1, 1, False, 1),  # ResNet's 3x3 convolutions on 1x1 maps
        (3, 2, 1, 1, True, 1),  # the strided one
        (1, 1, 0, 1, True, 1),  # 1x1 convolutions
        (1, 2, 0, 1, False, 1),  # the strided 1x1 downsample
        (5, 1, 4, 2, True, 1),  # dilated: tap 2
        ((3, 1), 1, (1, 0), 1, True, 1),  # rectangular kernel
        (3, 1, 1, 1, True, 2),  # a 2x2 map: the plain convolution
        (3, 1, 0, 1, True, 3),  # no padding, 3x3 map -> 1x1 output through 9 taps: plain
        (7, 2, 3, 1, False, 16),  # the stem
    ],
)
def test_same_function_and_gradients_as_conv2d(kernel, stride, padding, dilation, bias, size):
    torch.manual_seed(0)
    conv, point = _pair(nn.Conv2d(6, 5, kernel, stride, padding, dilation, bias=bias))
    x = torch.randn(4, 6, size, size, dtype=torch.float64)
    for got, want in zip(_outputs_and_grads(point, x), _outputs_and_grads(conv, x), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-14)


def test_padding_taps_get_exactly_zero_gradient():
    torch.manual_seed(1)
    _, point = _pair(nn.Conv2d(3, 4, 3, padding=1))
    point(torch.randn(2, 3, 1, 1, dtype=torch.float64)).sum().backward()
    grad = point.weight.grad.clone()
    assert bool((grad[:, :, 1, 1] != 0).all())
    grad[:, :, 1, 1] = 0
    assert bool((grad == 0).all())


def test_layers_it_cannot_shortcut_are_plain_convolutions():
    torch.manual_seed(2)
    for conv in (
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(4, 4, 3, padding="same"),
    ):
        conv, point = _pair(conv)
        x = torch.randn(2, 4, 1, 1, dtype=torch.float64)
        torch.testing.assert_close(point(x), conv(x), rtol=0, atol=0)


def test_resnet_keeps_its_state_dict_and_function():
    torch.manual_seed(3)
    plain = torchvision.models.resnet18(weights=None).double().eval()
    fast = torchvision.models.resnet18(weights=None).double().eval()
    fast.load_state_dict(plain.state_dict())
    use_point_products(fast)
    assert list(fast.state_dict()) == list(plain.state_dict())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is PointAwareConv2d for m in convs)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)  # 1x1 maps from layer3 on
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize(("height", "width"), [(4, 1), (1, 4), (2, 1), (1, 3), (1, 1)])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1), ((3, 1), 1, (1, 0), 1), ((1, 3), 1, (0, 1), 1)],
)
def test_maps_of_one_row_or_one_column_are_convolved_as_conv2d(
    height, width, kernel, stride, padding, dilation
):
    """Only a 1x1 map is one matrix product: an H x 1 or 1 x W map gives the convolution's own
    outputs and gradients."""
    torch.manual_seed(4)
    conv, point = _pair(nn.Conv2d(6, 5, kernel, stride, padding, dilation, bias=True))
    x = torch.randn(3, 6, height, width, dtype=torch.float64)
    for got, want in zip(_outputs_and_grads(point, x), _outputs_and_grads(conv, x), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-14)


def test_a_1x1_map_whose_every_tap_falls_on_the_padding_gives_the_bias():
    """Kernel 2, dilation 2, padding 1: both taps of a 1x1 map read the zero padding, so the
    output is the bias alone, as nn.Conv2d's."""
    torch.manual_seed(5)
    conv, point = _pair(nn.Conv2d(4, 3, 2, padding=1, dilation=2, bias=True))
    x = torch.randn(2, 4, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(point(x), conv(x), rtol=RTOL, atol=1e-14)
    torch.testing.assert_close(point(x), conv.bias.detach().expand(2, 3)[:, :, None, None])
    for got, want in zip(_outputs_and_grads(point, x), _outputs_and_grads(conv, x), strict=True):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-14)
