"""Structured dropout as pure functions on tensors (import as ``structdrop.nn.functional``).

Every function here is exact in the sense of the paper: the masks follow the law of a
:mod:`structdrop.schemes` scheme, and the output is scaled so that ``E[output] = input``
(Thm 3.1, eq. 13: ``diag(mu)^-1 diag(z)``). ``training=False`` and a drop rate of 0 return the
input itself. Randomness comes from ``generator`` (a ``torch.Generator`` on the input's device)
or, when it is None, from torch's default generator; masks are made on the input's device.

Every function traces under ``torch.compile(fullgraph=True)`` and ``torch.export`` and runs on
accelerators without a host sync (see ``_tracing.py``, and ``dropblock/op.py`` for DropBlock),
for every built-in mask law; a law defined elsewhere is sampled by its own NumPy sampler, which
breaks the graph.

Masks on units (:func:`structured_dropout`, :func:`block_dropout`, the sliding DropBlock of
:func:`drop_block`) and masks on weights (:func:`dropconnect_linear`) are separate: a law whose
masks fall on the entries of a weight matrix (``scheme.acts_on == "weights"``, DropConnect) is
applied by :func:`dropconnect_linear`, not by :func:`structured_dropout`.

References:
    Pal, Lane, Vidal, Haeffele. On the Regularization Properties of Structured Dropout. CVPR 2020.
    Ghiasi, Lin, Le. DropBlock: A regularization method for convolutional networks. NeurIPS 2018.
    Wan, Zeiler, Zhang, LeCun, Fergus. Regularization of neural networks using DropConnect. 2013.
"""

from __future__ import annotations

import torch
import torch.nn.functional as torch_functional

from .. import _validation as check
from ..schemes import Scheme, check_scheme
from ._dropconnect import PerSampleDropConnect, PerSampleDropConnectKept
from ._masking import work_dtype, zero_output
from ._masks import draw_masks, is_identity, keep_mask, mean_tensor, sample_masks, width
from ._tracing import check_traceable_generator, fx_node, is_compiling, static_sizes
from .dropblock import (
    drop_block,
    drop_block1d,
    drop_block2d,
    drop_block3d,
    drop_block_keep_prob,
    window_drop_prob,
)

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
        scheme: the mask law on the d units (``scheme.acts_on == "units"``); every ``mu_i``
            must be nonzero.
        training: apply the masks; when False the input is returned.
        generator: a ``torch.Generator`` on the input's device, or None.
        inplace: multiply the input in place.

    Returns:
        A tensor of the input's shape, dtype and device (the input itself when nothing drops).

    Raises:
        ValueError: the masks of ``scheme`` fall on weights (DropConnect: use
            :func:`dropconnect_linear`), or ``d`` does not suit ``scheme``.
    """
    if isinstance(input, torch.fx.Proxy):
        options = {"training": training, "generator": generator, "inplace": inplace}
        return fx_node(structured_dropout, input, scheme, **options)
    scheme = check_scheme(scheme)
    check.check_law_on_units(scheme, "structured_dropout")
    generator = check.check_generator(generator)
    return masked_units(input, scheme, training, generator, inplace)


def masked_units(
    input: torch.Tensor,
    scheme: Scheme,
    training: bool,
    generator: torch.Generator | None,
    inplace: bool,
) -> torch.Tensor:
    """:func:`structured_dropout` with the law and the generator already validated (a layer
    validates them once): only the input is checked."""
    input = check.check_float_tensor(input, "input")
    check.check_units_axis(input)
    if not training or is_identity(scheme):
        return input
    check_traceable_generator(generator)
    d = width(scheme, static_sizes(input.shape[-1:])[0])  # a plain int: it keys the cached mean
    work = work_dtype(input.dtype)
    mu = mean_tensor(scheme, d, input.device, work)
    shape = tuple(input.shape[:-1])
    z = draw_masks(scheme, shape, d, input.device, work, generator)
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
        return fx_node(block_dropout, input, p, block_size, **options)
    p = check.check_drop_rate(p)
    r = check.check_block_size(block_size)
    dim = check.check_integer(dim, "dim")
    generator = check.check_generator(generator)
    return masked_blocks(input, p, r, dim, training, bool(inplace), generator)


def masked_blocks(
    input: torch.Tensor,
    p: float,
    r: int,
    dim: int,
    training: bool,
    inplace: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`block_dropout` with its options already validated (a layer validates them
    once): only the input is checked against them."""
    input = check.check_float_tensor(input, "input")
    dim = check.check_dim(dim, input.ndim)
    check.check_block_divides_axis(r, input, dim)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return zero_output(input, inplace)
    check_traceable_generator(generator)
    return _block_masked(input, p, r, dim, inplace, generator)


def _block_masked(
    input: torch.Tensor,
    p: float,
    r: int,
    dim: int,
    inplace: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`block_dropout` for ``0 < p < 1`` (validated arguments)."""
    keep = 1.0 - p
    shape = tuple(input.shape)
    d = shape[dim]
    blocks = (*shape[:dim], d // r, r, *shape[dim + 1 :])
    mask_shape = (*shape[:dim], d // r, 1, *shape[dim + 1 :])
    mask = keep_mask(
        mask_shape, keep, dtype=input.dtype, device=input.device, generator=generator
    ).div_(keep)
    if inplace:
        if input.is_contiguous():
            input.view(blocks).mul_(mask)
        else:
            input.copy_((input.reshape(blocks) * mask).reshape(shape))
        return input
    return (input.reshape(blocks) * mask).reshape(shape)


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
    diagonal (Thm 4.1 and Cor. 4.2 corrected in docs/theory.md; see
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
        return fx_node(dropconnect_linear, input, weight, bias, p, **options)
    _, weight, bias = check.check_linear_operands(input, weight, bias)
    p = check.check_drop_rate(p)
    generator = check.check_generator(generator)
    if chunk_size is not None:
        chunk_size = check.check_positive_int(chunk_size, "chunk_size")
    return masked_linear(input, weight, bias, p, bool(per_sample), training, generator, chunk_size)


def masked_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    p: float,
    per_sample: bool,
    training: bool,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> torch.Tensor:
    """:func:`dropconnect_linear` with its weights and options already validated (a layer
    validates them once): only the input is checked against the weights."""
    input = check.check_linear_input(input, weight)
    if not training or p == 0.0:
        return torch_functional.linear(input, weight, bias)
    if input.is_meta or weight.is_meta:  # shape propagation: the output of a linear map
        return torch_functional.linear(input, weight, bias)
    if p == 1.0:  # every weight dropped, as F.dropout(weight, 1.0)
        return torch_functional.linear(input, weight * 0.0, bias)
    check_traceable_generator(generator)
    keep = 1.0 - p
    if not per_sample:
        mask = keep_mask(
            weight.shape, keep, dtype=weight.dtype, device=weight.device, generator=generator
        ).div_(keep)
        return torch_functional.linear(input, weight * mask, bias)
    return _per_sample(input, weight, bias, keep, chunk_size, generator)


def _per_sample(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    keep: float,
    chunk_size: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`dropconnect_linear` with a mask per sample, ``0 < 1 - keep < 1``."""
    out_features, in_features = weight.shape
    if chunk_size is None:
        chunk_size = max(1, DROPCONNECT_CHUNK_ELEMENTS // (out_features * in_features))
    flat = input.reshape(-1, in_features)
    if weight.device.type != "cpu" or is_compiling():
        shape = (flat.shape[0], out_features, in_features)
        masks = keep_mask(shape, keep, dtype=torch.bool, device=weight.device, generator=generator)
        output = PerSampleDropConnectKept.apply(flat, weight, bias, keep, chunk_size, masks)
    else:
        # Masks are regenerated in the backward pass from a generator of their own, seeded
        # once per call from ``generator`` (or torch's default generator).
        seed_device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=seed_device))
        output = PerSampleDropConnect.apply(flat, weight, bias, keep, chunk_size, seed)
    return output.reshape(*input.shape[:-1], out_features)
