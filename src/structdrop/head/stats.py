"""Streaming statistics of a last linear layer: what its dropout objective depends on.

For the features ``g`` (d) entering a last linear layer ``U`` (a x d) and the targets ``y``
(a; class labels are one-hot), the deterministic objective of Thm 3.1 (eq. 14-15) and the
features-space bound of Prop. 3.3 / Thm 2.7 depend on the data only through (docs/theory.md,
"Gram form")::

    G G^T (d x d),   Y G^T (a x d),   Y Y^T (a x a),   G 1 (d),   Y 1 (a),   N,

with the samples as columns of ``G`` (d x N) and ``Y`` (a x N). :class:`HeadStats` sums them
batch by batch, in float64 on the features' device: memory ``O(d^2 + a d + a^2)``, never
``O(N)``, the same numbers as the whole-batch products up to the order of the sums, and
mergeable across batches of any size and across processes (:meth:`HeadStats.merge`,
:meth:`HeadStats.all_reduce`). For class labels ``Y Y^T`` is the diagonal of the class counts,
``Y 1``: only the counts are kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _validation as check
from ..nn._masking import exact_dtype

__all__ = ["HeadStats"]


class HeadStats:
    """The sums of a head's features and targets, over every sample seen (see the module).

    Args:
        width: d, the number of features (the head's ``in_features``).
        outputs: a, the number of targets (the head's ``out_features``; the number of classes
            for labels).
        device: where the sums are kept (default: the device of the first batch's features).

    Attributes:
        gram: ``G G^T`` (d x d).
        cross: ``Y G^T`` (a x d).
        target_gram: ``Y Y^T`` (a x a) for real targets; None for labels (``diag(Y 1)``).
        feature_sum: ``G 1`` (d).
        target_sum: ``Y 1`` (a): the class counts for labels.
        samples: N.
        labels: whether the targets are class labels (None before the first batch).
    """

    def __init__(self, width: int, outputs: int, device: torch.device | str | None = None) -> None:
        self.width = check.check_positive_int(width, "width")
        self.outputs = check.check_positive_int(outputs, "outputs")
        self.labels: bool | None = None
        self.samples = 0
        self._device = None if device is None else torch.device(device)
        self.gram: Tensor | None = None
        self.cross: Tensor | None = None
        self.target_gram: Tensor | None = None
        self.feature_sum: Tensor | None = None
        self.target_sum: Tensor | None = None
        if self._device is not None:
            self._allocate(self._device)

    # ------------------------------------------------------------------------------ storage
    @property
    def device(self) -> torch.device | None:
        """Where the sums live (None until the first batch when no device was given)."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """float64 (float32 on devices without float64, as Apple's MPS)."""
        return exact_dtype(self._device or torch.device("cpu"))

    def _allocate(self, device: torch.device) -> None:
        d, a = self.width, self.outputs
        self._device = device
        dtype = self.dtype
        self.gram = torch.zeros(d, d, dtype=dtype, device=device)
        self.cross = torch.zeros(a, d, dtype=dtype, device=device)
        self.feature_sum = torch.zeros(d, dtype=dtype, device=device)
        self.target_sum = torch.zeros(a, dtype=dtype, device=device)

    def _sums(self) -> dict[str, Tensor]:
        """Every sum by name (the target Gram only for real targets)."""
        assert self.gram is not None and self.cross is not None
        assert self.feature_sum is not None and self.target_sum is not None
        sums = {
            "gram": self.gram,
            "cross": self.cross,
            "feature_sum": self.feature_sum,
            "target_sum": self.target_sum,
        }
        if self.target_gram is not None:
            sums["target_gram"] = self.target_gram
        return sums

    # ------------------------------------------------------------------------------- update
    def _check_batch(self, features: Any, targets: Any) -> tuple[Tensor, Tensor, bool]:
        """``(g, y, labels)``: the batch as (n, d) features and (n,) labels or (n, a) targets,
        on the sums' device, checked in full before anything is added."""
        if not isinstance(features, Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got dtype {features.dtype}")
        if features.ndim < 1 or features.shape[-1] != self.width:
            raise ValueError(
                f"features must have {self.width} features on their last axis (the head's "
                f"in_features), got shape {tuple(features.shape)}"
            )
        g = features.detach().reshape(-1, self.width)
        if not isinstance(targets, Tensor):
            raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        labels = not (targets.is_floating_point() or targets.is_complex())
        if self.labels is not None and labels != self.labels:
            before = "class labels" if self.labels else "real vectors"
            raise TypeError(
                f"targets were {before} in earlier batches, got a tensor of dtype {targets.dtype}"
            )
        expected = tuple(features.shape[:-1]) + (() if labels else (self.outputs,))
        if tuple(targets.shape) != expected:
            what = "labels" if labels else f"targets of {self.outputs} values"
            raise ValueError(
                f"targets must be {what} of shape {expected} for features of shape "
                f"{tuple(features.shape)}, got shape {tuple(targets.shape)}"
            )
        device = self._device or g.device
        g = g.to(device=device, dtype=exact_dtype(device))
        if not bool(torch.isfinite(g).all()):
            raise ValueError(
                "features must be finite, got NaN or infinite values (a diverged network?); "
                "nothing of this batch was added"
            )
        if labels:
            y = targets.detach().reshape(-1).to(device=device, dtype=torch.int64)
            low, high = (int(v) for v in torch.aminmax(y)) if y.numel() else (0, 0)
            if low < 0 or high >= self.outputs:
                bad = low if low < 0 else high
                raise ValueError(
                    f"labels must lie in [0, {self.outputs}) (the head's out_features), got "
                    f"{bad}; nothing of this batch was added"
                )
        else:
            y = targets.detach().reshape(-1, self.outputs).to(device=device, dtype=g.dtype)
            if not bool(torch.isfinite(y).all()):
                raise ValueError(
                    "targets must be finite, got NaN or infinite values; nothing of this batch "
                    "was added"
                )
        return g, y, labels

    @torch.no_grad()
    def update(self, features: Tensor, targets: Tensor) -> HeadStats:
        """Add a batch: ``features`` (..., d) and ``targets``, class labels (...) of an integer
        type or real targets (..., a). Every leading index is a sample.

        The batch is checked in full before anything is added: a batch of the wrong width, with
        NaN features or labels out of range raises and leaves the sums as they were.

        Returns:
            ``self``.

        Raises:
            TypeError: not tensors, features not floating, targets of another kind than before.
            ValueError: the wrong width or shapes, non-finite values, labels out of range.
        """
        g, y, labels = self._check_batch(features, targets)
        if self.gram is None:
            self._allocate(g.device)
        sums = self._sums()
        sums["gram"].addmm_(g.T, g)
        sums["feature_sum"].add_(g.sum(0))
        if labels:
            sums["cross"].index_add_(0, y, g)
            sums["target_sum"].add_(torch.bincount(y, minlength=self.outputs).to(g.dtype))
        else:
            if self.target_gram is None:
                self.target_gram = torch.zeros(
                    self.outputs, self.outputs, dtype=g.dtype, device=g.device
                )
            sums["cross"].addmm_(y.T, g)
            self.target_gram.addmm_(y.T, y)
            sums["target_sum"].add_(y.sum(0))
        self.labels = labels
        self.samples += int(g.shape[0])
        return self

    # -------------------------------------------------------------------------------- merge
    def _check_compatible(self, other: HeadStats) -> None:
        if not isinstance(other, HeadStats):
            raise TypeError(f"can merge HeadStats only, got {type(other).__name__}")
        if (other.width, other.outputs) != (self.width, self.outputs):
            raise ValueError(
                f"cannot merge statistics of {other.width} features and {other.outputs} "
                f"outputs into ones of {self.width} and {self.outputs}"
            )
        if None not in (self.labels, other.labels) and self.labels != other.labels:
            raise ValueError("cannot merge statistics of class labels with ones of real targets")

    @torch.no_grad()
    def merge(self, other: HeadStats) -> HeadStats:
        """Add the sums of ``other`` (other batches of the same head), in place.

        Returns:
            ``self``.
        """
        self._check_compatible(other)
        if other.samples == 0:
            return self
        if self.gram is None:
            self._allocate(other.gram.device if other.gram is not None else torch.device("cpu"))
        mine, theirs = self._sums(), other._sums()
        if other.target_gram is not None and self.target_gram is None:
            self.target_gram = torch.zeros_like(other.target_gram, device=self._device)
            mine["target_gram"] = self.target_gram
        for name, value in theirs.items():
            mine[name].add_(value.to(mine[name].device, mine[name].dtype))
        self.labels = other.labels
        self.samples += other.samples
        return self

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> HeadStats:
        """Sum the statistics of every process of ``group`` (``torch.distributed``; the default
        group when None), in place: afterwards every process holds the sums over all samples.
        Every process must call it; one that saw no batch contributes zeros.

        Returns:
            ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce needs torch.distributed: call init_process_group first")
        if self.gram is None:
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if (dist.get_backend(group) == "nccl")
                else torch.device("cpu")
            )
            self._allocate(device)
        a = self.outputs
        kinds = [float(self.labels is True), float(self.labels is False)]
        target_gram = self.target_gram
        if target_gram is None:
            target_gram = torch.zeros(a, a, dtype=self.dtype, device=self._device)
        sums = self._sums()
        parts = [sums[name] for name in ("gram", "cross", "feature_sum", "target_sum")]
        parts.append(target_gram)
        flat = torch.cat(
            [part.reshape(-1) for part in parts]
            + [torch.tensor([float(self.samples), *kinds], dtype=self.dtype, device=self._device)]
        )
        dist.all_reduce(flat, group=group)
        offset = 0
        for part in parts:
            part.copy_(flat[offset : offset + part.numel()].view_as(part))
            offset += part.numel()
        samples, label_ranks, vector_ranks = (float(v) for v in flat[offset:].tolist())
        if label_ranks and vector_ranks:
            raise ValueError("some processes saw class labels, others real targets")
        self.samples = round(samples)
        self.labels = True if label_ranks else (False if vector_ranks else None)
        self.target_gram = target_gram if self.labels is False else None
        return self

    def __repr__(self) -> str:
        kind = {None: "no batch yet", True: "class labels", False: "real targets"}[self.labels]
        return (
            f"HeadStats(width={self.width}, outputs={self.outputs}, samples={self.samples}, "
            f"{kind}, device={self._device})"
        )
