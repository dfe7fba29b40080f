"""The monitor of a model's last layer: finds its head and the dropout in front of it, and
measures what that dropout does (:func:`~structdrop.head.report.head_report`) over a pass.

``HeadMonitor(model)`` finds the head (a linear layer: ``head=`` names it, else timm's
``get_classifier()``, torchvision's ``fc``, the last linear layer of ``classifier``, or that
of the model itself when it is a ``Sequential``) and the mask law of the dropout that feeds it:

* a ``torch.nn.Dropout(p)`` right before the head in a ``Sequential`` (torchvision's VGG,
  MobileNet, EfficientNet classifiers), or held by the head's parent as ``drop``,
  ``head_drop`` or ``dropout`` (timm's ``ClassifierHead``, vision transformers):
  ``Bernoulli(p)``;
* structdrop's layers there: ``BlockDropout(p, r)`` on the feature axis is ``GridBlock(p, r)``,
  ``StructuredDropout(law)`` is ``law``;
* a head that is itself a ``DropConnectLinear(p)``: ``DropConnect(p)`` (its regularizer is
  Dropout's: docs/theory.md);
* a float ``drop_rate`` on the head's parent, which applies ``F.dropout`` before the head in
  its forward (timm's ResNets and EfficientNets): ``Bernoulli(drop_rate)``.

When none of these is found, or the law is another, ``scheme=`` gives it; the error says so.

:meth:`HeadMonitor.measure` runs the model over a loader in eval mode without gradients (no
masks: the objective is the deterministic one of Thm 3.1), captures the head's input with a
forward pre-hook (in float64), and accumulates :class:`~structdrop.head.stats.HeadStats` batch by
batch; under ``torch.distributed`` the statistics of every process are summed. The hook stays
registered (and idle outside :meth:`~HeadMonitor.measure`), so that a compiled model is not
recompiled at every measurement; :meth:`~HeadMonitor.close` removes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .. import nn as sdnn
from ..schemes import Bernoulli, DropConnect, GridBlock, Scheme, check_scheme
from .report import HeadReport, head_report
from .stats import HeadStats

__all__ = ["HeadMonitor", "find_head", "head_law"]

#: Names under which a model, or a head's parent, holds its classifier.
HEAD_NAMES: tuple[str, ...] = ("fc", "classifier", "head")
#: Names under which a head's parent holds the dropout that feeds the head.
DROPOUT_NAMES: tuple[str, ...] = ("drop", "head_drop", "dropout", "drop_layer")


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s and DistributedDataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else None
        )
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _last_linear(module: nn.Module) -> nn.Linear | None:
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Sequential):
        linears = [m for m in module if isinstance(m, nn.Linear)]
        return linears[-1] if linears else None
    return None


def find_head(model: nn.Module, head: nn.Module | None = None) -> tuple[nn.Linear, str]:
    """The head (a linear layer) of ``model`` and its path in the model.

    Raises:
        TypeError: ``model`` is not a module, the head is not linear, or it is not in the model.
        ValueError: no head found (the message says to pass ``head=``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inner = _unwrapped(model)
    if head is None:
        found = None
        getter = getattr(inner, "get_classifier", None)
        if callable(getter):
            candidate = getter()
            found = candidate if isinstance(candidate, nn.Module) else None
        for name in HEAD_NAMES:
            if found is None and isinstance(getattr(inner, name, None), nn.Module):
                found = getattr(inner, name)
        if found is None and isinstance(inner, nn.Sequential):
            found = _last_linear(inner)
        head = None if found is None else _last_linear(found) or found
        if head is None:
            raise ValueError(
                f"found no head in {type(inner).__name__} (no get_classifier(), fc, classifier "
                "or head): pass it, e.g. HeadMonitor(model, head=model.fc)"
            )
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"the head must be a linear layer (torch.nn.Linear or a subclass), got "
            f"{type(head).__name__}; pass the model's last linear layer as head="
        )
    for path, module in inner.named_modules():
        if module is head:
            return head, path
    raise TypeError("head is not a submodule of model")


def _dropout_law(module: nn.Module) -> Scheme | None:
    """The law of a dropout layer on a feature vector, or None for any other module."""
    if isinstance(module, nn.Dropout):
        return Bernoulli(float(module.p))
    if isinstance(module, sdnn.BlockDropout) and module.dim in (-1, 1):
        return GridBlock(float(module.p), module.block_size)
    if isinstance(module, sdnn.StructuredDropout):
        return module.scheme
    return None


def _is_dropout_like(module: nn.Module) -> bool:
    others = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
    return isinstance(module, (*others, sdnn.BlockDropout))


def head_law(model: nn.Module, head: nn.Module) -> Scheme:
    """The mask law of the dropout in front of ``head`` in ``model`` (see the module).

    Raises:
        ValueError: no dropout found in front of the head, or one whose law is not known
            here; the message says to pass ``scheme=``.
    """
    inner = _unwrapped(model)
    if isinstance(head, sdnn.DropConnectLinear):
        return DropConnect(float(head.p))
    parent, name = _parent_of(inner, head)
    if parent is not None and isinstance(parent, nn.Sequential):
        items = list(parent._modules.items())
        index = next(i for i, (key, _) in enumerate(items) if key == name)
        for _, before in reversed(items[:index]):
            if isinstance(before, nn.Identity | nn.Flatten):
                continue
            law = _dropout_law(before)
            if law is not None:
                return law
            if _is_dropout_like(before):
                raise _unknown(before)
            break
        parent, _ = _parent_of(inner, parent)  # e.g. model.classifier = Sequential(...)
    if parent is not None:
        for attribute in DROPOUT_NAMES:
            module = getattr(parent, attribute, None)
            if isinstance(module, nn.Module):
                law = _dropout_law(module)
                if law is not None:
                    return law
                if _is_dropout_like(module):
                    raise _unknown(module)
        rate = getattr(parent, "drop_rate", None)
        if isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
            return Bernoulli(float(rate))
    raise ValueError(
        f"found no dropout in front of the head ({type(head).__name__}): pass its mask law, "
        "e.g. HeadMonitor(model, head=..., scheme=structdrop.Bernoulli(0.5))"
    )


def _unknown(module: nn.Module) -> ValueError:
    return ValueError(
        f"the dropout in front of the head is a {type(module).__name__}, whose mask law on the "
        "head's features is not known here: pass it as scheme="
    )


def _parent_of(model: nn.Module, child: nn.Module) -> tuple[nn.Module | None, str]:
    for module in model.modules():
        for name, sub in module._modules.items():
            if sub is child:
                return module, name
    return None, ""


class HeadMonitor:
    """Measure what the dropout in front of a model's last linear layer does to it.

    Args:
        model: any module (compiled or wrapped in DistributedDataParallel: the inner model is
            searched).
        head: the last linear layer (default: found, see the module docstring).
        scheme: the mask law on the head's input features (default: read from the dropout in
            front of the head).

    Attributes:
        head: the head.
        head_name: its path in the model.
        scheme: the law.
        stats: the statistics of the last :meth:`measure` (None before).

    Examples:
        ```python
        import torch
        from torch import nn
        import structdrop

        model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))
        loader = [(torch.randn(32, 20), torch.randint(4, (32,))) for _ in range(3)]
        monitor = structdrop.HeadMonitor(model)    # finds model[3] and the Dropout before it
        report = monitor.measure(loader)           # one pass in eval mode, no masks
        print(report.gap_to_best_head, report.regularizer, report.capacity_gap)
        ```
    """

    def __init__(
        self, model: nn.Module, head: nn.Module | None = None, scheme: Scheme | None = None
    ) -> None:
        self.model = model
        self.head, self.head_name = find_head(model, head)
        self.scheme = head_law(model, self.head) if scheme is None else check_scheme(scheme)
        self.scheme.check_width(self.head.in_features)
        self.stats: HeadStats | None = None
        self._capturing = False
        self._captured: list[Tensor] = []
        self._handle = self.head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._capturing:
            self._captured.append(args[0].detach())

    def measure(
        self,
        loader: Iterable[Any],
        *,
        max_batches: int | None = None,
        all_reduce: bool | None = None,
    ) -> HeadReport:
        """One pass over ``loader`` in eval mode, without gradients, and the head's report.

        Args:
            loader: batches ``(inputs, targets, ...)``: inputs the model takes (moved to the
                model's device), targets class labels (integers) or real vectors of the
                head's ``out_features`` values.
            max_batches: stop after this many batches.
            all_reduce: sum the statistics over the processes of ``torch.distributed`` (default:
                when it is initialized). Every process must then measure.

        Returns:
            The :class:`~structdrop.head.report.HeadReport` of the head's current weights.

        Raises:
            ValueError: a batch whose features or targets do not fit the head (nothing of it is
                added), an empty loader.
        """
        import torch.distributed as dist

        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        stats = HeadStats(self.head.in_features, self.head.out_features)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for index, batch in enumerate(loader):
                    if max_batches is not None and index >= max_batches:
                        break
                    inputs, targets = batch[0], batch[1]
                    stats.update(self._features(inputs, device), targets)
        finally:
            self.model.train(was_training)
        if all_reduce is None:
            all_reduce = dist.is_available() and dist.is_initialized()
        if all_reduce:
            stats.all_reduce()
        if stats.samples == 0:
            raise ValueError("the loader gave no batch: nothing to measure")
        self.stats = stats
        bias = self.head.bias
        return head_report(stats, self.head.weight, self.scheme, bias=bias)

    def _features(self, inputs: Any, device: torch.device) -> Tensor:
        """The head's input for one batch (the model's output is not used)."""
        if isinstance(inputs, Tensor):
            inputs = inputs.to(device, non_blocking=True)
        self._captured.clear()
        self._capturing = True
        try:
            self.model(inputs)
        finally:
            self._capturing = False
        if len(self._captured) != 1:
            count = len(self._captured)
            self._captured.clear()
            raise ValueError(
                f"the head ran {count} times in one forward pass; measure a model that calls "
                "its head once per batch"
            )
        return self._captured.pop()

    def close(self) -> None:
        """Remove the monitor's hook from the head."""
        self._handle.remove()

    def __repr__(self) -> str:
        return (
            f"HeadMonitor(head={self.head_name!r} {tuple(self.head.weight.shape)}, "
            f"scheme={self.scheme!r})"
        )
