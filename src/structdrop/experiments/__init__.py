"""The paper's experiments: :mod:`.synthetic` (Sec. 5.1, 5.3, App. E and beyond), its figures
(:mod:`.plots`) and ``REPORT.md`` (:mod:`.report`).

Nothing is imported here, so that light users (``structdrop optimum``, which reads files through
:mod:`._io`) do not pay for matplotlib; import the submodules directly. Everything here needs
the ``experiments`` extra: without it, importing this package raises one ``ImportError`` that
names the extra.
"""

from .._extras import EXPERIMENTS, require

require("experiments", EXPERIMENTS, "structdrop.experiments")

__all__ = ["plots", "report", "synthetic"]
