"""Sliding DropBlock as one operator: ``structdrop::drop_block``.

``drop_block_masked`` is every DropBlock's forward pass (the layers', the functions'). It draws a
seed from ``generator`` (torch's default generator when None) and calls the operator (traced
code and meta tensors; an eager call runs the operator's kernel and backward as an
``autograd.Function``, the same numbers without the dispatcher's custom-op wrappers)::

    structdrop::drop_block(input, seed, p, block_size, boundary, gamma_rule, gamma_value,
                           scale, eps, shared_channels, batchwise, method) -> output

which multiplies ``input`` by the mask that ``seed`` determines: unit ``i`` kept with
probability ``mu_i = (1 - gamma)^{n_i}`` and scaled by ``1 / mu_i``
(docs/theory.md#sliding-dropblock), by the sparse sampler on a CPU and the dense one elsewhere.
The output is ``input * mask`` with a mask that does not depend on ``input``, so the gradient is
the same operator on the gradient with the same seed: nothing but the seed is kept for the
backward pass, and the backward is differentiable again.

To ``torch.compile`` and ``torch.export`` the operator is one node with the input's shape (its
fake implementation): nothing of the host computation (window counts, the gamma rules, the
bisection, the cached ``1 / mu``) enters a graph, and a model with DropBlock on maps of many
sizes traces like one with ``F.dropout``. ``p`` reaches the operator as a one-element float64
CPU tensor: a layer keeps its rate in one and a :class:`structdrop.nn.DropRateSchedule` changes it
in place, so a new rate does not recompile.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ... import _validation as check
from .._masking import zero_output
from .._tracing import check_traceable_generator
from .dense import drop_block_dense
from .options import DropBlockOptions
from .rates import geometry, inverse_keep_prob, window_gamma
from .sparse import drop_block_sparse

__all__ = ["drop_block_masked", "drop_block_op"]

#: Seeds are drawn uniformly from [0, SEED_BOUND).
SEED_BOUND = 2**62


# The operator is defined with torch.library's Library API, not ``custom_op``: the same
# operator to the compiler, without importing the compiler stack on the first call.
_LIBRARY = torch.library.Library("structdrop", "DEF")
_LIBRARY.define(
    "drop_block(Tensor input, Tensor seed, Tensor p, int[] block_size, str boundary, "
    "str gamma_rule, float gamma_value, str scale, float eps, bool shared_channels, "
    "bool batchwise, str method) -> Tensor"
)


def _drop_block(
    input: Tensor,
    seed: Tensor,
    p: Tensor,
    block_size: list[int],
    boundary: str,
    gamma_rule: str,
    gamma_value: float,
    scale: str,
    eps: float,
    shared_channels: bool,
    batchwise: bool,
    method: str,
) -> Tensor:
    """``input`` times the DropBlock mask of ``seed`` (see the module docstring)."""
    rate = float(p)
    if rate == 0.0:
        return input.clone()
    if rate == 1.0:
        return input * 0.0
    n, c, *sizes = input.shape
    spatial, block = tuple(sizes), tuple(block_size)
    shape = (1 if batchwise else n, 1 if shared_channels else c, *spatial)
    if input.numel() == 0:
        return input.clone()
    rule = gamma_value if gamma_rule == "value" else gamma_rule
    gamma = window_gamma(rate, spatial, block, boundary, rule)
    inverse = inverse_keep_prob(spatial, block, boundary, gamma, input.device, input.dtype)
    generator = torch.Generator(device=input.device)
    generator.manual_seed(int(seed))
    sparse = method == "sparse" or (method == "auto" and input.device.type == "cpu")
    sampler = drop_block_sparse if sparse else drop_block_dense
    windows = geometry(spatial, block, boundary)
    return sampler(input, shape, windows, gamma, inverse, scale, eps, generator)


def _output_like(input: Tensor, *arguments: object) -> Tensor:
    """The fake implementation: the output has the input's shape, dtype, device and layout."""
    return torch.empty_like(input)


def _keep_seed(ctx: Any, inputs: tuple[Any, ...], output: Tensor | None) -> None:
    ctx.save_for_backward(inputs[1], inputs[2])
    ctx.options = inputs[3:]


def _gradient(apply: Any, ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    """``d(input * mask) / d(input) = mask``: ``apply`` (the operator, or its eager form) on
    ``grad`` with the same seed."""
    seed, p = ctx.saved_tensors
    options = ctx.options
    return (apply(grad, seed, p, *options), None, None) + (None,) * len(options)


def _same_mask_on_the_gradient(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    return _gradient(drop_block_op, ctx, grad)


_LIBRARY.impl("drop_block", _drop_block, "CompositeExplicitAutograd")
torch.library.register_fake("structdrop::drop_block", _output_like, lib=_LIBRARY)
torch.library.register_autograd(
    "structdrop::drop_block",
    _same_mask_on_the_gradient,
    setup_context=_keep_seed,
    lib=_LIBRARY,
)
#: The operator, ``torch.ops.structdrop.drop_block``.
drop_block_op = torch.ops.structdrop.drop_block


class _SameMask(torch.autograd.Function):
    """The operator's kernel with the operator's backward, for eager calls: the same numbers
    without the dispatcher's custom-op wrappers (a fifth of a call's cost on small maps)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, seed: Tensor, p: Tensor, *options: Any) -> Tensor:
        _keep_seed(ctx, (input, seed, p, *options), None)
        return _drop_block(input, seed, p, *options)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return _gradient(_SameMask.apply, ctx, grad)


def check_feature_maps(input: Tensor, options: DropBlockOptions) -> None:
    """``input`` is a floating tensor ``(N, C, *spatial)`` with ``options.spatial_dims``
    spatial axes (any number >= 1 when None)."""
    name = "drop_block" if options.spatial_dims is None else f"drop_block{options.spatial_dims}d"
    check.check_feature_maps(input, name)
    if options.spatial_dims is not None:
        check.check_spatial_ndim(input, options.spatial_dims, name)


def drop_block_masked(
    input: Tensor,
    p: float | Tensor,
    options: DropBlockOptions,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliding DropBlock of ``input`` (``(N, C, *spatial)``, floating) at drop rate ``p`` in
    [0, 1] with validated ``options``: ``input`` itself when not ``training`` or ``p = 0``,
    ``input * 0`` when ``p = 1``, else the operator's output (``input``, multiplied in place,
    when ``options.inplace``).

    ``p`` is a float, or a one-element float64 CPU tensor (a layer's rate, which a schedule
    changes in place): traced code then never reads its value, so a new rate needs no
    recompilation, and ``p = 0`` or ``1`` is left to the operator (a copy of the input, or
    ``input * 0``)."""
    check_feature_maps(input, options)
    if not training:
        return input
    if isinstance(p, Tensor):
        rate = p
        value = None if torch.compiler.is_compiling() else float(p)
    else:
        # ones * p, not a factory taking p: Dynamo keeps a changing p symbolic in arithmetic
        # with a tensor, while a factory function would specialize it (a recompile per p)
        rate, value = torch.ones(1, dtype=torch.float64) * p, p
    if value == 0.0:
        return input
    if value == 1.0:
        return zero_output(input, options.inplace)
    check_traceable_generator(generator)
    block = options.blocks(input.ndim - 2)
    if input.is_meta:  # shape propagation: no draw
        seed = torch.zeros((), dtype=torch.int64)
    elif generator is None:  # (a generator=None keyword breaks symbolic batch sizes)
        seed = torch.randint(SEED_BOUND, (), dtype=torch.int64)
    else:
        seed = torch.randint(SEED_BOUND, (), generator=generator, device=generator.device).cpu()
    rule, gamma = (
        (options.gamma, 0.0) if isinstance(options.gamma, str) else ("value", options.gamma)
    )
    # traced code (torch.compile, torch.export) and meta tensors see the operator (its fake
    # implementation gives the shape); eager calls run its kernel
    traced = torch.compiler.is_compiling() or input.is_meta
    apply = drop_block_op if traced else _SameMask.apply
    output = apply(
        input,
        seed,
        rate,
        list(block),
        options.boundary,
        rule,
        gamma,
        options.scale,
        options.eps,
        options.shared_channels,
        options.batchwise,
        options.method,
    )
    return input.copy_(output) if options.inplace else output
