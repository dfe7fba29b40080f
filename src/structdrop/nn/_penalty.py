"""The regularizer a mask law induces on the last layer, as a differentiable loss term.

For features ``G`` (d x N) read by a last linear layer ``U`` (a x d), masks ``z`` of a law
applied as ``diag(mu)^-1 diag(z) G`` give (Thm 3.1, eq. 14-15)
``E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>``
with ``Cbar = C / (mu mu^T)`` (eq. 16): :class:`DropoutPenalty` computes the second term.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from .. import _validation as check
from ..objectives import penalty
from ..schemes import Scheme, check_scheme
from ._tracing import fx_node, host_constant, is_compiling

__all__ = ["DropoutPenalty", "dropout_penalty"]


class DropoutPenalty(nn.Module):
    """The regularizer a mask law induces on the last layer, as a differentiable loss term.

    For features ``G`` (d x N, one column per sample) read by a last linear layer ``U``
    (a x d), masks ``z`` of ``scheme`` applied as ``diag(mu)^-1 diag(z) G`` give (Thm 3.1,
    eq. 14-15)::

        E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>,

    with ``Cbar = C / (mu mu^T)`` (eq. 16). Adding this module's output to the plain summed
    squared error trains on the expected objective exactly, without masks and without their
    gradient noise; e.g. for Dropout it is ``p/(1-p) sum_i ||u_i||^2 ||g_i||^2`` (Cor. 3.2), for
    :class:`structdrop.GridBlock` ``p/(1-p) sum_blocks ||U_i G_i||_F^2`` (Lemma 2.1, eq. 5).
    DropConnect's masks on the entries of ``U`` give Dropout's penalty (docs/theory.md; see
    :func:`structdrop.penalty`).

    Args:
        scheme: the mask law on the d features.

    Shape:
        weight: ``(a, d)``, e.g. ``nn.Linear(d, a).weight``. features: ``(N, d)``, one row per
        sample (the input of that layer). Output: a scalar (summed over samples, no 1/2).
    """

    def __init__(self, scheme: Scheme) -> None:
        super().__init__()
        self.scheme = check_scheme(scheme)

    def forward(self, weight: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``structdrop.penalty(weight, features.T, scheme)``.

        Args:
            weight: (a, d) weights of the layer that reads the features.
            features: (N, d) features, one row per sample.

        Returns:
            The penalty, a 0-d tensor (float64 if either input is float64, else float32); a
            0-d meta tensor for meta inputs (shape propagation).
        """
        if isinstance(features, torch.fx.Proxy) or isinstance(weight, torch.fx.Proxy):
            node = fx_node(self, weight, features)
            if node is not None:
                return node
        return dropout_penalty(weight, features, self.scheme)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}"


def dropout_penalty(weight: torch.Tensor, features: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """``penalty(weight, features.T, scheme)`` with the features checked; see
    :class:`DropoutPenalty`."""
    if isinstance(features, torch.fx.Proxy) or isinstance(weight, torch.fx.Proxy):
        return fx_node(dropout_penalty, weight, features, scheme)
    features = check.check_features(features)
    if features.is_meta or (isinstance(weight, torch.Tensor) and weight.is_meta):
        # shape propagation: the same formula on meta tensors, no look at the values
        weight = check.check_matrix(check.check_float_tensor(weight, "weight"), "weight", meta=True)
        features = check.check_matrix(features, "features", meta=True)
        check.check_same(weight.shape[1], features.shape[1], "weight's columns must match d")
        return _characteristic_form(weight, features, scheme)
    if is_compiling() or features.device.type != "cpu":
        weight, features = check.check_weight_and_features(weight, features)
        return _characteristic_form(weight, features, scheme)
    value = penalty(weight, features.T, scheme)
    assert isinstance(value, torch.Tensor)  # tensors in, a tensor out
    return value


def _characteristic_form(
    weight: torch.Tensor, features: torch.Tensor, scheme: Scheme
) -> torch.Tensor:
    """``<Cbar, (W^T W) * (F^T F)>`` on checked shapes, with no look at the values: no host
    sync (accelerators) and no data-dependent branch (``torch.compile``); a non-finite input
    gives a non-finite penalty, as torch's losses do."""
    double = torch.float64 in (weight.dtype, features.dtype)
    dtype = torch.float64 if double else torch.float32
    weight, features = weight.to(dtype), features.to(dtype)
    cbar = _characteristic(scheme, weight.shape[1], features.device, dtype)
    return (cbar * (weight.T @ weight) * (features.T @ features)).sum()


@host_constant
def _characteristic(
    scheme: Scheme, d: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``Cbar`` (eq. 16) on a device, made once per scheme, width, device and dtype."""
    return _characteristic_cached(scheme, d, device, dtype)


@functools.lru_cache(maxsize=64)
def _characteristic_cached(
    scheme: Scheme, d: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    cbar = np.array(scheme.on_units().characteristic(d), dtype=np.float64)
    return torch.from_numpy(cbar).to(device=device, dtype=dtype)
