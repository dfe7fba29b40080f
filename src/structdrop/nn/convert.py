"""One call to switch a torchvision, timm or ``dropblock`` model to exact DropBlock.

:func:`convert_dropblock` walks a model and replaces each DropBlock layer of those packages (each
only when its package is importable) by :class:`~structdrop.nn.DropBlock2d` or
:class:`~structdrop.nn.DropBlock3d` with the same drop rate and block size, mapping what each
package means by its layer onto our options. What changes is what those layers get wrong
(docs/theory.md#existing-dropblock-layers): the window drop probability (first-order or
under-dropping there, exact here: ``gamma="mean"`` gives the mean drop rate ``p``) and the
scaling (the batch's kept fraction there, the exact per-unit ``1 / mu`` here).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .dropblock import OPTION_NAMES
from .modules import DropBlock2d, DropBlock3d

__all__ = ["convert_dropblock"]

#: What ``convert_dropblock`` may set: the layer's arguments (``training`` is the module's mode).
_OPTIONS = ("p", "block_size", *OPTION_NAMES, "generator")


def _torchvision(layer: Any, three_d: bool) -> dict[str, Any]:
    """torchvision: windows that fit in the map, one mask per channel."""
    return {
        "cls": DropBlock3d if three_d else DropBlock2d,
        "p": layer.p,
        "block_size": layer.block_size,
        "inplace": bool(layer.inplace),
        "eps": layer.eps,
        "boundary": "valid",
        "shared_channels": False,
    }


def _timm(layer: Any, three_d: bool) -> dict[str, Any]:
    """timm: a window centred at every unit, clipped; ``couple_channels`` shares the mask;
    ``gamma_scale`` scales the window drop probability, i.e. (to first order) the rate."""
    if getattr(layer, "with_noise", False):
        raise ValueError(
            "cannot convert a timm DropBlock2d with with_noise=True (it fills dropped blocks "
            "with Gaussian noise, which has no counterpart here)"
        )
    if not getattr(layer, "scale_by_keep", True):
        raise ValueError(
            "cannot convert a timm DropBlock2d with scale_by_keep=False (it does not rescale "
            "kept units; every layer here does)"
        )
    rate = float(getattr(layer, "gamma_scale", 1.0)) * float(layer.drop_prob)
    return {
        "cls": DropBlock2d,
        "p": min(max(rate, 0.0), 1.0),
        "block_size": layer.block_size,
        "inplace": bool(getattr(layer, "inplace", False)),
        "boundary": "clipped",
        "shared_channels": bool(getattr(layer, "couple_channels", True)),
        "batchwise": bool(getattr(layer, "batchwise", False)),
    }


def _dropblock(layer: Any, three_d: bool) -> dict[str, Any]:
    """``dropblock``: a window centred at every unit, one mask per sample for all channels."""
    return {
        "cls": DropBlock3d if three_d else DropBlock2d,
        "p": float(layer.drop_prob),
        "block_size": layer.block_size,
        "boundary": "clipped",
        "shared_channels": True,
    }


Mapping = Callable[[Any, bool], dict[str, Any]]
# (module, class name, 3-D, mapping); 3-D classes first (torchvision's subclasses its 2-D one).
_KNOWN: tuple[tuple[str, str, bool, Mapping], ...] = (
    ("torchvision.ops", "DropBlock3d", True, _torchvision),
    ("torchvision.ops", "DropBlock2d", False, _torchvision),
    ("timm.layers", "DropBlock2d", False, _timm),
    ("dropblock", "DropBlock3D", True, _dropblock),
    ("dropblock", "DropBlock2D", False, _dropblock),
)


def _known_classes() -> list[tuple[type, bool, Mapping]]:
    """The DropBlock classes of the packages that import here."""
    found = []
    for module_name, class_name, three_d, mapping in _KNOWN:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        found.append((cls, three_d, mapping))
    return found


def _replacement(
    layer: nn.Module, known: list[tuple[type, bool, Mapping]], options: dict[str, Any]
) -> nn.Module | None:
    """Our layer for ``layer`` (None when it is not a known DropBlock)."""
    for cls, three_d, mapping in known:  # 3-D classes first: they may subclass the 2-D ones
        if isinstance(layer, cls):
            settings = {**mapping(layer, three_d), **options}
            new = settings.pop("cls")(settings.pop("p"), settings.pop("block_size"), **settings)
            return new.train(layer.training)
    return None


def _plan_children(
    module: nn.Module,
    known: list[tuple[type, bool, Mapping]],
    options: dict[str, Any],
    done: dict[int, nn.Module],
    plan: list[tuple[nn.Module, str, nn.Module]],
) -> None:
    """Add to ``plan`` a ``(parent, name, new layer)`` for each known layer below ``module``.
    ``done`` maps each layer already seen to its replacement (itself when it is not replaced),
    so that a layer used twice (or under two names) becomes one layer used twice, as before."""
    # module._modules, not named_children(): the latter yields a module used twice only once
    for name, child in module._modules.items():
        if child is None:
            continue
        if id(child) not in done:
            new = _replacement(child, known, options)
            if new is None:
                done[id(child)] = child
                _plan_children(child, known, options, done, plan)
            else:
                done[id(child)] = new
        if done[id(child)] is not child:
            plan.append((module, name, done[id(child)]))


def _check_not_scripted(model: nn.Module) -> None:
    """Refuse a scripted model, or a model with a scripted submodule (named by its path): its
    layers are compiled TorchScript, which cannot be swapped, and none is silently left."""
    for path, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            what = "a scripted model" if not path else f"the scripted submodule {path!r}"
            raise TypeError(
                f"cannot convert {what} (its layers are compiled TorchScript): call "
                f"convert_dropblock on the model before torch.jit.script"
            )


def convert_dropblock(model: nn.Module, **options: Any) -> nn.Module:
    """Replace, in place and recursively, every DropBlock layer of torchvision, timm and
    ``dropblock`` in ``model`` by this library's exact layer, and return the model.

    Each package is looked for only when it is importable. The mapping (``**options``
    override any entry, e.g. ``gamma="interior"`` or ``method="dense"``):

    * ``torchvision.ops.DropBlock2d/3d(p, b, inplace, eps)`` becomes
      ``DropBlock2d/3d(p, b, inplace, eps, boundary="valid", shared_channels=False)``;
    * timm's ``DropBlock2d(drop_prob, b, gamma_scale, inplace, couple_channels)`` becomes
      ``DropBlock2d(min(gamma_scale * drop_prob, 1), b, inplace, boundary="clipped",
      shared_channels=couple_channels, batchwise=batchwise)`` (older timm releases have
      ``batchwise``: one mask for the batch; False where a layer has none);
    * ``dropblock.DropBlock2D/3D(drop_prob, b)`` becomes
      ``DropBlock2d/3d(drop_prob, b, boundary="clipped", shared_channels=True)``.

    Every replacement keeps our defaults otherwise: ``gamma="mean"`` (the mean drop rate over
    the map is exactly ``p``, where torchvision and timm use Ghiasi's first-order formula and
    ``dropblock`` uses ``p / b^2``) and ``scale="expected"`` (each unit divided by its exact keep
    probability instead of the batch's kept fraction). timm's ``gamma_scale`` multiplies its
    window drop probability, which is proportional to the rate to first order, so it is folded
    into ``p``. timm shrinks a block larger than the map to the map, while a clipped block here
    keeps its size and is cut at the borders; both drop the whole map when the block covers it.
    timm layers with ``with_noise=True`` or ``scale_by_keep=False`` have no counterpart and raise
    a ``ValueError``. The new layer keeps the old one's training mode. ``drop_prob`` (the name
    timm's and ``dropblock``'s schedulers set) is an alias of ``p`` on our layers, and
    :class:`~structdrop.nn.DropRateSchedule` drives the converted model in one call. Every layer
    is mapped before any is replaced: when the call raises, ``model`` is unchanged.

    Args:
        model: any module; a model without such layers comes back unchanged. A layer used
            twice (or under two names) is replaced by one new layer used at each place.
        **options: keyword arguments of :class:`~structdrop.nn.DropBlock2d` (also ``p`` and
            ``block_size``) that override the mapping for every replaced layer.

    Returns:
        ``model`` itself, or the replacement when ``model`` is itself such a layer.

    Raises:
        TypeError: ``model`` is not a module, or it or one of its submodules is scripted
            (convert before ``torch.jit.script``); the message names the submodule.
        ValueError: a timm layer has no counterpart (see above).

    Examples:
        ```python
        import timm
        from structdrop import nn as sdnn

        model = timm.create_model("resnet18", drop_block_rate=0.1)
        sdnn.convert_dropblock(model)                     # exact DropBlock, timm's semantics
        schedule = sdnn.DropRateSchedule(model, stop=0.1, steps=5000)
        ```
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"convert_dropblock got unknown options {unknown}; the options are {list(_OPTIONS)}"
        )
    _check_not_scripted(model)
    known = _known_classes()
    root = _replacement(model, known, options)
    if root is not None:
        return root
    plan: list[tuple[nn.Module, str, nn.Module]] = []
    _plan_children(model, known, options, {id(model): model}, plan)
    for parent, name, new in plan:
        setattr(parent, name, new)
    return model
