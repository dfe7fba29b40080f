"""The Fig. 2 network (Sec. 5.2): ``x -> trunk -> Linear(., d) -> dropout -> Linear(d, a)``.

The model knows nothing of training: the recipe (:mod:`.training`) draws the masks of a global
batch and passes them in, or the dropout layer draws its own.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import nn as sdnn
from ...schemes import Scheme
from .config import DeepConfig, make_scheme
from .pointconv import use_point_products

__all__ = ["Fig2Net", "build_model"]


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
