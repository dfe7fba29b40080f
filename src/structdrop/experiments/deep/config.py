"""What a Fig. 2 run depends on: :class:`DeepConfig`, its mask law and the command line's presets.

Every field carries its help text (``metadata["help"]``): the command line
(``structdrop reproduce deep --help``) and docs/deep.md show these very strings. This module
loads neither torch nor torchvision, so that the command line can list the options quickly.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ... import _validation as check
from ...schemes import Scheme

__all__ = [
    "CHECKPOINT_EVERY",
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DEVICES",
    "LARGE_IMAGE_SIZE",
    "MAX_IMAGE_SIZE",
    "MAX_WIDTH",
    "QUICK",
    "TRUNKS",
    "DeepConfig",
    "checkpoint_path",
    "config_from_options",
    "default_text",
    "make_scheme",
    "results_name",
    "run_identity",
    "scheme_laws",
]

#: The data sets of ``DeepConfig.dataset`` (the command line's ``--dataset``).
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic32")
#: The feature extractors of ``DeepConfig.trunk`` (the command line's ``--trunk``).
TRUNKS: tuple[str, ...] = ("resnet50", "resnet18", "tiny")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Where torchvision's data set files are looked for (and downloaded to) by default.
DEFAULT_DATA_DIR = Path("data")
#: The ``--quick`` preset: seconds on an idle 2-core CPU, and every code path exercised.
QUICK: MappingProxyType[str, Any] = MappingProxyType(
    {"train_size": 50, "epochs": 2, "batch_size": 25}
)
#: The image side of the data sets other than ``digits`` on the command line (digits are 8x8,
#: upsampled to the default 16; the others are 28x28 or 32x32).
LARGE_IMAGE_SIZE = 32
#: The largest image side and hidden width taken: beyond them a run cannot fit in memory.
MAX_IMAGE_SIZE = 1024
MAX_WIDTH = 2**20


def scheme_laws() -> dict[str, str]:
    """Every mask law that a drop rate ``p`` and a ``block_size`` define, by its short name.

    The laws come from the registry (:meth:`structdrop.Scheme.laws`): those whose constructor
    takes ``p`` and needs nothing but ``p`` and ``block_size``. A law's short name is its name
    in lower case without "Block": ``{"bernoulli": "Bernoulli", "grid": "GridBlock", ...}``.
    """
    laws = {}
    for name, law in Scheme.laws().items():
        parameters = inspect.signature(law).parameters
        required = {key for key, value in parameters.items() if value.default is value.empty}
        if "p" in parameters and required <= {"p", "block_size"}:
            laws[name.lower().removesuffix("block")] = name
    return laws


def _scheme_name(value: Any) -> str:
    """The short name of the law named ``value`` (its short name or its registry name)."""
    laws = scheme_laws()
    names = {**{short: short for short in laws}, **{law: short for short, law in laws.items()}}
    return names[check.check_choice(value, "scheme", tuple(names))]


def _laws_help() -> str:
    return ", ".join(f"{law} ({short})" for short, law in scheme_laws().items())


def _setting(default: Any, help: str, shown: str | None = None) -> Any:
    """A field with its help text and, when the plain default would mislead, how the command
    line's default reads (``shown``)."""
    metadata = {"help": help} if shown is None else {"help": help, "shown": shown}
    return field(default=default, metadata=metadata)


#: Seconds of training between two checkpoints of a run (written at the end of an epoch).
CHECKPOINT_EVERY = 60.0


@dataclass(frozen=True)
class DeepConfig:
    """Everything a Fig. 2 run depends on. The defaults are the offline CPU reproduction.

    Each field's ``metadata["help"]`` says what it is (see :func:`dataclasses.fields`); the
    command line shows the same text. ``train_size=0`` is stored as None (the whole split) and
    ``scheme`` as the law's short name.
    """

    dataset: str = _setting(
        "digits",
        "Data set: digits (scikit-learn's, bundled), mnist, fashion-mnist, cifar10 "
        "(torchvision's files under --data-dir; --download fetches them) or synthetic32 "
        "(random class-conditional 32x32 images from the seed).",
    )
    data_dir: str | None = _setting(
        None, "Folder of torchvision's data set files.", shown=str(DEFAULT_DATA_DIR)
    )
    train_size: int | None = _setting(
        200, "Training samples drawn from the training split (0: all of it)."
    )
    image_size: int = _setting(
        16,
        "Side of the square images given to the trunk.",
        shown=f"16 for digits, else {LARGE_IMAGE_SIZE}",
    )
    trunk: str = _setting(
        "resnet50",
        "Feature extractor: resnet50 (the paper's), resnet18, or tiny (two convolutions, no "
        "BatchNorm) for fast checks.",
    )
    width: int = _setting(80, "d, the hidden features that the dropout acts on (80 in the paper).")
    scheme: str = _setting(
        "grid",
        f"Mask law on the d features, by name or short name: {_laws_help()}. GridBlock is the "
        "paper's DropBlock (Lemma 2.1); DropConnect, whose masks on the last layer's entries "
        "regularize as Dropout does, trains with Dropout's masks on the features.",
    )
    p: float = _setting(0.5, "Drop probability at width d, in [0, 1).")
    block_size: int = _setting(5, "r, the block size of GridBlock and SlidingBlock.")
    epochs: int = _setting(100, "Passes over the training set.")
    batch_size: int = _setting(50, "Global batch size B, split over the processes.")
    lr: float = _setting(1e-3, "Peak learning rate of Adam (linear warm-up, cosine decay to 0).")
    warmup: float = _setting(0.05, "Fraction of the steps spent warming up, in [0, 1).")
    eval_every: int = _setting(
        0,
        "Evaluate the deterministic objective every this many steps (0: at the end of every "
        "epoch only).",
    )
    seed: int = _setting(
        0, "Seed of the training subset, the initial weights, the shuffles and the masks."
    )
    device: str = _setting("auto", "auto (CUDA when available), cpu or cuda.")
    amp: bool = _setting(True, "bfloat16 autocast on CUDA (ignored on CPU).")

    def __post_init__(self) -> None:
        check.check_choice(self.dataset, "dataset", DATASETS)
        check.check_choice(self.trunk, "trunk", TRUNKS)
        check.check_choice(self.device, "device", DEVICES)
        object.__setattr__(self, "scheme", _scheme_name(self.scheme))
        check.check_probability(self.p)
        for name in ("image_size", "width", "block_size", "epochs", "batch_size"):
            check.check_positive_int(getattr(self, name), name)
        if self.train_size is not None:
            check.check_integer(self.train_size, "train_size")
            if self.train_size == 0:
                object.__setattr__(self, "train_size", None)
            else:
                check.check_positive_int(self.train_size, "train_size")
        check.check_at_most(self.image_size, MAX_IMAGE_SIZE, "image_size")
        check.check_at_most(self.width, MAX_WIDTH, "width")
        check.check_integer(self.eval_every, "eval_every")
        check.check_nonnegative(self.eval_every, "eval_every")
        check.check_seed(self.seed)
        check.check_probability(self.warmup, "warmup")
        check.check_positive(self.lr, "lr")
        make_scheme(self).check_width(self.width)

    @classmethod
    def quick(cls, **overrides: Any) -> DeepConfig:
        """The :data:`QUICK` preset, with ``overrides`` on top."""
        return cls(**{**QUICK, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the numbers (not where or how fast they are computed)."""
        fields = self.to_dict()
        for name in ("device", "amp", "data_dir"):
            fields.pop(name)
        return fields


def run_identity(config: DeepConfig, source: dict[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint of ``config`` is bound to: :meth:`DeepConfig.identity` and, for the data
    sets read from files, ``source``: the source of the data the run loaded
    (:attr:`~structdrop.experiments.deep.data.ImageData.source`)."""
    identity = config.identity()
    if source is not None:
        identity["data_source"] = source
    return identity


def results_name(config: DeepConfig) -> str:
    """The name of a run's results in ``--out``: ``fig2`` for digits, ``fig2_<dataset>`` for the
    other data sets (``<name>.json``, ``<name>.png``)."""
    return "fig2" if config.dataset == "digits" else f"fig2_{config.dataset}"


#: Names that a run's results may not take: the files that every run in ``--out`` shares.
RESERVED_NAMES: tuple[str, ...] = ("REPORT", "timings", "sweep")


def check_name(name: str) -> str:
    """A result name of the command line's ``--name``: letters, digits, ``.``, ``_`` and
    ``-``, starting with a letter or digit, at most 100 characters, none of
    :data:`RESERVED_NAMES` (a ValueError names the value otherwise)."""
    if (
        not isinstance(name, str)
        or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) is None
        or name in RESERVED_NAMES
    ):
        raise ValueError(
            "--name must be a file name of letters, digits, '.', '_' and '-' (starting with a "
            f"letter or a digit, at most 100 characters, none of {', '.join(RESERVED_NAMES)}), "
            f"got {name!r}"
        )
    return name


def checkpoint_path(
    config: DeepConfig, out: str | os.PathLike[str], name: str | None = None
) -> Path:
    """Where a run of ``config`` into ``out`` (result ``name``, by default
    :func:`results_name`) keeps its checkpoint while it runs."""
    return Path(out) / "checkpoints" / f"{name or results_name(config)}.pt"


def make_scheme(config: DeepConfig) -> Scheme:
    """The mask law named by ``config.scheme``, with drop rate ``config.p`` (and block size
    ``config.block_size`` if the law has one)."""
    law = Scheme.laws()[scheme_laws()[config.scheme]]
    settings = {"p": config.p, "block_size": config.block_size}
    parameters = inspect.signature(law).parameters
    return law(**{name: value for name, value in settings.items() if name in parameters})


def config_from_options(*, quick: bool = False, **options: Any) -> DeepConfig:
    """A :class:`DeepConfig` from command-line options (DeepConfig's fields by name).

    An option that is None takes the preset's value: :data:`QUICK` when ``quick``, else the
    field's default; the data sets other than ``digits`` default to images of side
    :data:`LARGE_IMAGE_SIZE`.
    """
    settings = {name: value for name, value in options.items() if value is not None}
    if settings.get("dataset", "digits") != "digits":
        settings.setdefault("image_size", LARGE_IMAGE_SIZE)
    if isinstance(settings.get("data_dir"), os.PathLike):
        settings["data_dir"] = os.fspath(settings["data_dir"])
    return DeepConfig.quick(**settings) if quick else DeepConfig(**settings)


def default_text(setting: dataclasses.Field[Any]) -> str | None:
    """How the command line's default of ``setting`` (a field of DeepConfig) reads in --help
    when it is not the field's default: a default that depends on ``--quick`` or on the data
    set, or None (decided by :class:`DeepConfig` itself); None when it is the field's default."""
    shown = setting.metadata.get("shown")
    if setting.name in QUICK:
        shown = f"{setting.default}; --quick: {QUICK[setting.name]}"
    return shown
