"""``python -m structdrop`` and the ``structdrop`` command: the command line
(:mod:`structdrop.cli`), which needs the ``experiments`` extra.

It is also how ``torchrun`` starts every process of a distributed run::

    torchrun --nproc-per-node 2 -m structdrop reproduce deep --dataset digits
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line, or say in one line which extra to install (exit status 2)."""
    from ._extras import EXPERIMENTS, MissingExtraError, require

    try:
        require("experiments", EXPERIMENTS, "the structdrop command")
    except MissingExtraError as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from .cli import app

    app(prog_name="structdrop")


if __name__ == "__main__":
    main()
