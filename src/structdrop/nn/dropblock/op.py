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
the same operator on the gradient with the same seed: nothing but the seed (and the rate) is kept
for the backward pass, and the backward is differentiable again.

The operator checks its arguments (ValueError or TypeError naming the argument and its value):
the options, the input (floating, ``(N, C, *spatial)``), ``seed`` (a 0-d int64 CPU tensor) and
``p`` (a one-element float64 CPU tensor, in [0, 1]); its fake implementation checks all but the
value of ``p``. The layers and functions validate their options once, when they are made or
called, and their eager calls run the kernel without these checks.

To ``torch.compile`` and ``torch.export`` the operator is one node with the input's shape (its
fake implementation): nothing of the host computation (window counts, the gamma rules, the
bisection, the cached ``1 / mu``) enters a graph, and a model with DropBlock on maps of many
sizes traces like one with ``F.dropout``. ``p`` reaches the operator as a one-element float64
CPU tensor: a layer keeps its rate in one and a :class:`structdrop.nn.DropRateSchedule` changes it
in place, so a new rate does not recompile. A forward pass hands the operator a copy of it (in
traced code the operator ``structdrop::rate_copy``, which the compiler neither removes nor moves
to the backward pass, as it may a clone), so that the backward pass uses the rate of its forward
pass even when the layer's rate changes in between (a schedule stepped between the two).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ... import _validation as check
from .._masking import zero_output
from .._tracing import check_traceable_generator
from .dense import drop_block_dense
from .options import BOUNDARIES, GAMMA_RULES, METHODS, SCALES, DropBlockOptions
from .rates import geometry, inverse_keep_prob, window_gamma
from .sparse import drop_block_sparse

__all__ = ["drop_block_masked", "drop_block_op", "rate_copy_op"]

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
_LIBRARY.define("rate_copy(Tensor p) -> Tensor")

#: The window drop rules of the operator: the layers' rules, or ``"value"`` (``gamma_value``).
OPERATOR_GAMMA_RULES: tuple[str, ...] = (*GAMMA_RULES, "value")


def _check_arguments(
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
) -> None:
    """Everything of a call but the value of ``p`` (see the module docstring): the kernel and
    the fake implementation refuse what they cannot do, as the options of a layer would be."""
    check.check_feature_maps(input, "structdrop::drop_block")
    check.check_cpu_scalar(seed, "seed", torch.int64, zero_dim=True)
    check.check_cpu_scalar(p, "p", torch.float64)
    check.check_block_sizes(block_size, input.ndim - 2)
    check.check_choice(boundary, "boundary", BOUNDARIES)
    check.check_choice(gamma_rule, "gamma_rule", OPERATOR_GAMMA_RULES)
    if gamma_rule == "value":
        check.check_probability(gamma_value, "gamma_value")
    check.check_choice(scale, "scale", SCALES)
    check.check_nonnegative(eps, "eps")
    check.check_choice(method, "method", METHODS)


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


def _checked_drop_block(input: Tensor, seed: Tensor, p: Tensor, *options: Any) -> Tensor:
    """The operator's kernel: the arguments checked, then :func:`_drop_block`."""
    _check_arguments(input, seed, p, *options)
    check.check_drop_rate(float(p), "p")
    return _drop_block(input, seed, p, *options)


def _output_like(input: Tensor, seed: Tensor, p: Tensor, *options: Any) -> Tensor:
    """The fake implementation: the arguments checked (all but the value of ``p``); the output
    has the input's shape, dtype, device and strides (``torch.empty_like``, as the kernel's)."""
    _check_arguments(input, seed, p, *options)
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


_LIBRARY.impl("drop_block", _checked_drop_block, "CompositeExplicitAutograd")
torch.library.register_fake("structdrop::drop_block", _output_like, lib=_LIBRARY)
torch.library.register_autograd(
    "structdrop::drop_block",
    _same_mask_on_the_gradient,
    setup_context=_keep_seed,
    lib=_LIBRARY,
)
#: The operator, ``torch.ops.structdrop.drop_block``.
drop_block_op = torch.ops.structdrop.drop_block


def _rate_copy(p: Tensor) -> Tensor:
    return p.clone()


def _rate_copy_like(p: Tensor) -> Tensor:
    return torch.empty_like(p)


_LIBRARY.impl("rate_copy", _rate_copy, "CompositeExplicitAutograd")
torch.library.register_fake("structdrop::rate_copy", _rate_copy_like, lib=_LIBRARY)
#: ``torch.ops.structdrop.rate_copy``: a copy of a layer's rate for one call of the operator, in
#: traced code. A clone would not do: the compiler removes a clone of a graph input as a no-op
#: (or recomputes it in the backward graph), and the backward would read the layer's tensor.
rate_copy_op = torch.ops.structdrop.rate_copy


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
    ``input * 0``). The operator gets a copy of the tensor, so that the backward pass uses the
    rate of this call even if the tensor changes before it."""
    check_feature_maps(input, options)
    if not training:
        return input
    compiling = torch.compiler.is_compiling()
    if isinstance(p, Tensor):
        rate = p
        value = None if compiling else float(p)
    else:
        # ones * p, not a factory taking p: Dynamo keeps a changing p symbolic in arithmetic
        # with a tensor, while a factory function would specialize it (a recompile per p)
        rate, value = torch.ones(1, dtype=torch.float64, device="cpu") * p, p
    if value == 0.0:
        return input
    if value == 1.0:
        return zero_output(input, options.inplace)
    check_traceable_generator(generator)
    block = options.blocks(input.ndim - 2)
    if input.is_meta:  # shape propagation: no draw
        seed = torch.zeros((), dtype=torch.int64, device="cpu")
    elif generator is None:  # (a generator=None keyword breaks symbolic batch sizes)
        seed = torch.randint(SEED_BOUND, (), dtype=torch.int64, device="cpu")
    else:
        seed = torch.randint(SEED_BOUND, (), generator=generator, device=generator.device).cpu()
    rule, gamma = (
        (options.gamma, 0.0) if isinstance(options.gamma, str) else ("value", options.gamma)
    )
    # traced code (torch.compile, torch.export) and meta tensors see the operator (its fake
    # implementation gives the shape); eager calls run its kernel
    traced = compiling or input.is_meta
    apply = drop_block_op if traced else _SameMask.apply
    if isinstance(p, Tensor):  # the caller's (a layer's rate), which may change before backward
        rate = rate_copy_op(p) if traced else p.clone()
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
