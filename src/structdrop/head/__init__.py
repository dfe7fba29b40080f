"""The theory on a user's network: what the dropout in front of a model's last linear layer
does to it, measured from one pass over the data.

* :mod:`.stats`: :class:`HeadStats`, the streaming statistics of a head's features and targets
  (``G G^T``, ``Y G^T``, ``Y Y^T``, N), mergeable across batches and processes;
* :mod:`.report`: :func:`head_report`, the deterministic objective of Thm 3.1 and its
  regularizer, the best head for the features, the capacity bound of Prop. 3.3 / Thm 2.7 and
  the gaps to both, for any mask law;
* :mod:`.monitor`: :class:`HeadMonitor`, which finds a model's head and the dropout in front of
  it and measures them over a loader.

The Fig. 2 experiment (:mod:`structdrop.experiments.deep`) is built on it.
"""

from .monitor import HeadMonitor, find_head, head_law
from .report import HeadReport, head_report
from .stats import HeadStats

__all__ = ["HeadMonitor", "HeadReport", "HeadStats", "find_head", "head_law", "head_report"]
