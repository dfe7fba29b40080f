"""Structured dropout layers: thin ``torch.nn.Module`` wrappers of :mod:`.functional`.

Conventions follow ``torch.nn.Dropout``: ``p`` is the drop probability, in [0, 1] (``p = 1``
drops everything, as ``F.dropout``), the layers act only in training mode (``model.eval()`` and
``p = 0`` return the input itself), ``inplace`` multiplies the input in place, and ``generator``
(a ``torch.Generator`` on the input's device, set at construction, as an attribute, or per call
as ``forward(input, generator=...)``) makes the masks reproducible in eager mode. Every layer
traces under ``torch.compile(fullgraph=True)`` and ``torch.export`` and runs on accelerators
without a host sync (CUDA graphs capture it after a warm-up call). Under
``torch.fx.symbolic_trace`` every layer is one ``call_module`` node (the traced graph calls the
layer, so ``train()``/``eval()`` still switch it); a layer traced on its own is one
``call_function`` node of its functional form (DropBlock's: ``dropblock.drop_block_masked``).

Each layer validates its options once: when it is made, and when one is set (a property that
checks the new value); ``forward`` checks only its input, and calls the functional form's
unchecked core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import torch
from torch import nn

from .. import _validation as check
from ..schemes import Scheme, check_scheme
from ._penalty import DropoutPenalty
from ._tracing import fx_node
from .dropblock import DropBlockOptions, drop_block_masked
from .functional import (
    block_dropout,
    dropconnect_linear,
    masked_blocks,
    masked_linear,
    masked_units,
    structured_dropout,
)

__all__ = [
    "BlockDropout",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnectLinear",
    "DropoutPenalty",
    "StructuredDropout",
]


T = TypeVar("T")


class _Option(Generic[T]):
    """An option of a layer, checked once, when it is set (at construction or later), so that
    ``forward`` trusts it: the checked value is kept in ``_<name>``, which ``forward`` reads.

    Args:
        check: returns the value checked (and normalized), or raises naming it.
        doc: what the option is.
    """

    def __init__(self, check: Callable[[Any], T], doc: str) -> None:
        self.check = check
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = f"_{name}"

    @overload
    def __get__(self, layer: None, owner: type | None = None) -> _Option[T]: ...
    @overload
    def __get__(self, layer: object, owner: type | None = None) -> T: ...
    def __get__(self, layer: object | None, owner: type | None = None) -> Any:
        return self if layer is None else getattr(layer, self.attribute)

    def __set__(self, layer: object, value: Any) -> None:
        setattr(layer, self.attribute, self.check(value))


def _generator_option(on: str) -> _Option[torch.Generator | None]:
    return _Option(check.check_generator, f"A ``torch.Generator`` on the {on}'s device, or None.")


def _unit_law(scheme: Any) -> Scheme:
    """A mask law on units (not DropConnect's, on a weight's entries)."""
    scheme = check_scheme(scheme)
    check.check_law_on_units(scheme, "StructuredDropout")
    return scheme


class BlockDropout(nn.Module):
    """The paper's grid DropBlock on one feature axis (Lemma 2.1; Algorithm 1).

    Blocks of ``block_size`` consecutive units along ``dim`` are kept whole with probability
    ``1 - p`` and scaled by ``1 / (1 - p)``, independently for every index of the other axes.
    The masks follow :class:`structdrop.GridBlock`, whose regularizer on the next layer ``U`` is
    ``p / (1 - p) * sum_blocks ||U_i G_i||_F^2`` (Lemma 2.1, eq. 4-5). See
    :func:`structdrop.nn.functional.block_dropout`.

    Args:
        p: drop probability of each block, in [0, 1] (1 gives zeros).
        block_size: units per block, which must divide the size of ``dim``.
        dim: the feature axis.
        inplace: multiply the input in place.
        generator: a ``torch.Generator`` on the input's device, or None.

    Shape:
        Input: any shape with ``input.shape[dim] % block_size == 0``. Output: the same.
    """

    p = _Option(check.check_drop_rate, "The drop probability of each block, in [0, 1].")
    block_size = _Option(check.check_block_size, "The units per block, >= 1.")
    dim = _Option(
        lambda value: check.check_integer(value, "dim"),
        "The feature axis (checked against the input's rank in ``forward``).",
    )
    generator = _generator_option("input")
    _p: float
    _block_size: int
    _dim: int
    _generator: torch.Generator | None

    def __init__(
        self,
        p: float,
        block_size: int,
        dim: int = -1,
        inplace: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.p = p
        self.block_size = block_size
        self.dim = dim
        self.inplace = bool(inplace)
        self.generator = generator

    def forward(
        self, input: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Drop blocks in training mode; return ``input`` itself in eval mode or when p = 0."""
        if isinstance(input, torch.fx.Proxy):  # one node: the layer's, or the function's
            node = fx_node(self, input, generator)
            if node is not None:
                return node
            options = {"dim": self._dim, "training": self.training, "inplace": self.inplace}
            return block_dropout(input, self._p, self._block_size, **options, generator=generator)
        generator = self._generator if generator is None else check.check_generator(generator)
        return masked_blocks(
            input, self._p, self._block_size, self._dim, self.training, self.inplace, generator
        )

    def extra_repr(self) -> str:
        text = f"p={self.p}, block_size={self.block_size}, dim={self.dim}"
        return text + (", inplace=True" if self.inplace else "")


class _DropBlockNd(nn.Module):
    """Ghiasi et al.'s sliding DropBlock, exact per unit (see ``functional.drop_block``).

    The options are validated once, into the frozen :attr:`options`
    (:class:`structdrop.nn.dropblock.DropBlockOptions`); each is also an attribute, and setting
    one validates it and replaces the spec. ``p`` is validated when set.
    """

    _spatial_dims: int = 0
    _rate: torch.Tensor  # set with p
    generator = _generator_option("input")
    _generator: torch.Generator | None

    def __init__(
        self,
        p: float,
        block_size: int | tuple[int, ...],
        inplace: bool = False,
        eps: float = 1e-6,
        *,
        boundary: str = "valid",
        gamma: str | float = "mean",
        scale: str = "expected",
        shared_channels: bool = False,
        batchwise: bool = False,
        method: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.p = p
        self.options = DropBlockOptions.make(
            block_size,
            self._spatial_dims,
            inplace=inplace,
            eps=eps,
            boundary=boundary,
            gamma=gamma,
            scale=scale,
            shared_channels=shared_channels,
            batchwise=batchwise,
            method=method,
        )
        self.generator = generator

    @property
    def p(self) -> float:
        """The drop probability, in [0, 1]. Setting it writes the layer's rate tensor in
        place, which compiled code reads: a new ``p`` does not recompile."""
        return float(self._rate)  # float64: the value set, exactly

    @p.setter
    def p(self, value: float) -> None:
        self._set_rate(check.check_drop_rate(value))

    @property
    def drop_prob(self) -> float:
        """``p`` under timm's and ``dropblock``'s name (their schedulers set it)."""
        return self.p

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self._set_rate(check.check_drop_rate(value, "drop_prob"))

    def _set_rate(self, p: float) -> None:
        if "_rate" in self.__dict__:
            self._rate.fill_(p)
        else:  # a plain attribute, not a buffer: it stays on the CPU and out of state_dict
            self._rate = torch.tensor([p], dtype=torch.float64, device="cpu")

    def forward(
        self, input: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Drop blocks in training mode; return ``input`` itself in eval mode or when p = 0."""
        if isinstance(input, torch.fx.Proxy):  # one node: the layer's, or the function's
            node = fx_node(self, input, generator)
            if node is not None:
                return node
        else:
            generator = self._generator if generator is None else check.check_generator(generator)
        return drop_block_masked(input, self._rate, self.options, self.training, generator)

    def extra_repr(self) -> str:
        options = self.options
        text = (
            f"p={self.p}, block_size={options.block_size}, boundary={options.boundary!r}, "
            f"gamma={options.gamma!r}, scale={options.scale!r}"
        )
        for flag in ("shared_channels", "batchwise", "inplace"):
            if getattr(options, flag):
                text += f", {flag}=True"
        if options.scale == "batch" and options.eps != 1e-6:
            text += f", eps={options.eps}"
        if options.method != "auto":
            text += f", method={options.method!r}"
        return text


def _option(name: str) -> property:
    """The layer attribute of option ``name``: read from the spec; set by validating a new
    spec."""

    def get(self: _DropBlockNd) -> Any:
        return getattr(self.options, name)

    def set(self: _DropBlockNd, value: Any) -> None:
        self.options = self.options.replaced(**{name: value})

    return property(get, set, doc=f"The option ``{name}`` (see :attr:`options`).")


for _name in DropBlockOptions._fields[:-1]:
    setattr(_DropBlockNd, _name, _option(_name))


_DROPBLOCK_DOC = """Ghiasi et al.'s sliding DropBlock on {kind} maps, exact per unit.

    Every candidate window of ``block_size`` (the block fits: ``boundary="valid"``, as
    torchvision; or centred on any unit and clipped: ``"clipped"``, as timm) is dropped with
    probability ``gamma``, and a unit is kept iff no dropped window covers it: its keep
    probability is exactly ``mu_i = (1 - gamma)^{{n_i}}`` with ``n_i`` the windows covering it
    (docs/theory.md#sliding-dropblock; in 1-D the law of :class:`structdrop.SlidingBlock`). See
    :func:`structdrop.nn.functional.drop_block`.

    The first four arguments are torchvision's ``DropBlock2d(p, block_size, inplace, eps)``;
    everything else is keyword-only. The options are validated here, once, into the frozen
    :attr:`options`. On a CPU only the dropped windows are drawn (sparse), eager or compiled;
    accelerators use the dense, sync-free sampler of the same law (``method``). To
    ``torch.compile`` and ``torch.export`` the layer is one operator.

    Args:
        p: drop probability, in [0, 1]; 1 gives zeros, as ``F.dropout``.
        block_size: an int or a tuple of {n} ints (any value >= 1; blocks may exceed the map).
        inplace: multiply the input in place.
        eps: added to the number of kept units by ``scale="batch"`` (torchvision's ``eps``);
            unused by the default ``scale="expected"``.
        boundary: ``"valid"`` (default) or ``"clipped"``.
        gamma: ``"mean"`` (default: the mean drop rate over the map is exactly p),
            ``"interior"`` (units away from the border drop with rate exactly p), ``"ghiasi"``
            (the published approximation), or a window drop probability in [0, 1).
        scale: ``"expected"`` (default: unit i divided by ``mu_i``, so ``E[output] = input``) or
            ``"batch"`` (by the kept fraction, as torchvision and timm).
        shared_channels: one mask per sample, shared by the channels.
        batchwise: one mask for the whole batch.
        method: ``"auto"`` (default), ``"sparse"`` or ``"dense"``.
        generator: a ``torch.Generator`` on the input's device, or None (not under
            ``torch.compile``).

    Shape:
        Input: ``{shape}``. Output: the same, in the input's memory format.
    """


class DropBlock1d(_DropBlockNd):
    __doc__ = _DROPBLOCK_DOC.format(kind="1-D", n=1, shape="(N, C, L)")
    _spatial_dims = 1


class DropBlock2d(_DropBlockNd):
    __doc__ = _DROPBLOCK_DOC.format(kind="2-D", n=2, shape="(N, C, H, W)")
    _spatial_dims = 2


class DropBlock3d(_DropBlockNd):
    __doc__ = _DROPBLOCK_DOC.format(kind="3-D", n=3, shape="(N, C, D, H, W)")
    _spatial_dims = 3


class DropConnectLinear(nn.Linear):
    """A linear layer with DropConnect on its weights (Wan et al.; the paper's eq. 19).

    In training mode ``output = input @ (M * weight / (1 - p))^T + bias`` with ``M`` iid
    Ber(1 - p) entries, so ``E[output]`` is the plain linear map. With masks on the first matrix
    ``V`` of a network ``U V^T X`` the induced regularizer is
    ``p/(1-p) * sum_k ||u_k||^2 sum_j V_jk^2 ||x_j||^2``; Thm 4.1's claim that it equals
    Dropout's holds only when ``X X^T`` is diagonal (docs/theory.md). In eval mode, or with
    p = 0, this is ``nn.Linear``. See :func:`structdrop.nn.functional.dropconnect_linear`.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        p: drop probability of each weight, in [0, 1] (1 drops every weight).
        bias: learn an additive bias.
        per_sample: every sample its own mask (exact, computed in chunks of bounded memory)
            instead of one mask per forward shared by the batch.
        chunk_size: samples per chunk for ``per_sample``; None picks
            ``2**22 // (in_features * out_features)``.
        generator: a ``torch.Generator`` on the weight's device, or None.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    p = _Option(check.check_drop_rate, "The drop probability of each weight, in [0, 1].")
    chunk_size = _Option(
        lambda value: None if value is None else check.check_positive_int(value, "chunk_size"),
        "Samples per chunk for ``per_sample``, or None.",
    )
    generator = _generator_option("weight")
    _p: float
    _chunk_size: int | None
    _generator: torch.Generator | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float,
        bias: bool = True,
        per_sample: bool = False,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_features = check.check_positive_int(in_features, "in_features")
        out_features = check.check_positive_int(out_features, "out_features")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.p = p
        self.per_sample = bool(per_sample)
        self.chunk_size = chunk_size
        self.generator = generator

    def forward(
        self, input: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The masked linear map in training mode, ``nn.Linear``'s otherwise."""
        if isinstance(input, torch.fx.Proxy):  # one node: the layer's, or the function's
            node = fx_node(self, input, generator)
            if node is not None:
                return node
            return dropconnect_linear(
                input, self.weight, self.bias, self._p, per_sample=self.per_sample,
                training=self.training, generator=generator, chunk_size=self._chunk_size,
            )  # fmt: skip
        generator = self._generator if generator is None else check.check_generator(generator)
        return masked_linear(
            input, self.weight, self.bias, self._p, self.per_sample, self.training, generator,
            self._chunk_size,
        )  # fmt: skip

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", p={self.p}"
        if self.per_sample:
            text += ", per_sample=True"
        if self.chunk_size is not None:
            text += f", chunk_size={self.chunk_size}"
        return text


class StructuredDropout(nn.Module):
    """Any structdrop mask law on the last axis, scaled by the inverse mean (Thm 3.1, eq. 13).

    ``output = input * z / mu`` with an independent mask ``z`` of ``scheme`` for every index of
    the leading axes and ``mu = scheme.mean(d)``, so ``E[output] = input``. For a last layer
    ``U`` reading these features ``G``, the expected squared loss is the fit plus
    ``<Cbar, (U^T U) * (G G^T)>`` (Thm 3.1, eq. 14-15), which :class:`DropoutPenalty` computes.

    Args:
        scheme: a mask law on units (``Bernoulli``, ``GridBlock``, ``SlidingBlock``,
            ``Discrete``, ...); every ``mu_i`` must be nonzero. DropConnect's masks fall on
            weights: use :class:`DropConnectLinear`, or ``scheme.on_units()`` for the law on
            units with the same regularizer (a ValueError says so).
        inplace: multiply the input in place.
        generator: a ``torch.Generator`` on the input's device, or None.

    Shape:
        Input: ``(..., d)``, d a width the scheme accepts. Output: the same.
    """

    scheme = _Option(_unit_law, "The mask law on the units.")
    generator = _generator_option("input")
    _scheme: Scheme
    _generator: torch.Generator | None

    def __init__(
        self,
        scheme: Scheme,
        inplace: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.scheme = scheme
        self.inplace = bool(inplace)
        self.generator = generator

    def forward(
        self, input: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Masked and rescaled features in training mode; ``input`` itself in eval mode."""
        if isinstance(input, torch.fx.Proxy):  # one node: the layer's, or the function's
            node = fx_node(self, input, generator)
            if node is not None:
                return node
            options = {"training": self.training, "inplace": self.inplace}
            return structured_dropout(input, self._scheme, **options, generator=generator)
        generator = self._generator if generator is None else check.check_generator(generator)
        return masked_units(input, self._scheme, self.training, generator, self.inplace)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}" + (", inplace=True" if self.inplace else "")
