"""Sliding DropBlock as one operator: ``structdrop::drop_block``.

:func:`drop_block_masked` is every DropBlock's forward pass (the layers', the functions'). It
draws a seed from ``generator`` (torch's default generator when None) and multiplies ``input``
by the mask that the seed determines: unit ``i`` kept with probability
``mu_i = (1 - gamma)^{n_i}`` and scaled by ``1 / mu_i`` (docs/theory.md#sliding-dropblock), by
the sparse sampler on a CPU and the dense one elsewhere (the options' ``method``).

Traced code (``torch.compile``, ``torch.export``) and meta tensors see the operator::

    structdrop::drop_block(input, seed, p, block_size, boundary, gamma_rule, gamma_value,
                           scale, eps, shared_channels, batchwise, method) -> output

one node with the input's shape (its fake implementation): nothing of the host computation
(window counts, the gamma rules, the bisection, the cached ``1 / mu``) enters a graph, and a
model with DropBlock on maps of many sizes traces like one with ``F.dropout``. Its trailing
arguments are the layer's options (:meth:`.options.DropBlockOptions.operator_arguments`); a
direct call is checked (:meth:`~.options.DropBlockOptions.from_operator`, the input, ``seed``
a 0-d int64 CPU tensor, ``p`` a one-element float64 CPU tensor in [0, 1]), each bad argument one
ValueError or TypeError naming it. ``p`` reaches it as a tensor that traced code never reads: a
layer keeps its rate in one and a :class:`structdrop.nn.DropRateSchedule` changes it in place,
so a new rate does not recompile; a forward pass hands the operator a copy of it
(``structdrop::rate_copy``, which the compiler neither removes nor moves to the backward pass,
as it may a clone), so that the backward uses the rate of its forward. The output is
``input * mask`` with a mask that does not depend on ``input``, so the gradient is the same
operator on the gradient with the same seed: differentiable again.

Eager calls run the kernel as an ``autograd.Function`` (:class:`_SameMask`: the same numbers
without the dispatcher's custom-op wrappers). Their backward pass applies the mask of the
forward pass to the gradient: the sparse sampler's dropped windows (a few per cent of the
candidates, never an input-sized mask) are kept for it, the dense sampler's are drawn again
from the seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ... import _validation as check
from .._masking import zero_output
from .._tracing import check_traceable_generator, fx_node
from .dense import drop_block_dense
from .options import DropBlockOptions
from .rates import Draw, plan
from .sparse import drop_block_sparse, multiply

__all__ = ["drop_block_masked", "drop_block_op", "rate_copy_op"]

#: Seeds are drawn uniformly from [0, SEED_BOUND).
SEED_BOUND = 2**62


def _kernel(
    input: Tensor, seed: Tensor, p: float, options: DropBlockOptions
) -> tuple[Tensor, tuple[Draw, Tensor] | None]:
    """``input`` times the DropBlock mask of ``seed`` at drop rate ``p`` in [0, 1], and what
    the sparse sampler drew (the draw and the dropped windows' positions; None for the dense
    sampler and when nothing is drawn)."""
    if p == 0.0 or input.numel() == 0:
        return input.clone(), None
    if p == 1.0:
        return input * 0.0, None
    draw = plan(options, tuple(input.shape[2:]), p, input.device, input.dtype)
    generator = torch.Generator(device=input.device)
    generator.manual_seed(int(seed))
    method = options.method
    if method == "sparse" or (method == "auto" and input.device.type == "cpu"):
        output, positions = drop_block_sparse(input, draw, generator)
        return output, (draw, positions)
    return drop_block_dense(input, draw, generator), None


# ---------------------------------------------------------------------------------- operator
# Defined with torch.library's Library API, not ``custom_op``: the same operator to the
# compiler, without importing the compiler stack on the first call.
_LIBRARY = torch.library.Library("structdrop", "DEF")
_LIBRARY.define(
    "drop_block(Tensor input, Tensor seed, Tensor p, int[] block_size, str boundary, "
    "str gamma_rule, float gamma_value, str scale, float eps, bool shared_channels, "
    "bool batchwise, str method) -> Tensor"
)
_LIBRARY.define("rate_copy(Tensor p) -> Tensor")


def _checked_options(input: Tensor, seed: Tensor, p: Tensor, arguments: Any) -> DropBlockOptions:
    """The options of a call of the operator, every argument but the value of ``p`` checked."""
    check.check_feature_maps(input, "structdrop::drop_block")
    check.check_cpu_scalar(seed, "seed", torch.int64, zero_dim=True)
    check.check_cpu_scalar(p, "p", torch.float64)
    return DropBlockOptions.from_operator(input.ndim - 2, *arguments)


def _operator_kernel(input: Tensor, seed: Tensor, p: Tensor, *arguments: Any) -> Tensor:
    options = _checked_options(input, seed, p, arguments)
    return _kernel(input, seed, check.check_drop_rate(float(p), "p"), options)[0]


def _output_like(input: Tensor, seed: Tensor, p: Tensor, *arguments: Any) -> Tensor:
    """The fake implementation: the arguments checked (all but the value of ``p``); the output
    has the input's shape, dtype, device and strides (``torch.empty_like``, as the kernel's)."""
    _checked_options(input, seed, p, arguments)
    return torch.empty_like(input)


def _keep_seed(ctx: Any, inputs: tuple[Any, ...], output: Tensor | None) -> None:
    ctx.save_for_backward(inputs[1], inputs[2])
    ctx.arguments = inputs[3:]


def _same_mask_on_the_gradient(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    """``d(input * mask) / d(input) = mask``: the operator on ``grad`` with the same seed."""
    seed, p = ctx.saved_tensors
    return (drop_block_op(grad, seed, p, *ctx.arguments), None, None) + (None,) * len(ctx.arguments)


_LIBRARY.impl("drop_block", _operator_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("structdrop::drop_block", _output_like, lib=_LIBRARY)
torch.library.register_autograd(
    "structdrop::drop_block",
    _same_mask_on_the_gradient,
    setup_context=_keep_seed,
    lib=_LIBRARY,
)
#: The operator, ``torch.ops.structdrop.drop_block``.
drop_block_op = torch.ops.structdrop.drop_block

_LIBRARY.impl("rate_copy", lambda p: p.clone(), "CompositeExplicitAutograd")
torch.library.register_fake("structdrop::rate_copy", torch.empty_like, lib=_LIBRARY)
#: ``torch.ops.structdrop.rate_copy``: a copy of a layer's rate for one call of the operator, in
#: traced code. A clone would not do: the compiler removes a clone of a graph input as a no-op
#: (or recomputes it in the backward graph), and the backward would read the layer's tensor.
rate_copy_op = torch.ops.structdrop.rate_copy


class _SameMask(torch.autograd.Function):
    """The kernel for eager calls, with the same mask on the gradient: the sparse sampler's
    dropped windows are kept for the backward pass; the dense sampler's (and a backward that
    is differentiated again) draw them again from the seed."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, seed: Tensor, p: float, options: DropBlockOptions
    ) -> Tensor:
        output, ctx.kept = _kernel(input, seed, p, options)
        ctx.seed, ctx.p, ctx.options = seed, p, options
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.kept is not None and not grad.requires_grad:
            return multiply(grad, *ctx.kept), None, None, None
        return _SameMask.apply(grad, ctx.seed, ctx.p, ctx.options), None, None, None


def _refuse(input: Any, options: DropBlockOptions) -> None:
    """Raise the error of an input that is not a floating tensor ``(N, C, *spatial)`` with
    ``options.spatial_dims`` spatial axes (any number >= 1 when None)."""
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
    ``input * 0`` when ``p = 1``, else the masked input (``input``, multiplied in place, when
    ``options.inplace``).

    ``p`` is a float, or a one-element float64 CPU tensor (a layer's rate, which a schedule
    changes in place): traced code then never reads its value, so a new rate needs no
    recompilation, and ``p = 0`` or ``1`` is left to the operator (a copy of the input, or
    ``input * 0``). Under ``torch.fx`` tracing the call is one node."""
    if isinstance(input, torch.fx.Proxy):
        return fx_node(drop_block_masked, input, p, options, training, generator)
    spatial_dims = options.spatial_dims
    if (
        not isinstance(input, Tensor)
        or not input.is_floating_point()
        or input.ndim < 3
        or (spatial_dims is not None and input.ndim != spatial_dims + 2)
    ):
        _refuse(input, options)
    if not training:
        return input
    compiling = torch.compiler.is_compiling()
    value = None if compiling and isinstance(p, Tensor) else float(p)
    if value == 0.0:
        return input
    if value == 1.0:  # everything dropped, as F.dropout(input, 1.0)
        return zero_output(input, options.inplace)
    if generator is not None:  # (a call fewer on the common path)
        check_traceable_generator(generator)
    if input.is_meta:  # shape propagation: no draw
        seed = torch.zeros((), dtype=torch.int64, device="cpu")
    elif generator is not None:
        seed = torch.randint(SEED_BOUND, (), generator=generator, device=generator.device).cpu()
    elif compiling:  # (a generator=None keyword breaks symbolic batch sizes)
        seed = torch.randint(SEED_BOUND, (), dtype=torch.int64, device="cpu")
    else:
        seed = torch.randint(SEED_BOUND, (), dtype=torch.int64).cpu()
    if compiling or input.is_meta:  # the operator: one node of the graph
        if isinstance(p, Tensor):  # a layer's rate, which may change before the backward
            rate = rate_copy_op(p)
        else:
            # ones * p, not a factory taking p: Dynamo keeps a changing p symbolic in
            # arithmetic with a tensor, while a factory would specialize it (a recompile per p)
            rate = torch.ones(1, dtype=torch.float64, device="cpu") * p
        output = drop_block_op(input, seed, rate, *options.operator_arguments(input.ndim - 2))
    else:
        output = _SameMask.apply(input, seed, value, options)
    return input.copy_(output) if options.inplace else output
