"""Per-sample DropConnect as autograd functions: every sample its own mask on the weights.

``y_n = (M_n * W / keep) x_n + b`` (the paper's eq. 19) with ``M_n`` iid Ber(``keep``) of the
weight's shape. The masked weights exist one chunk of samples at a time, so memory stays
bounded; on the CPU the masks are regenerated in the backward pass from a seed, elsewhere they
are kept as booleans (static shapes, no host read, replayable in a CUDA graph).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ._masking import work_dtype
from ._masks import keep_mask
from ._tracing import is_compiling

__all__ = ["PerSampleDropConnect", "PerSampleDropConnectKept"]


def _chunk_masks(
    n: int, chunk_size: int, weight: torch.Tensor, keep: float, seed: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The masks of ``n`` samples, chunk by chunk: (start, stop, (stop-start, out, in) masks)."""
    generator = torch.Generator(device=weight.device)
    generator.manual_seed(seed)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        mask = keep_mask(
            (stop - start, *weight.shape),
            keep,
            dtype=weight.dtype,
            device=weight.device,
            generator=generator,
        )
        yield start, stop, mask


class PerSampleDropConnect(torch.autograd.Function):
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
        accumulate = work_dtype(weight.dtype)
        grad_weight = torch.zeros_like(weight, dtype=accumulate) if need_weight else None
        if need_input or need_weight:
            scaled = weight / keep
            for start, stop, mask in _chunk_masks(n, ctx.chunk_size, weight, keep, ctx.seed):
                g = grad_output[start:stop]
                if grad_input is not None:  # need_input
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


class PerSampleDropConnectKept(torch.autograd.Function):
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
        accumulate = work_dtype(weight.dtype)
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
