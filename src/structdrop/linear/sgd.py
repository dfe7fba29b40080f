"""Algorithm 1: single-sample SGD on the dropout objective of a linear network ``U V^T x``.

Each step draws a sample uniformly with replacement and one fresh mask, and takes the stochastic
gradient step of Algorithm 1 (steps 7-9); this is SGD on eq. 3 (times N), whose expectation is the
deterministic objective of Lemma 2.1 / Thm 3.1. The inner loop is compiled (:mod:`._engine`); the
exact expected objective is recorded at ~log-spaced iterations in the Gram form.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import _validation as check
from .._arrays import to_numpy
from .._checkpoint import CheckpointError, check_array, load_checkpoint, save_checkpoint
from .._files import file_kind
from .._validation import as_generator
from ..objectives import Gram, weight_keep_prob
from ..schemes import Scheme, check_scheme

__all__ = ["DivergenceError", "Trajectory", "fit_sgd", "record_points", "safe_learning_rate"]

#: Steps per compiled call: bounds the memory of pre-drawn masks (chunk x d floats; a law on
#: weights such as DropConnect draws chunk x b x d uniforms, so its chunks are shorter).
CHUNK = 8192
DROPCONNECT_CHUNK = 256


class DivergenceError(ValueError):
    """SGD diverged: the loss became non-finite or exploded."""


@dataclass(frozen=True)
class Trajectory:
    """A training run of Algorithm 1.

    Attributes:
        iterations: the recorded iteration numbers (0 first, the last iteration last).
        expected: the exact expected objective (Lemma 2.1 / Thm 3.1) at each recorded iteration.
        stochastic: N times the mean single-sample masked loss over the steps since the previous
            record point (at iteration 0, the expected objective): an unbiased estimate of the
            objective along the run, as plotted in the paper's Fig. 1 (top).
        gap: ``(expected - optimum) / optimum`` when an optimum was given, else None.
        U: the final U (a x d).
        V: the final V (b x d).
        config: the settings of the run.
    """

    iterations: np.ndarray
    expected: np.ndarray
    stochastic: np.ndarray
    gap: np.ndarray | None
    U: np.ndarray
    V: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, weights: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict (the final weights only if ``weights``)."""
        out: dict[str, Any] = {
            "iterations": self.iterations.tolist(),
            "expected": self.expected.tolist(),
            "stochastic": self.stochastic.tolist(),
            "gap": None if self.gap is None else self.gap.tolist(),
            "config": self.config,
        }
        if weights:
            out["U"] = self.U.tolist()
            out["V"] = self.V.tolist()
        return out


def record_points(iterations: int, record: int | Sequence[int]) -> np.ndarray:
    """Iterations at which the objective is recorded: 0, ~log-spaced points, and the last one."""
    if isinstance(record, int | np.integer) and not isinstance(record, bool):
        count = check.check_positive_int(record, "record")
        points = np.geomspace(1, iterations, num=max(count - 1, 1))
        points = np.concatenate([[0], np.round(points).astype(np.int64), [iterations]])
    else:
        points = np.asarray(record, dtype=np.int64)
        if points.ndim != 1 or points.size == 0:
            raise ValueError(f"record must be an int or a sequence of iterations, got {record!r}")
        if points.min() < 0 or points.max() > iterations:
            raise ValueError(
                f"record points must lie in [0, iterations={iterations}], "
                f"got {points.min()}..{points.max()}"
            )
        points = np.concatenate([[0], points, [iterations]])
    return np.unique(points)


def safe_learning_rate(X: np.ndarray, U: np.ndarray, V: np.ndarray, scheme: Scheme) -> float:
    """A learning rate below which Algorithm 1 is stable near (U, V): the inverse curvature
    bound ``min_i mu_i / (max_j ||x_j||^2 (||U||_2^2 + ||V||_2^2))``."""
    theta = weight_keep_prob(scheme)
    mu = theta if theta is not None else float(np.min(scheme.mean(U.shape[1])))
    sample_norm = float(np.max(np.sum(X * X, axis=0)))
    spectral = np.linalg.norm(U, 2) ** 2 + np.linalg.norm(V, 2) ** 2
    return mu / max(sample_norm * spectral, np.finfo(float).tiny)


def _fingerprint(*arrays: np.ndarray, **settings: Any) -> str:
    """A digest of a run's inputs (values, shapes and dtypes) and settings: its identity."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


CHECKPOINT_KIND = "structdrop.linear.fit_sgd"


@dataclass
class RunState:
    """Everything a run needs to continue exactly where it stopped."""

    U: np.ndarray
    V: np.ndarray
    position: int  # index into the record points reached
    expected: list[float]
    stochastic: list[float]
    rng_state: Mapping[str, Any]

    @classmethod
    def start(
        cls, U0: np.ndarray, V0: np.ndarray, objective: float, rng: np.random.Generator
    ) -> RunState:
        """The state at iteration 0: copies of the initial weights, whose exact objective is
        ``objective``, and the generator's state."""
        return cls(U0.copy(), V0.copy(), 0, [objective], [objective], rng.bit_generator.state)

    def save(self, path: Path, fingerprint: str) -> None:
        """One checkpoint file: weights, progress and generator state bound together."""
        save_checkpoint(
            path, kind=CHECKPOINT_KIND, identity=fingerprint, state=dataclasses.asdict(self)
        )

    @classmethod
    def load(
        cls,
        path: Path,
        fingerprint: str,
        shapes: tuple[tuple[int, int], tuple[int, int]],
        points: int,
        generator: np.random.BitGenerator,
    ) -> RunState | None:
        """The verified state at ``path`` (None when there is none); a checkpoint of another
        run, or one whose arrays, progress or generator state (which must be a state of
        ``generator``'s kind) do not fit this run, raises CheckpointError."""

        def check(state: dict[str, Any]) -> None:
            check_array(state["U"], "U", shapes[0], np.float64)
            check_array(state["V"], "V", shapes[1], np.float64)
            position = state["position"]
            if isinstance(position, bool) or not isinstance(position, int):
                raise ValueError(f"position is {position!r}, expected an int")
            if not 0 <= position < points:
                raise ValueError(f"position {position} is outside the {points} record points")
            for name in ("expected", "stochastic"):
                values = state[name]
                if len(values) != position + 1 or not all(
                    isinstance(v, float) and math.isfinite(v) for v in values
                ):
                    raise ValueError(f"{name} does not hold {position + 1} finite numbers")
            _check_generator_state(state["rng_state"], generator)

        state = load_checkpoint(path, kind=CHECKPOINT_KIND, identity=fingerprint, check=check)
        if state is None:
            return None
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


def _check_generator_state(rng_state: Any, generator: np.random.BitGenerator) -> None:
    """Raise ValueError unless ``rng_state`` is a state that ``generator`` can take: it is set
    on a copy, so that ``generator`` is left as it is whatever the outcome."""
    name = type(generator).__name__
    if not isinstance(rng_state, dict):
        raise ValueError(
            f"rng_state is not a {name} generator state (a {type(rng_state).__name__})"
        )
    try:
        copy.deepcopy(generator).state = rng_state
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
        problem = " ".join(str(error).split())[:200] or type(error).__name__
        raise ValueError(
            f"rng_state is not a {name} generator state ({type(error).__name__}: {problem})"
        ) from None


def _checkpoint_path(checkpoint: str | os.PathLike[str] | None) -> Path | None:
    """``checkpoint`` as a path that a checkpoint file can be written at, checked before any
    work: not a folder, and not under a file (which would fail the first save, after the
    run's first stretch of work)."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"checkpoint must be a file path or None, got {checkpoint!r}")
    if not os.fspath(checkpoint).strip():
        raise ValueError(f"checkpoint must be a file path or None, got {checkpoint!r}")
    path = Path(checkpoint)
    for place in (path, *path.parents):  # the path, then its folders, nearest first
        try:
            mode = place.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # missing (created on the first save), or under a file found further up
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise CheckpointError(
                path, f"cannot be used ({reason})", "choose another checkpoint path"
            ) from None
        if place == path:
            if stat.S_ISDIR(mode):
                raise CheckpointError(
                    path, "is a folder where a checkpoint file should be", "remove it"
                )
            continue
        if not stat.S_ISDIR(mode):
            raise CheckpointError(
                path,
                f"lies under {place}, which is {file_kind(mode)}, not a folder",
                f"choose another checkpoint path, or move {place} out of the way",
            )
        break  # the nearest existing folder: the first save creates the rest
    return path


def fit_sgd(
    X: np.ndarray,
    Y: np.ndarray,
    U0: np.ndarray,
    V0: np.ndarray,
    scheme: Scheme,
    lr: float,
    iterations: int,
    lr_decay: float | None = None,
    seed: np.random.Generator | int | None = None,
    record: int | Sequence[int] = 64,
    optimum: float | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Trajectory:
    """Train ``U V^T x`` with Algorithm 1 under the mask law ``scheme``.

    Masks on the hidden units (Bernoulli, GridBlock, SlidingBlock, Discrete) are scaled by
    ``1 / mu`` (eq. 13); DropConnect masks V's entries, scaled by ``1 / theta`` (eq. 19).

    Args:
        X: (b, N) inputs.
        Y: (a, N) targets.
        U0: (a, d) initial U (not modified).
        V0: (b, d) initial V (not modified).
        scheme: the mask law.
        lr: learning rate eta > 0 (steps 8-9 of Algorithm 1, gradient factor 2 absorbed).
        iterations: number of SGD steps.
        lr_decay: if given, ``eta_t = lr / (1 + t / lr_decay)``; else constant.
        seed: a ``numpy.random.Generator``, an integer seed, or None.
        record: number of ~log-spaced record points, or the iterations to record at.
        optimum: a reference value (e.g. ``global_minimum(...).value``) for the relative gap.
        checkpoint: a file path: the state (weights, progress, generator) is saved there as one
            atomic file at every record point, and a run with the same inputs and settings
            resumes from it with identical results. The file is verified before use: one of
            another run, a damaged or an inconsistent one raises
            :class:`~structdrop._checkpoint.CheckpointError` (delete it to start afresh).
        progress: show a progress bar (tqdm).

    Returns:
        The :class:`Trajectory`.

    Raises:
        DivergenceError: the loss became non-finite or exploded; the message names ``lr`` and a
            safe learning rate.
        CheckpointError: ``checkpoint`` holds a file that is not this run's verified state.
    """
    scheme = check_scheme(scheme)
    X, Y, U_init, V_init = _check_data(X, Y, U0, V0)
    lr, iterations, decay, optimum = _check_settings(lr, iterations, lr_decay, optimum)
    d, n_samples = U_init.shape[1], X.shape[1]
    scheme.check_width(d)
    points = record_points(iterations, record)
    rng = as_generator(seed)
    stats = Gram.from_data(X, Y)
    path = _checkpoint_path(checkpoint)
    config = {
        "scheme": scheme.to_dict(),
        "lr": lr,
        "lr_decay": lr_decay,
        "iterations": iterations,
        "seed": seed if isinstance(seed, int) else None,
        "N": n_samples,
        "width": d,
    }
    fingerprint = _fingerprint(X, Y, U_init, V_init, points, rng=rng.bit_generator.state, **config)
    state = None
    if path is not None:
        shapes = (U_init.shape, V_init.shape)
        state = RunState.load(path, fingerprint, shapes, points.size, rng.bit_generator)
    if state is None:
        state = RunState.start(
            U_init, V_init, float(stats.expected_loss(U_init, V_init, scheme)), rng
        )
    rng.bit_generator.state = state.rng_state
    assert stats.yy is not None  # from_data with Y
    limit = 1e8 * max(state.expected[0] / n_samples, float(stats.yy) / n_samples, 1e-300)
    steps = _Steps(np.ascontiguousarray(X.T), np.ascontiguousarray(Y.T), scheme, lr, decay, limit)
    bar = _progress(iterations, points[state.position], progress)
    for position in range(state.position + 1, points.size):
        start, stop = int(points[position - 1]), int(points[position])
        try:
            total = steps.run(state.U, state.V, rng, start, stop, bar)
        except DivergenceError as error:
            safe = safe_learning_rate(X, U_init, V_init, scheme)
            raise DivergenceError(
                f"{error} Try lr <= {safe:.3g} (a stability bound from the data and the initial "
                "weights), or add lr_decay."
            ) from None
        state.expected.append(float(stats.expected_loss(state.U, state.V, scheme)))
        state.stochastic.append(n_samples * total / (stop - start))
        state.position = position
        state.rng_state = rng.bit_generator.state
        if path is not None:
            state.save(path, fingerprint)
    if bar is not None:
        bar.close()
    return _trajectory(state, points, optimum, config)


def _check_data(
    X: Any, Y: Any, U0: Any, V0: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """X, Y, U0, V0 as float64 NumPy matrices of shapes that fit together."""
    X, Y = (to_numpy(check.check_matrix(m, n)) for m, n in ((X, "X"), (Y, "Y")))
    U0, V0 = (to_numpy(check.check_matrix(m, n)) for m, n in ((U0, "U0"), (V0, "V0")))
    check.check_same(Y.shape[1], X.shape[1], "X and Y must have the same number of samples N")
    check.check_same(U0.shape[0], Y.shape[0], "U0's rows must match Y's rows (a)")
    check.check_same(V0.shape[0], X.shape[0], "V0's rows must match X's rows (b)")
    check.check_same(U0.shape[1], V0.shape[1], "U0 and V0 must have the same number of columns d")
    return X, Y, U0, V0


def _check_settings(
    lr: Any, iterations: Any, lr_decay: Any, optimum: Any
) -> tuple[float, int, float, float | None]:
    """``(lr, iterations, decay, optimum)`` checked; ``decay`` is 0.0 for no decay."""
    lr = check.check_positive(lr, "lr")
    iterations = check.check_positive_int(iterations, "iterations")
    decay = 0.0 if lr_decay is None else check.check_nonnegative(lr_decay, "lr_decay")
    if lr_decay is not None and decay == 0.0:
        raise ValueError(f"lr_decay must be > 0 or None, got {lr_decay}")
    if optimum is not None:
        if getattr(optimum, "ndim", None) == 0 and hasattr(optimum, "item"):
            optimum = to_numpy(optimum).item()  # e.g. global_minimum(...).value for torch data
        optimum = check.check_nonnegative(optimum, "optimum")
    return lr, iterations, decay, optimum


def _trajectory(
    state: RunState, points: np.ndarray, optimum: float | None, config: dict[str, Any]
) -> Trajectory:
    expected = np.asarray(state.expected)
    gap = None if optimum is None else (expected - optimum) / max(optimum, np.finfo(float).tiny)
    return Trajectory(
        iterations=points,
        expected=expected,
        stochastic=np.asarray(state.stochastic),
        gap=gap,
        U=state.U,
        V=state.V,
        config=config,
    )


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=int(initial), unit="it", unit_scale=True, leave=False)


@dataclass(frozen=True)
class _Steps:
    """The SGD steps of a run: sample-major data, the mask law, the step sizes and the loss
    above which a step counts as diverged."""

    XT: np.ndarray
    YT: np.ndarray
    scheme: Scheme
    lr: float
    decay: float
    limit: float

    def run(
        self,
        U: np.ndarray,
        V: np.ndarray,
        rng: np.random.Generator,
        start: int,
        stop: int,
        bar: Any,
    ) -> float:
        """Steps ``start .. stop - 1`` on U and V in place, in chunks of pre-drawn masks; the sum
        of their single-sample losses. A DivergenceError names the step and ``lr``."""
        chunk = DROPCONNECT_CHUNK if self.scheme.acts_on == "weights" else CHUNK
        losses = np.empty(chunk)
        total = 0.0
        for chunk_start in range(start, stop, chunk):
            count = min(chunk, stop - chunk_start)
            done = run_chunk(
                self.XT, self.YT, U, V, self.scheme, rng, self.lr, self.decay, chunk_start,
                count, self.limit, losses,
            )  # fmt: skip
            if done < count or not np.isfinite(U).all() or not np.isfinite(V).all():
                raise DivergenceError(
                    f"SGD diverged at iteration {chunk_start + done} with lr={self.lr}: the single-"
                    f"sample loss reached {losses[min(done, count - 1)]:.3g}."
                )
            total += float(losses[:count].sum())
            if bar is not None:
                bar.update(count)
        return total


def draw_chunk(
    scheme: Scheme, rng: np.random.Generator, steps: int, n_samples: int, d: int, b: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The random draws of ``steps`` SGD steps, in the order the engine consumes them: sample
    indices, then the scaled masks ``z / mu`` (for a law on weights such as DropConnect, boolean
    masks of V's b x d entries, one per step)."""
    indices = rng.integers(0, n_samples, size=steps)
    theta = weight_keep_prob(scheme)
    if theta is not None:
        return indices, rng.random((steps, b, d)) < theta
    return indices, scheme.sample(steps, d, rng) / scheme.mean(d)


def run_chunk(
    XT: np.ndarray,
    YT: np.ndarray,
    U: np.ndarray,
    V: np.ndarray,
    scheme: Scheme,
    rng: np.random.Generator,
    lr: float,
    decay: float,
    t0: int,
    steps: int,
    limit: float,
    losses: np.ndarray,
) -> int:
    """Steps ``t0 .. t0 + steps - 1`` of Algorithm 1 on U and V in place (compiled), their
    single-sample losses in ``losses``; the number of steps done before a loss diverged."""
    from . import _engine  # numba: loaded when a run starts

    indices, masks = draw_chunk(scheme, rng, steps, XT.shape[0], U.shape[1], V.shape[0])
    theta = weight_keep_prob(scheme)
    if theta is not None:
        return _engine.sgd_dropconnect(
            XT, YT, U, V, indices, masks, theta, lr, decay, t0, limit, losses
        )
    return _engine.sgd_unit_masks(XT, YT, U, V, indices, masks, lr, decay, t0, limit, losses)
