"""The ``structdrop`` command line.

``structdrop reproduce synthetic`` reproduces the paper's synthetic experiments (figures, JSON
data, ``REPORT.md``); ``structdrop optimum`` prints the closed-form global minimum (Thm 2.7,
corrected in NOTES.md) of Dropout/DropBlock for data files. Bad input gives a one-line error and
exit status 2, with nothing written: a problem of the user's input or environment (a bad option,
an unreadable file, an output folder that is not writable, a damaged or foreign checkpoint, a
missing device) is one line on stderr, never a traceback. Errors of the program itself are not
dressed up as usage errors: they keep their traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import typer

from ._files import remove_stale_temporaries_under

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

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    """Print ``Error: message`` (its first line) on stderr and exit with status 2."""
    typer.echo(f"Error: {str(message).strip().splitlines()[0]}", err=True)
    raise typer.Exit(code=EXIT_USAGE)


def _terminate_gracefully() -> None:
    """SIGTERM unwinds like Ctrl-C (workers stopped, temporary files removed, checkpoints kept)
    instead of killing the process where it stands."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handler)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's input or environment, reported in one line."""
    from ._checkpoint import CheckpointError
    from .experiments._io import InputError

    return (InputError, CheckpointError)


@reproduce.command("synthetic")
def synthetic_command(
    figure: Annotated[
        list[str] | None,
        typer.Option(
            "--figure",
            "-f",
            help="Figure to run (repeatable): fig1, fig3, fig4, fig5, fig6, head (dominant "
            "head), gap (fixed-width gap). Default: all.",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Far fewer iterations (smoke tests).")
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("results"),
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of data and runs.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute figures whose JSON already exists.")
    ] = False,
) -> None:
    """Sec. 5.1/5.3 and App. E at the paper's scale, and two experiments beyond the paper.

    Writes <out>/<figure>.png, <out>/<figure>.json and <out>/REPORT.md. Finished figures are
    skipped unless --force; an interrupted run resumes from its checkpoints.
    """
    from .experiments import _io, report, synthetic
    from .linear import DivergenceError

    _terminate_gracefully()
    try:
        names = synthetic.check_figures(figure)
        _io.check_out_dir(out)
    except _io.InputError as error:
        fail(str(error))
    began = [time.perf_counter()]

    def announce(name: str, status: str, data: dict[str, Any] | None) -> None:
        now = time.perf_counter()
        if status == "skipped":
            typer.echo(f"{name}: already done, skipped (use --force to recompute)")
        else:
            assert data is not None
            typer.echo(f"{name}: done in {now - began[0]:.1f} s{_headline(name, data)}")
        began[0] = now

    try:
        synthetic.run(
            names, out, quick=quick, seed=seed, force=force, progress=True, report=announce
        )
    except (DivergenceError, *_user_errors()) as error:
        fail(str(error))
    except KeyboardInterrupt:
        remove_stale_temporaries_under(out)  # what stopped workers were writing
        typer.echo("interrupted: rerun the same command to resume from the checkpoints", err=True)
        raise typer.Exit(code=130) from None
    path = report.write_report(out)
    typer.echo(f"report: {path}")


@reproduce.command("deep")
def deep_command(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            help="digits (bundled, offline), mnist, fashion-mnist, cifar10 (files under "
            "--data-dir) or synthetic32.",
        ),
    ] = "digits",
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Epochs (default: the preset's).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A tiny run (smoke tests).")] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("results"),
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of data, init, masks.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute even if the results exist.")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where torchvision data sets lie.")
    ] = None,
    scheme: Annotated[
        str, typer.Option("--scheme", help="Mask law on the 80 features: grid or bernoulli.")
    ] = "grid",
    p: Annotated[float, typer.Option("--p", help="Drop probability, in [0, 1).")] = 0.5,
    block_size: Annotated[int, typer.Option("--block-size", help="Grid block size r.")] = 5,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Sec. 5.2 / Fig. 2: ResNet-50 with structured dropout before the last layer.

    Writes <out>/fig2.png, <out>/fig2.json (fig2_<dataset>.* for other data sets) and the Fig. 2
    section of <out>/REPORT.md. A checkpoint is saved every epoch; a killed run resumes. For
    several GPUs or nodes launch ``torchrun ... -m structdrop.experiments.deep`` with the same
    options.
    """
    from .experiments import _io, deep, report

    _terminate_gracefully()
    try:
        config = deep.config_from_options(
            dataset=dataset,
            epochs=epochs,
            quick=quick,
            seed=seed,
            data_dir=data_dir,
            scheme=scheme,
            p=p,
            block_size=block_size,
            device=device,
        )
        _io.check_out_dir(out)
    except (ValueError, TypeError) as error:  # the options themselves
        fail(str(error))
    try:
        data = deep.run_deep(config, out, force=force, progress=True)
    except (deep.MissingDataError, *_user_errors()) as error:
        fail(str(error))
    except KeyboardInterrupt:
        remove_stale_temporaries_under(out)
        typer.echo("interrupted: rerun the same command to resume from the checkpoint", err=True)
        raise typer.Exit(code=130) from None
    gap = data.get("gap")
    typer.echo(
        f"fig2 ({dataset}): gap to the theoretical minimum {gap if gap is None else f'{gap:.3g}'}"
    )
    typer.echo(f"report: {report.write_report(out)}")


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    array = np.asarray(value)
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def _headline(name: str, data: dict[str, Any]) -> str:
    if name == "fig1":
        return f" (final gap {data['final_gap']:.2e})"
    if name == "fig5":
        return " (final gaps " + ", ".join(f"{g:.2e}" for g in data["final_gaps"].values()) + ")"
    if name == "gap":
        return f" (gap at width {data['runs'][0]['width']}: {data['width_gap']:.2e})"
    return ""


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
    NOTES.md: the value F*, beta = (r/d)(1-theta)/theta, rho*, rank(A*), the singular values of
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


if __name__ == "__main__":
    app()
