"""Which array library holds a value, without importing torch.

The NumPy core accepts torch tensors but must not load torch for NumPy users (``import
structdrop`` loads NumPy and SciPy only). A tensor cannot exist before torch is
imported, so torch is looked up in ``sys.modules`` (as POT's ``ot/backend.py`` does): when it is
not there, no value can be a tensor.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from typing_extensions import TypeIs

__all__ = ["is_tensor", "loaded_torch"]


def loaded_torch() -> ModuleType | None:
    """The torch module if some code has imported it already, else None (never imports it)."""
    return sys.modules.get("torch")


def is_tensor(value: object) -> TypeIs[torch.Tensor]:
    """Whether ``value`` is a ``torch.Tensor`` (False whenever torch is not loaded)."""
    torch = loaded_torch()
    return torch is not None and isinstance(value, torch.Tensor)
