"""The Fig. 2 network (Sec. 5.2): ``x -> trunk -> Linear(., d) -> dropout -> Linear(d, a)``.

The model knows nothing of training: the recipe (:mod:`.recipe`) draws the masks of a global
batch and passes them in, or the dropout layer draws its own.

Convolutions of 1x1 feature maps run as the one matrix product they are. Fig. 2 runs ResNet-50
on small images (16x16 for the digits): after the stem and the first stages the feature maps
are 1x1, and every later convolution, 3x3 ones included, reads a single tap of its kernel (the
others fall on the zero padding). oneDNN's CPU kernels do not see this: the backward pass of a
3x3 convolution of a (50, 512, 1, 1) input takes about ten times as long as the product
``x @ W[:, :, 1, 1]^T`` it amounts to, and such convolutions were most of a training step
(docs/deep.md, "Where the time goes").

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

from ... import nn as sdnn
from ...schemes import Scheme
from .config import DeepConfig, make_scheme

__all__ = ["Fig2Net", "PointAwareConv2d", "build_model", "use_point_products"]


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


def _trunk(name: str) -> tuple[nn.Module, int]:
    """A feature extractor and its output width (torchvision's ResNets without their fc)."""
    if name == "tiny":
        body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        return body, 32
    import torchvision

    resnet = getattr(torchvision.models, name)(weights=None)
    features = resnet.fc.in_features
    resnet.fc = nn.Identity()
    return use_point_products(resnet), features


class Fig2Net(nn.Module):
    """``x -> trunk -> Linear(., d) -> StructuredDropout -> Linear(d, a, bias=False)``.

    The last layer has no bias so that the prediction is exactly the paper's ``U G``
    (Sec. 3, eq. 13) with ``U = head.weight`` and ``G`` the output of ``hidden``. The dropout
    layer draws ``scheme.on_units()``: the law on the d features with the scheme's regularizer
    (DropConnect's per-sample masks on ``U``'s entries give Dropout's, docs/theory.md).

    Args:
        trunk: ``resnet50``, ``resnet18`` or ``tiny``.
        width: d.
        classes: a.
        scheme: the mask law.
    """

    def __init__(self, trunk: str, width: int, classes: int, scheme: Scheme) -> None:
        super().__init__()
        self.trunk, features = _trunk(trunk)
        self.hidden = nn.Linear(features, width)
        self.dropout = sdnn.StructuredDropout(scheme.on_units())
        self.head = nn.Linear(width, classes, bias=False)
        nn.init.zeros_(self.head.weight)  # start at U G = 0: objective ||Y||^2, no huge outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``G^T``: (n, d), one row per sample."""
        return self.hidden(self.trunk(x))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions (n, a). In training mode the features are multiplied by ``scale``
        (``z / mu``, one row per sample) when given, else by fresh masks of the layer."""
        g = self.features(x)
        if self.training:
            g = g * scale if scale is not None else self.dropout(g)
        return self.head(g)


def build_model(config: DeepConfig, classes: int) -> Fig2Net:
    """The network with initial weights drawn from ``config.seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return Fig2Net(config.trunk, config.width, classes, make_scheme(config))
