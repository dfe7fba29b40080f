"""Convolutions of 1x1 feature maps as the one matrix product they are.

Fig. 2 runs ResNet-50 on small images (16x16 for the digits): after the stem and the first
stages the feature maps are 1x1, and every later convolution, 3x3 ones included, reads a single
tap of its kernel (the others fall on the zero padding). oneDNN's CPU kernels do not see this:
the backward pass of a 3x3 convolution of a (50, 512, 1, 1) input takes about ten times as long
as the product ``x @ W[:, :, 1, 1]^T`` it amounts to, and such convolutions were most of a
training step (docs/deep.md, "Where the time goes").

:class:`PointAwareConv2d` computes exactly that product when the input is 1x1 and the output is
1x1, and is an ordinary ``nn.Conv2d`` otherwise. The function is the same: the taps that fall
on the padding get the gradient 0 either way (so Adam leaves them where they are), parameters
and ``state_dict`` keys are those of ``nn.Conv2d``; only the order of the floating-point sums
differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PointAwareConv2d", "use_point_products"]


def _point_tap(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The kernel tap ``(i, j)`` that a 1x1 input meets when the output is 1x1 too, or None
    when the convolution is not a plain one (groups, padding modes, string padding) or a 1x1
    input does not give a 1x1 output through one tap."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    tap = []
    for k, s, p, d in zip(conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True):
        out = (1 + 2 * p - d * (k - 1) - 1) // s + 1
        if out != 1 or p % d or not 0 <= p // d < k:
            return None
        tap.append(p // d)  # output 0 reads input 0 through tap j with j * d - p = 0
    return tap[0], tap[1]


class PointAwareConv2d(nn.Conv2d):
    """``nn.Conv2d`` that convolves a 1x1 input by one matrix product (see the module)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        tap = _point_tap(self) if input.shape[-2:] == (1, 1) else None
        if tap is None:
            return super().forward(input)
        kernel = self.weight[:, :, tap[0], tap[1]]
        return F.linear(input.flatten(1), kernel, self.bias)[:, :, None, None]


def use_point_products(module: nn.Module) -> nn.Module:
    """Make every plain ``nn.Conv2d`` in ``module`` a :class:`PointAwareConv2d`, in place (same
    parameters, buffers and ``state_dict``), and return ``module``."""
    for child in module.modules():
        if type(child) is nn.Conv2d:
            child.__class__ = PointAwareConv2d
    return module
