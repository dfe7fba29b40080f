"""The optional parts of the install, and the one-line error when one is missing.

The base install (NumPy, SciPy, torch) runs the mask laws, the objectives, the k-support norms,
the optimum and the layers. The command line and the paper's experiments need the
``experiments`` extra (``pip install 'structdrop[experiments]'``).
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXPERIMENTS", "MissingExtraError", "require"]

#: The import names of what the ``experiments`` extra installs.
EXPERIMENTS: tuple[str, ...] = (
    "matplotlib",
    "numba",
    "sklearn",
    "threadpoolctl",
    "torchvision",
    "tqdm",
    "typer",
)


class MissingExtraError(ImportError):
    """A part of structdrop that needs an extra was used without it."""


def require(extra: str, modules: tuple[str, ...], what: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` when one of ``modules`` is not
    installed; ``what`` names the part that needs them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra (missing: {', '.join(missing)}); install it "
            f"with: pip install 'structdrop[{extra}]'"
        )
