"""Sliding DropBlock on 1-D, 2-D and 3-D feature maps: the functions.

Ghiasi et al.'s DropBlock drops every candidate window of ``block_size`` units independently
with probability ``gamma``; a unit is kept iff no dropped window covers it. The windows
(``boundary="valid"`` as torchvision and TensorFlow, ``"clipped"`` as timm) are described in
:mod:`.rates`. With ``n_i`` windows covering unit ``i`` the exact keep probability is
``mu_i = (1 - gamma)^n_i`` (docs/theory.md#sliding-dropblock); in 1-D the mask law is exactly
``structdrop.SlidingBlock(p, r, boundary=boundary, gamma=gamma)``. The default scaling divides
unit ``i`` by ``mu_i``, so ``E[output] = input`` per unit, also at the borders.

Each function validates its options once into a :class:`.options.DropBlockOptions` and hands
the input to the operator of :mod:`.op`, which draws the mask with the device's fastest exact
sampler: sparse on a CPU (:mod:`.sparse`: only the dropped windows are drawn), dense elsewhere
(:mod:`.dense`). Both draw the same law.

References:
    Ghiasi, Lin, Le. DropBlock: A regularization method for convolutional networks.
    NeurIPS 2018. https://arxiv.org/abs/1810.12890
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch import Tensor

from ... import _validation as check
from .._tracing import fx_node
from .op import drop_block_masked
from .options import BOUNDARIES, GAMMA_RULES, OPTION_NAMES, DropBlockOptions
from .rates import gamma_for, keep_prob

__all__ = [
    "drop_block",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "drop_block_keep_prob",
    "window_drop_prob",
]


def window_drop_prob(
    p: float,
    block_size: int | Sequence[int],
    spatial_shape: Sequence[int],
    boundary: str = "valid",
    rule: str = "mean",
) -> float:
    """The probability ``gamma`` with which each candidate window is dropped.

    Rules (docs/theory.md#sliding-dropblock):

    * ``"mean"``: the unique gamma with ``mean_i (1 - gamma)^{n_i} = 1 - p``, so the mean drop
      rate over the map is exactly ``p`` (solved by bisection in float64).
    * ``"interior"``: ``1 - (1 - p)^(1 / V)`` with ``V = max_i n_i``, so the most covered units
      drop with rate exactly ``p``. ``V`` is the block volume ``prod(min(r_k, L_k))`` for
      ``"clipped"``, and for ``"valid"`` whenever every ``L_k >= 2 r_k - 1``; on smaller maps no
      unit is covered by a full block of valid windows and ``V = prod(min(w_k, L_k - w_k + 1))``
      with ``w_k = min(r_k, L_k)`` (1 when the block covers the map).
    * ``"ghiasi"``: Ghiasi et al.'s ``p / prod(w_k) * prod(L_k / (L_k - w_k + 1))``, as in
      torchvision, capped below 1. First-order only: it neither gives the mean rate ``p`` nor
      the interior rate ``p``.

    Args:
        p: drop probability, in [0, 1).
        block_size: block extent ``r``, an int or one int per spatial axis.
        spatial_shape: the lengths ``L`` of the spatial axes.
        boundary: ``"valid"`` or ``"clipped"`` (see :mod:`.rates`).
        rule: ``"mean"``, ``"interior"`` or ``"ghiasi"``; a float in [0, 1) is returned as is.

    Returns:
        The window drop probability gamma, a float in [0, 1).
    """
    p = check.check_probability(p)
    spatial = check.check_spatial_shape(spatial_shape)
    block = check.check_block_sizes(block_size, len(spatial))
    boundary = check.check_choice(boundary, "boundary", BOUNDARIES)
    if not isinstance(rule, str):
        return check.check_probability(rule, "rule")
    rule = check.check_choice(rule, "rule", GAMMA_RULES)
    return gamma_for(p, spatial, block, boundary, rule)


def drop_block_keep_prob(
    spatial_shape: Sequence[int],
    block_size: int | Sequence[int],
    boundary: str,
    gamma: float,
) -> Tensor:
    """Exact per-unit keep probabilities ``mu_i = (1 - gamma)^{n_i}`` of a sliding DropBlock.

    ``n_i`` is the number of candidate windows covering unit ``i``
    (docs/theory.md#sliding-dropblock); in 1-D this is
    ``structdrop.SlidingBlock(p, r, boundary, gamma).mean(L)``.

    Args:
        spatial_shape: the lengths of the spatial axes.
        block_size: block extent, an int or one int per spatial axis.
        boundary: ``"valid"`` or ``"clipped"``.
        gamma: the window drop probability, in [0, 1) (see :func:`window_drop_prob`).

    Returns:
        A float64 CPU tensor of shape ``spatial_shape``.
    """
    spatial = check.check_spatial_shape(spatial_shape)
    block = check.check_block_sizes(block_size, len(spatial))
    boundary = check.check_choice(boundary, "boundary", BOUNDARIES)
    if isinstance(gamma, str):
        raise TypeError(
            f"gamma must be a window drop probability in [0, 1), got {gamma!r}; "
            f"use window_drop_prob(p, ..., rule={gamma!r}) to get one"
        )
    gamma = check.check_probability(gamma, "gamma")
    return keep_prob(spatial, block, boundary, gamma).clone()


def drop_block(
    input: Tensor,
    p: float,
    block_size: int | Sequence[int],
    inplace: bool = False,
    eps: float = 1e-6,
    training: bool = True,
    *,
    boundary: str = "valid",
    gamma: str | float = "mean",
    scale: str = "expected",
    shared_channels: bool = False,
    batchwise: bool = False,
    method: str = "auto",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliding DropBlock (Ghiasi et al., 2018) on ``(N, C, *spatial)`` input, exact per unit.

    Every candidate window is dropped independently with probability ``gamma``; unit ``i`` is
    kept with probability ``mu_i = (1 - gamma)^{n_i}`` and, with ``scale="expected"``,
    multiplied by ``1 / mu_i``, so ``E[output] = input`` per unit (docs/theory.md#sliding-dropblock:
    existing layers scale by the batch's kept fraction, which is biased at the borders and
    couples samples).

    The first six arguments are torchvision's ``drop_block2d(input, p, block_size, inplace,
    eps, training)``; everything else is keyword-only. The options (``block_size``,
    ``inplace``, ``eps``, ``boundary``, ``gamma``, ``scale``, ``shared_channels``,
    ``batchwise``, ``method``) are those of :class:`.options.DropBlockOptions`, where each is
    described.

    Args:
        input: a floating point tensor of shape ``(N, C, *spatial)``, one or more spatial axes.
        p: drop probability, in [0, 1]. ``p = 0`` returns ``input`` itself; ``p = 1`` returns
            zeros (``input * 0``, as ``F.dropout``).
        training: apply DropBlock; when False, ``input`` itself is returned.
        generator: a ``torch.Generator`` that seeds the mask (not under ``torch.compile``,
            which cannot trace one); torch's default generator when None.

    Returns:
        A tensor of the input's shape, dtype, device and memory format (``input`` itself when
        ``inplace``).

    Raises:
        TypeError: ``input`` is not a floating point tensor, or an argument has a wrong type.
        ValueError: an argument is out of range (the message names it and its value).
    """
    return _call(drop_block, None, locals())


def _call(
    function: Callable[..., Tensor], spatial_dims: int | None, arguments: dict[str, Any]
) -> Tensor:
    """``function`` (``drop_block`` or one of its N-d forms) on its bound ``arguments``: one
    ``torch.fx`` node under symbolic tracing; else the options validated, then the masks."""
    input, p, block_size = arguments["input"], arguments["p"], arguments["block_size"]
    options = {name: arguments[name] for name in OPTION_NAMES}
    training, generator = arguments["training"], arguments["generator"]
    if isinstance(input, torch.fx.Proxy):
        return fx_node(
            function, input, p, block_size, **options, training=training, generator=generator
        )
    spec = DropBlockOptions.make(block_size, spatial_dims, **options)
    p = check.check_drop_rate(p)
    generator = check.check_generator(generator)
    return drop_block_masked(input, p, spec, bool(training), generator)


_SIGNATURE = inspect.signature(drop_block)


def _with_spatial_dims(spatial_dims: int, name: str, doc: str) -> Callable[..., Tensor]:
    """``drop_block`` for inputs with ``spatial_dims`` spatial axes: the same signature (one
    definition of the options), an input of another rank is a ValueError."""

    @functools.wraps(drop_block)
    def function(*args: Any, **kwargs: Any) -> Tensor:
        bound = _SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        return _call(function, spatial_dims, bound.arguments)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    del function.__wrapped__  # its own name and docstring; the signature is drop_block's
    function.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
    return function


_ND_DOC = """Sliding DropBlock on ``{shape}`` input (Ghiasi et al., 2018;
    docs/theory.md#sliding-dropblock), exact per-unit keep probabilities and unbiased scaling by
    default{extra}. :func:`drop_block` on {kind} maps: the same arguments (the first six are
    torchvision's ``drop_block{n}d(input, p, block_size, inplace, eps, training)``), an input of
    another rank is a ValueError.
    """

drop_block1d = _with_spatial_dims(
    1,
    "drop_block1d",
    _ND_DOC.format(
        shape="(N, C, L)",
        kind="1-D",
        n=1,
        extra=": the masks of ``structdrop.SlidingBlock(p, r, boundary, gamma)`` per channel",
    ),
)
drop_block2d = _with_spatial_dims(
    2,
    "drop_block2d",
    _ND_DOC.format(
        shape="(N, C, H, W)",
        kind="2-D",
        n=2,
        extra="; a drop-in for ``torchvision.ops.drop_block2d``",
    ),
)
drop_block3d = _with_spatial_dims(
    3,
    "drop_block3d",
    _ND_DOC.format(
        shape="(N, C, D, H, W)",
        kind="3-D",
        n=3,
        extra="; a drop-in for ``torchvision.ops.drop_block3d``",
    ),
)
