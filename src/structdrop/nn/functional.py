"""Structured dropout as pure functions on tensors (import as ``structdrop.nn.functional``).

Every function here is exact in the sense of the paper: the masks follow the law of a
:mod:`structdrop.schemes` scheme, and the output is scaled so that ``E[output] = input``
(Thm 3.1, eq. 13: ``diag(mu)^-1 diag(z)``). ``training=False`` and a drop rate of 0 return the
input itself. Randomness comes from ``generator`` (a ``torch.Generator`` on the input's device)
or, when it is None, from torch's default generator; masks are made on the input's device.

Every function traces under ``torch.compile(fullgraph=True)`` and ``torch.export`` and runs on
accelerators without a host sync (see ``_tracing.py``), for every built-in mask law; a law
defined elsewhere is sampled by its own NumPy sampler, which breaks the graph.

References:
    Pal, Lane, Vidal, Haeffele. On the Regularization Properties of Structured Dropout. CVPR 2020.
    Ghiasi, Lin, Le. DropBlock: A regularization method for convolutional networks. NeurIPS 2018.
    Wan, Zeiler, Zhang, LeCun, Fergus. Regularization of neural networks using DropConnect. 2013.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as torch_functional

from .. import _validation as check
from ..schemes import (
    Bernoulli,
    Discrete,
    DropConnect,
    GridBlock,
    Scheme,
    SlidingBlock,
    check_scheme,
    window_incidence,
)
from ._dropblock import (
    check_drop_rate,
    drop_block,
    drop_block1d,
    drop_block2d,
    drop_block3d,
    drop_block_keep_prob,
    window_drop_prob,
)
from ._tracing import check_traceable_generator, host_constant, is_compiling, static_sizes

__all__ = [
    "block_dropout",
    "drop_block",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "drop_block_keep_prob",
    "dropconnect_linear",
    "sample_masks",
    "structured_dropout",
    "window_drop_prob",
]

#: Default bound on the number of mask entries drawn at once by per-sample DropConnect.
DROPCONNECT_CHUNK_ELEMENTS = 2**22


# --------------------------------------------------------------------------------------------
# Private checks (specific to tensors; the shared ones live in structdrop._validation)
# --------------------------------------------------------------------------------------------


def _check_dim(dim: Any, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an integer, got {dim!r}")
    dim = int(dim)
    if ndim == 0 or not -ndim <= dim < ndim:
        raise ValueError(
            f"dim must be in [-{ndim}, {ndim}) for an input with {ndim} dimensions, got {dim}"
        )
    return dim % ndim


def _fx_call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Record ``function`` as one ``torch.fx`` node (its checks and control flow need real
    tensors, so it is a leaf of the trace)."""
    proxy = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.fx.Proxy))
    return proxy.tracer.create_proxy("call_function", function, args, kwargs)


def _check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    if isinstance(batch_shape, numbers.Integral) and not isinstance(batch_shape, bool):
        batch_shape = (batch_shape,)
    if (
        not isinstance(batch_shape, Sequence)
        or isinstance(batch_shape, str)
        or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in batch_shape)
    ):
        raise TypeError(f"batch_shape must be a tuple of integers, got {batch_shape!r}")
    shape = tuple(int(n) for n in batch_shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"batch_shape must hold sizes >= 0, got {shape}")
    return shape


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def _keep_mask(
    shape: Sequence[int],
    keep_prob: float,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """iid Ber(``keep_prob``) entries (0 or 1) of the given shape: the primitive every
    independent mask here is drawn with. On the meta device: an uninitialized meta tensor (shape
    propagation; no generator is touched)."""
    if torch.device(device).type == "meta":
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    if is_compiling():
        # uniforms below keep_prob: a symbolic keep_prob (a layer's p changed under
        # torch.compile) stays symbolic here, where bernoulli_ would specialize it
        uniforms = torch.rand(tuple(shape), **_draw_options(dtype, device, generator))
        return (uniforms < keep_prob).to(dtype)
    if dtype == torch.bool:  # bernoulli_ into bytes, read as booleans (no copy)
        draws = torch.empty(tuple(shape), dtype=torch.uint8, device=device)
        return draws.bernoulli_(keep_prob, generator=generator).view(torch.bool)
    return torch.empty(tuple(shape), dtype=dtype, device=device).bernoulli_(
        keep_prob, generator=generator
    )


@host_constant
def _incidence(d: int, block_size: int, boundary: str, device: torch.device) -> torch.Tensor:
    """The dense (windows x units) 0/1 window incidence of a sliding block law, float32
    (cached per device; trace-safe)."""
    return _incidence_cached(d, block_size, boundary, device)


def _draw_options(
    dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> dict[str, Any]:
    """Keywords of ``torch.rand`` for uniforms compared with a probability: float64 for float64
    masks, else float32; ``generator`` only when given (``generator=None`` makes symbolic
    sizes concrete)."""
    options: dict[str, Any] = {"dtype": torch.float64 if dtype == torch.float64 else torch.float32}
    options["device"] = device
    if generator is not None:
        options["generator"] = generator
    return options


@host_constant
def _window_count(d: int, block_size: int, boundary: str) -> int:
    """The number of candidate windows of a sliding block law (rows of its incidence)."""
    return int(_incidence_cached(d, block_size, boundary, torch.device("cpu")).shape[0])


@functools.lru_cache(maxsize=64)
def _incidence_cached(d: int, block_size: int, boundary: str, device: torch.device) -> torch.Tensor:
    dense = window_incidence(d, block_size, boundary).toarray().astype(np.float32)
    return torch.from_numpy(dense).to(device)


@host_constant
def _is_identity(scheme: Scheme) -> bool:
    """Whether every mask of ``scheme`` equals its mean (then ``z / mu = 1``)."""
    if isinstance(scheme, SlidingBlock):
        return scheme.gamma == 0.0
    if isinstance(scheme, Bernoulli | DropConnect | GridBlock):
        return scheme.p == 0.0
    if isinstance(scheme, Discrete):
        return bool(np.all(scheme.masks == scheme.masks[0]))
    return False


def sample_masks(
    scheme: Scheme,
    batch_shape: int | Sequence[int],
    d: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Independent masks ``z`` of a scheme, drawn with torch on ``device``.

    The law is exactly ``scheme``'s (the one its ``mean`` and ``covariance`` describe):

    * ``Bernoulli(p)`` and ``DropConnect(p)``: iid Ber(1 - p) entries.
    * ``GridBlock(p, r)``: one Ber(1 - p) variable per block of r consecutive units,
      ``z = w kron 1_r`` (Lemma 2.1, eq. 3 corrected as in NOTES.md).
    * ``SlidingBlock(p, r, boundary, gamma)``: every candidate window (see
      :func:`structdrop.schemes.window_incidence`) is dropped with probability ``gamma``; a unit is
      kept iff no dropped window covers it.
    * ``Discrete(masks, probs)``: row j of ``masks`` with probability ``probs[j]``.

    Any other :class:`~structdrop.Scheme` is sampled by its own ``sample`` method, seeded from
    ``generator``.

    Args:
        scheme: the mask law.
        batch_shape: the leading shape; one independent mask per index.
        d: the number of units.
        device: where the masks are made (the generator's device must match).
        dtype: the floating dtype of the result.
        generator: a ``torch.Generator`` on ``device``, or None for torch's default one.

    Returns:
        A tensor of shape ``(*batch_shape, d)`` (uninitialized on the meta device).
    """
    scheme = check_scheme(scheme)
    shape = _check_batch_shape(batch_shape)
    d = check.check_positive_int(d, "d")
    generator = check.check_generator(generator)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    _check_width(scheme, d)  # block divisibility, Discrete's width
    if device.type == "meta":  # shape propagation: no values, no random draws
        return torch.empty((*shape, d), dtype=dtype, device=device)
    n = math.prod(shape)

    if isinstance(scheme, Bernoulli | DropConnect):
        return _keep_mask(
            (*shape, d), scheme.keep_prob, dtype=dtype, device=device, generator=generator
        )
    if isinstance(scheme, GridBlock):
        r = scheme.block_size
        kept = _keep_mask(
            (*shape, d // r, 1), scheme.keep_prob, dtype=dtype, device=device, generator=generator
        )
        return kept.expand(*shape, d // r, r).reshape(*shape, d)
    if isinstance(scheme, SlidingBlock):
        incidence = _incidence(d, scheme.block_size, scheme.boundary, device)
        drops = _keep_mask(
            (n, _window_count(d, scheme.block_size, scheme.boundary)),
            scheme.gamma,
            dtype=torch.float32,
            device=device,
            generator=generator,
        )
        hits = drops @ incidence  # counts <= windows, exact in float32
        return (hits == 0).to(dtype).reshape(*shape, d)
    if isinstance(scheme, Discrete):
        masks = _discrete_masks(scheme, device, dtype)
        if n == 0:
            return masks.new_empty((*shape, d))
        return masks[_discrete_draws(scheme, n, device, generator)].reshape(*shape, d)
    # A scheme defined elsewhere: its own NumPy sampler, seeded from the torch generator.
    return _sample_elsewhere(scheme, shape, d, device, dtype, generator)


@torch.compiler.disable
def _sample_elsewhere(
    scheme: Scheme,
    shape: tuple[int, ...],
    d: int,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Masks of a law defined elsewhere, by its NumPy sampler (eager: a graph break)."""
    n = math.prod(shape)
    if n == 0:
        return torch.empty((*shape, d), dtype=dtype, device=device)
    seed_device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=seed_device))
    masks = np.asarray(scheme.sample(n, d, seed), dtype=np.float64)
    return torch.as_tensor(masks, dtype=dtype, device=device).reshape(*shape, d)


def _discrete_draws(
    scheme: Discrete, n: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """``n`` indices of a Discrete law's masks, by inversion of its cumulative probabilities:
    ``index = #{j : cdf_j <= U}`` for ``U`` uniform in [0, 1) (float64 where the device has
    it). No host sync, unlike ``torch.multinomial`` on some devices."""
    cdf = _discrete_cdf(scheme, device)
    uniforms = torch.rand(n, **_draw_options(cdf.dtype, device, generator))  # cdf's dtype
    index = torch.searchsorted(cdf, uniforms, right=True)
    return index.clamp_max_(cdf.numel() - 1)  # U >= cdf[-1] only by rounding of the sum


@host_constant
def _check_width(scheme: Scheme, d: int) -> bool:
    """Validate ``d`` against the scheme (trace-safe: Dynamo calls it at trace time)."""
    _mean(scheme, d)
    return True


@functools.lru_cache(maxsize=64)
def _mean(scheme: Scheme, d: int) -> np.ndarray:
    mu = np.asarray(scheme.mean(d), dtype=np.float64)
    mu.setflags(write=False)
    return mu


@host_constant
def _mean_tensor(scheme: Scheme, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``mu`` as a tensor, made once per scheme, width, device and dtype (not per forward;
    trace-safe)."""
    return _mean_tensor_cached(scheme, d, device, dtype)


@functools.lru_cache(maxsize=64)
def _mean_tensor_cached(
    scheme: Scheme, d: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    return torch.from_numpy(_mean(scheme, d).copy()).to(device=device, dtype=dtype)


@host_constant
def _discrete_masks(scheme: Discrete, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A Discrete law's masks on ``device``, made once (not per draw; trace-safe)."""
    return _discrete_masks_cached(scheme, device, dtype)


@functools.lru_cache(maxsize=64)
def _discrete_masks_cached(
    scheme: Discrete, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    return torch.from_numpy(scheme.masks.copy()).to(device=device, dtype=dtype)


@host_constant
def _discrete_cdf(scheme: Discrete, device: torch.device) -> torch.Tensor:
    """A Discrete law's cumulative probabilities on ``device`` (trace-safe)."""
    return _discrete_cdf_cached(scheme, device)


@functools.lru_cache(maxsize=64)
def _discrete_cdf_cached(scheme: Discrete, device: torch.device) -> torch.Tensor:
    dtype = torch.float32 if device.type == "mps" else torch.float64
    return torch.from_numpy(np.cumsum(scheme.probs)).to(device=device, dtype=dtype)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Layers as functions
# --------------------------------------------------------------------------------------------


def structured_dropout(
    input: torch.Tensor,
    scheme: Scheme,
    training: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Any structdrop scheme on the last axis, scaled by the inverse mean (Thm 3.1, eq. 13).

    ``output = input * z / mu`` with one mask ``z`` of ``scheme`` per index of the leading axes
    and ``mu = scheme.mean(d)``, so ``E[output] = input`` exactly. Training a network whose last
    layer ``U`` reads these features ``G`` minimizes, in expectation, the fit plus
    ``<Cbar, (U^T U) * (G G^T)>`` (eq. 14-15; see :class:`structdrop.nn.DropoutPenalty`).

    Args:
        input: (..., d) floating tensor.
        scheme: the mask law on the d units; every ``mu_i`` must be nonzero.
        training: apply the masks; when False the input is returned.
        generator: a ``torch.Generator`` on the input's device, or None.
        inplace: multiply the input in place.

    Returns:
        A tensor of the input's shape, dtype and device (the input itself when nothing drops).
    """
    if isinstance(input, torch.fx.Proxy):
        options = {"training": training, "generator": generator, "inplace": inplace}
        return _fx_call(structured_dropout, (input, scheme), options)
    input = check.check_float_tensor(input, "input")
    scheme = check_scheme(scheme)
    generator = check.check_generator(generator)
    if input.ndim == 0:
        raise ValueError("input must have at least one dimension (the units), got a 0-d tensor")
    if not training or _is_identity(scheme):
        return input
    check_traceable_generator(generator)
    d = static_sizes(input.shape[-1:])[0]  # the width keys the cached mean: a plain int
    work = _work_dtype(input.dtype)
    mu = _mean_tensor(scheme, d, input.device, work)
    z = sample_masks(
        scheme, tuple(input.shape[:-1]), d, device=input.device, dtype=work, generator=generator
    )
    scale = (z / mu).to(input.dtype)
    if inplace:
        return input.mul_(scale)
    return input * scale


def block_dropout(
    input: torch.Tensor,
    p: float,
    block_size: int,
    dim: int = -1,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The paper's grid DropBlock on one feature axis (Lemma 2.1; Algorithm 1, DropBlockSample).

    The ``d`` units along ``dim`` are cut into ``d / r`` blocks of ``r = block_size`` consecutive
    units, and each block is kept whole with probability ``1 - p`` and scaled by ``1 / (1 - p)``:
    the law of :class:`structdrop.GridBlock`, whose characteristic matrix is
    ``p / (1 - p) * blockdiag(1_r 1_r^T)`` (Lemma 2.1, eq. 5). Masks are independent across every
    index of the other axes (per sample). One number is drawn per block: the mask has shape
    ``(..., d / r, 1, ...)`` and is broadcast over each block, never materialized at full size.

    Args:
        input: floating tensor.
        p: drop probability of each block, in [0, 1]; 1 gives zeros (as ``F.dropout``).
        block_size: ``r`` >= 1, which must divide ``input.shape[dim]``.
        dim: the feature axis.
        training: apply the masks; when False the input is returned.
        inplace: multiply the input in place.
        generator: a ``torch.Generator`` on the input's device, or None.

    Returns:
        A tensor of the input's shape, dtype and device (the input itself when nothing drops).
    """
    if isinstance(input, torch.fx.Proxy):
        options = {"dim": dim, "training": training, "inplace": inplace, "generator": generator}
        return _fx_call(block_dropout, (input, p, block_size), options)
    input = check.check_float_tensor(input, "input")
    p = check_drop_rate(p)
    r = check.check_block_size(block_size)
    dim = _check_dim(dim, input.ndim)
    generator = check.check_generator(generator)
    d = input.shape[dim]
    if d % r:
        raise ValueError(
            f"block_size must divide input.shape[dim], got block_size={r} and "
            f"input.shape[{dim}]={d}"
        )
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input.mul_(0.0) if inplace else input * 0.0
    check_traceable_generator(generator)
    keep = 1.0 - p
    shape = tuple(input.shape)
    blocks = (*shape[:dim], d // r, r, *shape[dim + 1 :])
    mask_shape = (*shape[:dim], d // r, 1, *shape[dim + 1 :])
    mask = _keep_mask(
        mask_shape, keep, dtype=input.dtype, device=input.device, generator=generator
    ).div_(keep)
    if inplace:
        if input.is_contiguous():
            input.view(blocks).mul_(mask)
        else:
            input.copy_((input.reshape(blocks) * mask).reshape(shape))
        return input
    return (input.reshape(blocks) * mask).reshape(shape)


def _check_linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    input = check.check_float_tensor(input, "input")
    weight = check.check_float_tensor(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D (out, in) matrix, got shape {tuple(weight.shape)}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input's last dimension must equal in_features={weight.shape[1]}, "
            f"got input of shape {tuple(input.shape)}"
        )
    if bias is not None:
        bias = check.check_float_tensor(bias, "bias")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return input, weight, bias


def dropconnect_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    p: float,
    per_sample: bool = False,
    training: bool = True,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """A linear map with DropConnect on its weights (Wan et al.; the paper's eq. 19).

    ``output = input @ (M * weight / (1 - p))^T + bias`` with ``M`` iid Ber(1 - p) of the
    weight's shape, so ``E[output] = input @ weight^T + bias``. With masks on the first matrix
    ``V`` of ``U V^T X`` the induced regularizer is
    ``p/(1-p) * sum_k ||u_k||^2 sum_j V_jk^2 ||x_j||^2`` -- not Dropout's unless ``X X^T`` is
    diagonal (Thm 4.1 and Cor. 4.2 corrected in NOTES.md; see
    :func:`structdrop.linear_penalty`); on the last matrix it is exactly Dropout's.

    ``per_sample=False`` draws one mask per call, shared by the batch. ``per_sample=True`` gives
    every sample (index of the leading axes) its own mask, as in eq. 19, computed in chunks of
    ``chunk_size`` samples; the result is exact (no approximation). CPU eager calls regenerate
    the masks in the backward pass from a seed, so memory stays at ``O(chunk_size * out * in)``
    in both passes. On accelerators and under ``torch.compile`` the masks are drawn from the
    default generator and kept for the backward pass as booleans (``N * out * in`` bytes), which
    needs no host sync and replays correctly in a CUDA graph.

    Args:
        input: (..., in) floating tensor.
        weight: (out, in) weights.
        bias: (out,) bias or None.
        p: drop probability of each weight, in [0, 1]; 1 drops every weight (output = bias).
        per_sample: one mask per sample instead of one per call.
        training: apply the masks; when False this is ``F.linear(input, weight, bias)``.
        generator: a ``torch.Generator`` on the weight's device, or None.
        chunk_size: samples per chunk for ``per_sample``; by default the largest with
            ``chunk_size * out * in <= 2**22``.

    Returns:
        A (..., out) tensor.
    """
    if any(isinstance(a, torch.fx.Proxy) for a in (input, weight, bias)):
        options = {
            "per_sample": per_sample,
            "training": training,
            "generator": generator,
            "chunk_size": chunk_size,
        }
        return _fx_call(dropconnect_linear, (input, weight, bias, p), options)
    input, weight, bias = _check_linear(input, weight, bias)
    p = check_drop_rate(p)
    generator = check.check_generator(generator)
    if chunk_size is not None:
        chunk_size = check.check_positive_int(chunk_size, "chunk_size")
    if not training or p == 0.0:
        return torch_functional.linear(input, weight, bias)
    if input.is_meta or weight.is_meta:  # shape propagation: the output of a linear map
        return torch_functional.linear(input, weight, bias)
    if p == 1.0:  # every weight dropped, as F.dropout(weight, 1.0)
        return torch_functional.linear(input, weight * 0.0, bias)
    check_traceable_generator(generator)
    keep = 1.0 - p
    if not per_sample:
        mask = _keep_mask(
            weight.shape, keep, dtype=weight.dtype, device=weight.device, generator=generator
        ).div_(keep)
        return torch_functional.linear(input, weight * mask, bias)
    out_features, in_features = weight.shape
    if chunk_size is None:
        chunk_size = max(1, DROPCONNECT_CHUNK_ELEMENTS // (out_features * in_features))
    flat = input.reshape(-1, in_features)
    if weight.device.type != "cpu" or is_compiling():
        shape = (flat.shape[0], out_features, in_features)
        masks = _keep_mask(shape, keep, dtype=torch.bool, device=weight.device, generator=generator)
        output = _PerSampleDropConnectKept.apply(flat, weight, bias, keep, chunk_size, masks)
    else:
        # Masks are regenerated in the backward pass from a generator of their own, seeded
        # once per call from ``generator`` (or torch's default generator).
        seed_device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=seed_device))
        output = _PerSampleDropConnect.apply(flat, weight, bias, keep, chunk_size, seed)
    return output.reshape(*input.shape[:-1], out_features)


def _chunk_masks(
    n: int, chunk_size: int, weight: torch.Tensor, keep: float, seed: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The masks of ``n`` samples, chunk by chunk: (start, stop, (stop-start, out, in) masks)."""
    generator = torch.Generator(device=weight.device)
    generator.manual_seed(seed)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        mask = _keep_mask(
            (stop - start, *weight.shape),
            keep,
            dtype=weight.dtype,
            device=weight.device,
            generator=generator,
        )
        yield start, stop, mask


class _PerSampleDropConnect(torch.autograd.Function):
    """``y_n = (M_n * W / keep) x_n + b`` with a mask per sample, in chunks of bounded memory,
    the masks regenerated from ``seed`` in the backward pass (CPU eager)."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        keep: float,
        chunk_size: int,
        seed: int,
    ) -> torch.Tensor:
        n = input.shape[0]
        output = input.new_empty((n, weight.shape[0]))
        scaled = weight / keep
        for start, stop, mask in _chunk_masks(n, chunk_size, weight, keep, seed):
            # (c, out, in) @ (c, in, 1): each sample its own masked weights.
            output[start:stop] = torch.bmm(
                mask.mul_(scaled), input[start:stop].unsqueeze(-1)
            ).squeeze(-1)
        if bias is not None:
            output += bias
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        ctx.keep, ctx.chunk_size, ctx.seed = keep, chunk_size, seed
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        keep = ctx.keep
        n = input.shape[0]
        grad_input = input.new_empty(input.shape) if need_input else None
        # Sums over samples run in float32 (float64 stays float64) for fp16/bf16 weights.
        accumulate = _work_dtype(weight.dtype)
        grad_weight = torch.zeros_like(weight, dtype=accumulate) if need_weight else None
        if need_input or need_weight:
            scaled = weight / keep
            for start, stop, mask in _chunk_masks(n, ctx.chunk_size, weight, keep, ctx.seed):
                g = grad_output[start:stop]
                if need_input:
                    grad_input[start:stop] = torch.bmm(g.unsqueeze(1), mask * scaled).squeeze(1)
                if need_weight:
                    # sum_n M_n * (g_n x_n^T) / keep
                    outer = g.unsqueeze(-1) * input[start:stop].unsqueeze(1)
                    grad_weight += (mask * outer).sum(0, dtype=accumulate).div_(keep)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        grad_bias = None
        if ctx.has_bias and need_bias:
            grad_bias = grad_output.sum(0, dtype=accumulate).to(grad_output.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None


def _chunks(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + chunk_size)) for start in range(0, n, chunk_size)]


class _PerSampleDropConnectKept(torch.autograd.Function):
    """``y_n = (M_n * W / keep) x_n + b`` with boolean masks ``M`` drawn by the caller and kept
    for the backward pass (accelerators, ``torch.compile``): static shapes, standard random
    operators, no host read. The masked weights exist one chunk at a time."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        keep: float,
        chunk_size: int,
        masks: torch.Tensor,
    ) -> torch.Tensor:
        scaled = weight / keep
        if is_compiling():  # one product and sum that the compiler fuses (n may be symbolic)
            output = (torch.where(masks, scaled, 0.0) * input.unsqueeze(1)).sum(-1)
        else:
            pieces = [
                torch.bmm(
                    torch.where(masks[start:stop], scaled, 0.0), input[start:stop].unsqueeze(-1)
                ).squeeze(-1)
                for start, stop in _chunks(input.shape[0], chunk_size)
            ]
            output = torch.cat(pieces) if pieces else input.new_empty((0, weight.shape[0]))
        if bias is not None:
            output = output + bias
        ctx.save_for_backward(input, weight, masks)
        ctx.has_bias = bias is not None
        ctx.keep, ctx.chunk_size = keep, chunk_size
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input, weight, masks = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        scaled = weight / ctx.keep
        accumulate = _work_dtype(weight.dtype)
        chunks = [(0, None)] if is_compiling() else _chunks(input.shape[0], ctx.chunk_size)
        inputs, weights = [], []
        for start, stop in chunks:
            g, mask = grad_output[start:stop], masks[start:stop]
            if need_input:  # sum_o g_no M_noi W_oi / keep
                inputs.append((torch.where(mask, scaled, 0.0) * g.unsqueeze(-1)).sum(1))
            if need_weight:  # sum_n M_n * (g_n x_n^T) / keep
                outer = g.unsqueeze(-1) * input[start:stop].unsqueeze(1)
                weights.append(torch.where(mask, outer, 0.0).sum(0, dtype=accumulate))
        grad_input = grad_weight = grad_bias = None
        if need_input:
            grad_input = torch.cat(inputs) if inputs else torch.zeros_like(input)
        if need_weight:
            total = torch.stack(weights).sum(0) if weights else torch.zeros_like(weight)
            grad_weight = (total / ctx.keep).to(weight.dtype)
        if ctx.has_bias and need_bias:
            grad_bias = grad_output.sum(0, dtype=accumulate).to(grad_output.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None
