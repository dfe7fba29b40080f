"""The ``structdrop`` command line.

``structdrop reproduce synthetic`` reproduces the paper's synthetic experiments (figures, JSON
data, ``REPORT.md``); ``structdrop reproduce deep`` its deep-network experiment (Fig. 2), whose
options are the fields of :class:`~structdrop.experiments.deep.config.DeepConfig`; ``structdrop
optimum`` prints the closed-form global minimum (Thm 2.7, corrected in docs/theory.md) of
Dropout/DropBlock for data files. ``python -m structdrop`` is the same command line, and
``torchrun ... -m structdrop reproduce deep`` runs Fig. 2 on several processes.

Bad input gives a one-line error and exit status 2, with nothing written: a problem of the
user's input or environment (a bad option, an unreadable file, an output folder that is not
writable, a damaged or foreign checkpoint, missing data, a missing device) is one line on
stderr, never a traceback. Errors of the program itself are not dressed up as usage errors:
they keep their traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import typer

from ._files import remove_if_empty, remove_stale_temporaries_under
from .experiments.deep.config import CHECKPOINT_EVERY, DeepConfig, default_text
from .experiments.figures import FIGURES

app = typer.Typer(
    help="Structured dropout: exact regularizers, global optima, and the paper's experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
reproduce = typer.Typer(
    help="Reproduce the paper's experiments (figures, data and REPORT.md).",
    no_args_is_help=True,
)
app.add_typer(reproduce, name="reproduce")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"structdrop {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Structured dropout: exact regularizers, global optima, and the paper's experiments."""


EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    """Print ``Error: message`` (its first line) on stderr and exit with status 2."""
    typer.echo(f"Error: {str(message).strip().splitlines()[0]}", err=True)
    raise typer.Exit(code=EXIT_USAGE)


@contextlib.contextmanager
def _terminate_gracefully() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C within the block (workers stopped, temporary files removed,
    checkpoints kept) instead of killing the process where it stands. The handler is this
    command's only: the one it replaced comes back on the way out, so that a program that
    calls the command line in-process keeps its own."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _user_errors(*also: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The errors that are the user's input or environment, reported in one line, and ``also``."""
    from ._checkpoint import CheckpointError
    from ._locks import ResultBusyError
    from .experiments._io import InputError

    return (*also, InputError, CheckpointError, ResultBusyError)


def _environment_error(error: OSError, out: Path) -> str:
    """One line for an OSError of the user's environment (a full disk, a read-only or
    unreadable folder, a folder where a file should be): the path and the OS's words."""
    path = error.filename
    reason = error.strerror or type(error).__name__
    if isinstance(error, IsADirectoryError) and path is not None:
        return f"{path} is a folder where a file should be; remove it"
    return f"{path}: {reason}" if path is not None else f"writing under {out}: {reason}"


def _user_error(error: BaseException) -> str:
    """The one line of a user error (see :func:`_user_errors`)."""
    from ._checkpoint import CheckpointError

    if isinstance(error, CheckpointError) and error.path.is_dir():
        return f"checkpoint {error.path}: {error.problem}; remove it"
    return str(error)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; False for a path the system refuses (a name too long, say),
    which the checks of ``--out`` then report."""
    try:
        return path.exists()
    except OSError:
        return False


def _interruptible(
    run: Callable[[], None], out: Path, checkpoints: Callable[[], list[Path]]
) -> None:
    """``run()`` with SIGTERM unwinding like Ctrl-C, installed before ``run`` imports anything
    heavy: an interrupt removes what stopped writers left under ``out`` (and ``out`` itself when
    this command created it and nothing is left in it) and exits 130, saying whether there is a
    checkpoint to resume from (``checkpoints()``: this run's checkpoint files)."""
    existed = _exists(out)
    try:
        with _terminate_gracefully():
            run()
    except KeyboardInterrupt:
        if _exists(out):
            remove_stale_temporaries_under(out)  # what stopped workers were writing
        kept = [path for path in checkpoints() if _exists(path)]
        remove_if_empty(out, existed)
        if kept:
            where = kept[0] if len(kept) == 1 else kept[0].parent
            message = f"interrupted: rerun the same command to resume from {where}"
        else:
            message = (
                "interrupted before the first checkpoint: rerun the same command to start again"
            )
        typer.echo(message, err=True)
        raise typer.Exit(code=130) from None


@reproduce.command("synthetic")
def synthetic_command(
    figure: Annotated[
        list[str] | None,
        typer.Option(
            "--figure",
            "-f",
            help=f"Figure to run (repeatable): {', '.join(FIGURES)}. Default: all.",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Far fewer iterations (smoke tests).")
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("results"),
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of data and runs.")] = 0,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Recompute figures whose JSON already exists, and replace files in the way "
            "(figures and REPORT.md that are not ours); an interrupted run resumes, and "
            "checkpoints of other settings are discarded.",
        ),
    ] = False,
) -> None:
    """Sec. 5.1/5.3 and App. E at the paper's scale, and two experiments beyond the paper.

    Writes <out>/<figure>.png, <out>/<figure>.json and <out>/REPORT.md. Finished figures are
    skipped unless --force; an interrupted run resumes from its checkpoints.
    """

    def checkpoints() -> list[Path]:
        folders = [out / "checkpoints" / name for name in (figure or FIGURES)]
        return sorted(
            path for folder in folders if _exists(folder) for path in folder.rglob("*.npz")
        )

    _interruptible(lambda: _synthetic(figure, quick, out, seed, force), out, checkpoints)


def _synthetic(figure: list[str] | None, quick: bool, out: Path, seed: int, force: bool) -> None:
    from . import _validation as check
    from .experiments import _io, report, synthetic
    from .linear import DivergenceError

    existed = _exists(out)
    try:
        names = synthetic.check_figures(figure)
        check.check_seed(seed, "--seed")
        _io.check_out_dir(out)
        report.check_report(out, force)
    except (ValueError, TypeError) as error:
        remove_if_empty(out, existed)
        fail(str(error))
    began = [time.perf_counter()]

    def announce(name: str, status: str, data: dict[str, Any] | None) -> None:
        now = time.perf_counter()
        if status == "skipped":
            typer.echo(f"{name}: already done, skipped (use --force to recompute)")
        else:
            assert data is not None
            typer.echo(f"{name}: done in {now - began[0]:.1f} s{synthetic.headline(name, data)}")
        began[0] = now

    try:
        synthetic.run(
            names,
            out,
            quick=quick,
            seed=seed,
            force=force,
            progress=sys.stderr.isatty(),  # bars on a terminal, never in a log
            report=announce,
        )
        path = report.write_report(out, force)
    except _user_errors(DivergenceError) as error:
        remove_if_empty(out, existed)
        fail(_user_error(error))
    except OSError as error:  # writing results or checkpoints: a full disk, a read-only folder
        remove_if_empty(out, existed)
        fail(_environment_error(error, out))
    typer.echo(f"report: {path}")


def config_options(
    config_class: type, shown_default: Callable[[dataclasses.Field[Any]], str | None]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command ``(..., **options)`` one option per field of the dataclass
    ``config_class``: ``--name`` (``--name/--no-name`` for a bool) with the field's
    ``metadata["help"]`` as its help and the field's default, or default None where
    ``shown_default(field)`` describes a default that depends on other options (the
    configuration then decides). typer reads the parameters from the command's
    ``__signature__``; the options arrive in ``**options``.
    """
    hints = typing.get_type_hints(config_class)
    parameters = []
    for setting in dataclasses.fields(config_class):
        kind = hints[setting.name]
        kind = next((arg for arg in typing.get_args(kind) if arg is not type(None)), kind)
        flag = "--" + setting.name.replace("_", "-")
        shown = shown_default(setting)
        option = typer.Option(
            f"{flag}/--no-{flag[2:]}" if kind is bool else flag,
            help=setting.metadata["help"],
            show_default=shown or True,
            rich_help_panel="Configuration",
        )
        parameters.append(
            inspect.Parameter(
                setting.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None if shown else setting.default,
                annotation=Annotated[kind | None, option],
            )
        )

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        explicit = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*explicit, *parameters]
        )
        return command

    return decorate


def _run_option(*names: str, help: str, **settings: Any) -> Any:
    """An option of the run itself (not of its configuration), shown in the "Run" panel."""
    return typer.Option(*names, help=help, rich_help_panel="Run", **settings)


@reproduce.command(
    "deep",
    help="Sec. 5.2 / Fig. 2: ResNet-50 with structured dropout before the last layer.\n\n"
    "Writes <out>/fig2.png, <out>/fig2.json (fig2_<dataset>.* for the other data sets, "
    "<name>.* with --name) and the Fig. 2 section of <out>/REPORT.md. A checkpoint is saved at "
    "the end of an epoch once a minute (--checkpoint-every); a killed run resumes from it. On "
    "several processes or GPUs: torchrun --nproc-per-node N -m structdrop reproduce deep ... "
    "(the same options).\n\n"
    "--sweep runs Fig. 2 over laws (Dropout, GridBlock r = 2 and 5) x drop rates (0.1, 0.3, "
    "0.5, 0.7) x the data sets at hand (digits, the MNIST subset, Fashion-MNIST), each cell an "
    "ordinary run named sweep-<dataset>-<law>-p<p> (resumable; --list prints each cell's "
    "command, to run them as separate jobs into one --out; --collect gathers what is done), "
    "and writes <out>/sweep.png, <out>/sweep.json and a verdict in REPORT.md.",
)
@config_options(DeepConfig, default_text)
def deep_command(
    *,
    quick: Annotated[
        bool,
        _run_option(
            "--quick",
            help="A small run of seconds (smoke tests): --train-size, --epochs and "
            "--batch-size default to their --quick values.",
        ),
    ] = False,
    out: Annotated[Path, _run_option("--out", help="Output folder.")] = Path("results"),
    force: Annotated[
        bool,
        _run_option(
            "--force",
            help="Recompute even if the results exist, and replace files in the way (results "
            "of other settings or data, a REPORT.md that is not ours); an interrupted run "
            "resumes, and a checkpoint of other settings or data is discarded.",
        ),
    ] = False,
    download: Annotated[
        bool,
        _run_option(
            "--download",
            help="First fetch --dataset (mnist, fashion-mnist, cifar10) into --data-dir "
            "through torchvision.",
        ),
    ] = False,
    progress: Annotated[
        bool | None,
        _run_option(
            "--progress/--no-progress",
            help="Progress bar (default: only on an interactive terminal).",
            show_default=False,
        ),
    ] = None,
    checkpoint_every: Annotated[
        float,
        _run_option(
            "--checkpoint-every",
            min=0.0,
            help="Seconds of training between checkpoints, written at the end of an epoch "
            "(0: every epoch).",
        ),
    ] = CHECKPOINT_EVERY,
    name: Annotated[
        str | None,
        _run_option(
            "--name",
            help="Name of the results: <out>/<name>.json, .png (default fig2, or fig2_<dataset>).",
            show_default=False,
        ),
    ] = None,
    sweep: Annotated[
        bool,
        _run_option("--sweep", help="Run the sweep of laws x rates x data sets (see above)."),
    ] = False,
    list_cells: Annotated[
        bool,
        _run_option("--list", help="With --sweep: print each cell's command line, run nothing."),
    ] = False,
    collect: Annotated[
        bool,
        _run_option("--collect", help="With --sweep: gather the cells done in --out, run nothing."),
    ] = False,
    **options: Any,
) -> None:
    if sweep:
        _interruptible(
            lambda: _sweep(
                quick, out, force, progress, checkpoint_every, name, list_cells, collect, options
            ),
            out,
            lambda: sorted((out / "checkpoints").glob("sweep-*.pt")) if _exists(out) else [],
        )
        return
    if list_cells or collect:
        fail("--list and --collect go with --sweep")

    def checkpoints() -> list[Path]:
        from .experiments.deep.config import checkpoint_path, config_from_options

        try:
            return [checkpoint_path(config_from_options(quick=quick, **options), out, name)]
        except (ValueError, TypeError):
            return []

    _interruptible(
        lambda: _deep(quick, out, force, download, progress, checkpoint_every, name, options),
        out,
        checkpoints,
    )


def _deep(
    quick: bool,
    out: Path,
    force: bool,
    download: bool,
    progress: bool | None,
    checkpoint_every: float,
    name: str | None,
    options: dict[str, Any],
) -> None:
    from . import _validation as check
    from .experiments import _io, report
    from .experiments.deep.config import check_name, config_from_options
    from .linear import DivergenceError

    existed = _exists(out)
    try:
        config = config_from_options(quick=quick, **options)
        if name is not None:
            check_name(name)
        check.check_nonnegative(checkpoint_every, "--checkpoint-every")
        _io.check_out_dir(out)
        report.check_report(out, force)
    except (ValueError, TypeError) as error:  # the options themselves
        remove_if_empty(out, existed)
        fail(str(error))
    from .experiments.deep.data import MissingDataError
    from .experiments.deep.experiment import run_deep
    from .experiments.deep.parallel import process_group

    try:
        with process_group(config) as procs:
            data = run_deep(
                config,
                out,
                force=force,
                progress=progress,
                download=download,
                checkpoint_every=checkpoint_every,
                name=name,
            )
        if procs.main:
            path = report.write_report(out, force)
    except _user_errors(MissingDataError, DivergenceError) as error:
        remove_if_empty(out, existed)
        fail(_user_error(error))
    except OSError as error:  # the data, results or checkpoints: unreadable, read-only, full
        remove_if_empty(out, existed)
        fail(_environment_error(error, out))
    if not procs.main:
        return
    gap = data.get("gap")
    typer.echo(
        f"{data['figure'].removesuffix('.png')} ({config.dataset}): gap to the theoretical "
        f"minimum {gap if gap is None else f'{gap:.3g}'}"
    )
    typer.echo(f"report: {path}")


def _sweep(
    quick: bool,
    out: Path,
    force: bool,
    progress: bool | None,
    checkpoint_every: float,
    name: str | None,
    list_cells: bool,
    collect: bool,
    options: dict[str, Any],
) -> None:
    """``reproduce deep --sweep``: every cell an ordinary run into ``out`` (see the help)."""
    if name is not None:  # checked before the imports below (torch): a usage error is quick
        fail("--name names one run: the sweep names its cells itself")
    if list_cells and collect:
        fail("--list and --collect exclude each other")
    from . import _validation as check
    from .experiments import _io, report
    from .experiments.deep import sweep
    from .experiments.deep.config import config_from_options
    from .experiments.deep.data import MissingDataError
    from .experiments.deep.parallel import process_group
    from .linear import DivergenceError

    existed = _exists(out)
    try:
        sweep.check_base(options)
        base = config_from_options(quick=quick, **options)
        check.check_nonnegative(checkpoint_every, "--checkpoint-every")
        if list_cells:
            for command in sweep.cell_commands(sweep.cells(base), out):
                typer.echo(command)
            return
        _io.check_out_dir(out)
        report.check_report(out, force)
    except (ValueError, TypeError) as error:
        remove_if_empty(out, existed)
        fail(str(error))

    def announce(cell: Any, data: dict[str, Any]) -> None:
        gap, best = data.get("gap"), (data.get("best_head") or {}).get("gap")
        typer.echo(
            f"{cell.name}: gap to the capacity bound "
            f"{'-' if gap is None else f'{gap:.2%}'}, to the best head "
            f"{'-' if best is None else f'{best:.2%}'}"
        )

    try:
        with process_group(base) as procs:
            if collect:
                summary = sweep.collect(base, out) if procs.main else {}
            else:
                summary = sweep.run_sweep(
                    base,
                    out,
                    force=force,
                    progress=progress,
                    checkpoint_every=checkpoint_every,
                    report=announce if procs.main else None,
                )
        if procs.main:
            path = report.write_report(out, force)
    except _user_errors(MissingDataError, DivergenceError) as error:
        remove_if_empty(out, existed)
        fail(_user_error(error))
    except OSError as error:
        remove_if_empty(out, existed)
        fail(_environment_error(error, out))
    if not procs.main:
        return
    done = sum(cell["done"] for cell in summary["cells"])
    typer.echo(f"sweep: {done} of {len(summary['cells'])} cells done; {out / 'sweep.png'}")
    typer.echo(f"verdict: {report.sweep_verdict(summary['cells'])}")
    typer.echo(f"report: {path}")


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    array = np.asarray(value)
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


@app.command("optimum")
def optimum_command(
    x: Annotated[Path, typer.Option("--x", help="Inputs X (b x N): .npy, .npz or .csv.")],
    y: Annotated[Path, typer.Option("--y", help="Targets Y (a x N): .npy, .npz or .csv.")],
    p: Annotated[float, typer.Option("--p", help="Drop probability at this width, in [0, 1).")],
    width: Annotated[int, typer.Option("--width", help="Hidden width d (a multiple of r).")],
    block_size: Annotated[
        int, typer.Option("--block-size", help="DropBlock block size r (1: Dropout).")
    ] = 1,
) -> None:
    """Print the closed-form global minimum of Dropout (r = 1) or grid DropBlock as JSON.

    Data are column-wise (one sample per column, as in the paper). Thm 2.7 corrected as in
    docs/theory.md: F*, beta = (r/d)(1-theta)/theta, rho*, rank(A*), the singular values of
    A* and of the target projected on X's row space, and the unfittable residual.
    """
    from . import Bernoulli, GridBlock, global_minimum
    from .experiments import _io

    try:
        X = _io.load_matrix(x, "X")
        Y = _io.load_matrix(y, "Y")
        if X.shape[1] != Y.shape[1]:
            raise _io.InputError(
                f"X and Y must have the same number of samples (columns), got X {X.shape} and "
                f"Y {Y.shape}"
            )
        scheme = Bernoulli(p) if block_size == 1 else GridBlock(p, block_size)
        opt = global_minimum(X, Y, scheme, width)
    except (ValueError, TypeError) as error:
        fail(str(error))
    result = {
        "scheme": scheme.to_dict(),
        "value": opt.value,
        "beta": opt.beta,
        "rho": opt.rho,
        "rank": opt.rank,
        "singular_values": np.asarray(opt.singular_values),
        "target_singular_values": np.asarray(opt.target_singular_values),
        "residual": opt.residual,
        "block_size": opt.block_size,
        "width": opt.width,
        "p": p,
    }
    if not all(_finite(value) for value in result.values()):
        fail("the optimum is not representable in float64 (an overflow); rescale X and Y")
    sys.stdout.write(json.dumps(_io.to_jsonable(result), allow_nan=False) + "\n")
