"""Masks of any mask law, drawn with torch on a device: :func:`sample_masks`.

A law says how it is drawn (``scheme.sampler``, see :mod:`structdrop.schemes`): independent
blocks, dropped windows or one of finitely many masks, each drawn here with torch's random
operators on the input's device; a law defined elsewhere (``sampler`` None) is drawn by its own
NumPy ``sample``, which breaks a ``torch.compile`` graph. Constants of a law (its mean, window
incidence, finite masks) are made once per device and dtype through host constants (see
:mod:`._tracing`), so drawing needs no host sync.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import _validation as check
from ..schemes import DroppedWindows, FiniteMasks, IndependentBlocks, Scheme, check_scheme
from ._masking import exact_dtype, work_dtype
from ._tracing import eager_only, host_constant, is_compiling

__all__ = ["draw_masks", "is_identity", "keep_mask", "mean_tensor", "sample_masks", "width"]


def _draw_options(
    dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> dict[str, Any]:
    """Keywords of ``torch.rand`` for uniforms compared with a probability: float64 for float64
    masks, else float32; ``generator`` only when given (``generator=None`` makes symbolic
    sizes concrete)."""
    options: dict[str, Any] = {"dtype": work_dtype(dtype), "device": device}
    if generator is not None:
        options["generator"] = generator
    return options


def keep_mask(
    shape: Sequence[int],
    keep_prob: float,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """iid Ber(``keep_prob``) entries (0 or 1) of the given shape: the primitive every
    independent mask of the layers is drawn with. On the meta device: an uninitialized meta
    tensor (shape propagation; no generator is touched)."""
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


# ----------------------------------------------------------------------------------------------
# What a law is, asked on the host (trace-safe: Dynamo calls these at trace time)


@host_constant
def is_identity(scheme: Scheme) -> bool:
    """Whether every mask of ``scheme`` equals its mean (then ``z / mu = 1``)."""
    return bool(scheme.is_identity)


@host_constant
def width(scheme: Scheme, d: int) -> int:
    """``d`` validated for ``scheme`` (e.g. GridBlock's block size must divide it)."""
    return scheme.check_width(d)


@host_constant
def mean_tensor(scheme: Scheme, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``mu`` as a tensor, made once per scheme, width, device and dtype (not per forward;
    trace-safe; ``d`` validated)."""
    return _mean_tensor_cached(scheme, d, device, dtype)


@functools.lru_cache(maxsize=64)
def _mean_tensor_cached(
    scheme: Scheme, d: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    mu = np.asarray(scheme.mean(d), dtype=np.float64)
    return torch.from_numpy(mu).to(device=device, dtype=dtype)


@host_constant
def _incidence(scheme: Scheme, d: int, device: torch.device) -> torch.Tensor:
    """The dense (windows x units) 0/1 window incidence of a law of dropped windows, float32
    (cached per device; trace-safe)."""
    return _incidence_cached(scheme, d, device)


@functools.lru_cache(maxsize=64)
def _incidence_cached(scheme: Scheme, d: int, device: torch.device) -> torch.Tensor:
    sampler = scheme.sampler
    assert isinstance(sampler, DroppedWindows)
    dense = sampler.incidence(d).toarray().astype(np.float32)
    return torch.from_numpy(dense).to(device)


@host_constant
def _window_count(scheme: Scheme, d: int) -> int:
    """The number of candidate windows of a law of dropped windows (rows of its incidence)."""
    return int(_incidence_cached(scheme, d, torch.device("cpu")).shape[0])


@host_constant
def _finite_masks(scheme: Scheme, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A finite law's masks on ``device``, made once (not per draw; trace-safe)."""
    return _finite_masks_cached(scheme, device, dtype)


@functools.lru_cache(maxsize=64)
def _finite_masks_cached(scheme: Scheme, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    sampler = scheme.sampler
    assert isinstance(sampler, FiniteMasks)
    return torch.from_numpy(sampler.masks.copy()).to(device=device, dtype=dtype)


@host_constant
def _finite_cdf(scheme: Scheme, device: torch.device) -> torch.Tensor:
    """A finite law's cumulative probabilities on ``device`` (trace-safe)."""
    return _finite_cdf_cached(scheme, device)


@functools.lru_cache(maxsize=64)
def _finite_cdf_cached(scheme: Scheme, device: torch.device) -> torch.Tensor:
    sampler = scheme.sampler
    assert isinstance(sampler, FiniteMasks)
    cdf = np.cumsum(sampler.probs)
    return torch.from_numpy(cdf).to(device=device, dtype=exact_dtype(device))


# ----------------------------------------------------------------------------------------------
# Drawing


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

    The law is exactly ``scheme``'s (the one its ``mean`` and ``covariance`` describe), drawn
    as ``scheme.sampler`` says:

    * independent blocks (``Bernoulli(p)``, ``DropConnect(p)``: blocks of 1; ``GridBlock(p, r)``:
      blocks of r): one Ber(1 - p) variable per block of consecutive units,
      ``z = w kron 1_r`` (Lemma 2.1, eq. 3 corrected as in docs/theory.md).
    * dropped windows (``SlidingBlock(p, r, boundary, gamma)``): every candidate window (see
      :func:`structdrop.schemes.window_incidence`) is dropped with probability ``gamma``; a
      unit is kept iff no dropped window covers it.
    * finite masks (``Discrete(masks, probs)``): row j of ``masks`` with probability
      ``probs[j]``.

    A law defined elsewhere (no sampler) is sampled by its own ``sample`` method, seeded from
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
    shape = check.check_batch_shape(batch_shape)
    d = check.check_positive_int(d, "d")
    generator = check.check_generator(generator)
    dtype = check.check_float_dtype(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    d = width(scheme, d)
    return draw_masks(scheme, shape, d, device, dtype, generator)


def draw_masks(
    scheme: Scheme,
    shape: tuple[int, ...],
    d: int,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`sample_masks` on validated arguments."""
    if device.type == "meta":  # shape propagation: no values, no random draws
        return torch.empty((*shape, d), dtype=dtype, device=device)
    sampler = scheme.sampler
    if isinstance(sampler, IndependentBlocks):
        r = sampler.block_size
        options: dict[str, Any] = {"dtype": dtype, "device": device, "generator": generator}
        if r == 1:
            return keep_mask((*shape, d), sampler.keep_prob, **options)
        kept = keep_mask((*shape, d // r, 1), sampler.keep_prob, **options)
        return kept.expand(*shape, d // r, r).reshape(*shape, d)
    n = math.prod(shape)
    if isinstance(sampler, DroppedWindows):
        windows = (n, _window_count(scheme, d))
        drops = keep_mask(
            windows, sampler.gamma, dtype=torch.float32, device=device, generator=generator
        )
        hits = drops @ _incidence(scheme, d, device)  # counts <= windows, exact in float32
        return (hits == 0).to(dtype).reshape(*shape, d)
    if isinstance(sampler, FiniteMasks):
        masks = _finite_masks(scheme, device, dtype)
        if n == 0:
            return masks.new_empty((*shape, d))
        return masks[_finite_draws(scheme, n, device, generator)].reshape(*shape, d)
    return _sample_elsewhere(scheme, shape, d, device, dtype, generator)


def _finite_draws(
    scheme: Scheme, n: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """``n`` indices of a finite law's masks, by inversion of its cumulative probabilities:
    ``index = #{j : cdf_j <= U}`` for ``U`` uniform in [0, 1) (float64 where the device has
    it). No host sync, unlike ``torch.multinomial`` on some devices."""
    cdf = _finite_cdf(scheme, device)
    uniforms = torch.rand(n, **_draw_options(cdf.dtype, device, generator))  # cdf's dtype
    index = torch.searchsorted(cdf, uniforms, right=True)
    return index.clamp_max_(cdf.numel() - 1)  # U >= cdf[-1] only by rounding of the sum


@eager_only
def _sample_elsewhere(
    scheme: Scheme,
    shape: tuple[int, ...],
    d: int,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Masks of a law defined elsewhere, by its NumPy sampler (eager: a graph break), seeded
    from the torch generator."""
    n = math.prod(shape)
    if n == 0:
        return torch.empty((*shape, d), dtype=dtype, device=device)
    seed_device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=seed_device))
    masks = np.asarray(scheme.sample(n, d, seed), dtype=np.float64)
    return torch.as_tensor(masks, dtype=dtype, device=device).reshape(*shape, d)
