"""``python -m structdrop``: the ``structdrop`` command line (:mod:`structdrop.cli`).

It is also how ``torchrun`` starts every process of a distributed run::

    torchrun --nproc-per-node 2 -m structdrop reproduce deep --dataset digits
"""

from .cli import app

if __name__ == "__main__":
    app(prog_name="structdrop")
