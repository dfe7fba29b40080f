"""Ghiasi et al.'s sliding DropBlock, exact per unit: one room.

A forward pass, from the layer down to the sampler::

    DropBlock2d.forward                     (structdrop.nn.modules)
      -> drop_block_masked                  (.op: p = 0, p = 1, the seed)
        -> structdrop::drop_block           (.op: the operator when traced; eager calls run
                                             its kernel directly; gamma and 1 / mu from .rates)
          -> drop_block_sparse / _dense     (.sparse on a CPU, .dense elsewhere)

* :mod:`.options`: the options, validated once into a frozen :class:`DropBlockOptions`;
* :mod:`.rates`: the candidate windows, how many cover each unit, the gamma rules and the exact
  keep probabilities (host computations, cached per configuration);
* :mod:`.op`: the mask operator that ``torch.compile`` and ``torch.export`` see as one node;
* :mod:`.sparse`, :mod:`.dense`: two samplers of the same law;
* :mod:`.functional`: ``drop_block`` and its 1-D, 2-D and 3-D forms, ``window_drop_prob``,
  ``drop_block_keep_prob``.
"""

from .functional import (
    drop_block,
    drop_block1d,
    drop_block2d,
    drop_block3d,
    drop_block_keep_prob,
    window_drop_prob,
)
from .op import drop_block_masked
from .options import BOUNDARIES, GAMMA_RULES, METHODS, OPTION_NAMES, SCALES, DropBlockOptions

__all__ = [
    "BOUNDARIES",
    "GAMMA_RULES",
    "METHODS",
    "OPTION_NAMES",
    "SCALES",
    "DropBlockOptions",
    "drop_block",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "drop_block_keep_prob",
    "drop_block_masked",
    "window_drop_prob",
]
