"""Algorithm 1 (compiled) against a plain NumPy loop, and its statistics against the exact
objective; full-batch L-BFGS against the closed-form global minimum."""

from __future__ import annotations

import numpy as np
import pytest

import structdrop as sd
from oracles import low_rank_problem
from structdrop import CheckpointError
from structdrop.linear import (
    DivergenceError,
    fit_gd,
    fit_sgd,
    record_points,
    run_sweep,
    safe_learning_rate,
)
from structdrop.linear import sgd as sgd_module
from structdrop.linear.sgd import draw_chunk

SCHEMES = [
    sd.Bernoulli(0.4),
    sd.GridBlock(0.5, 3),
    sd.SlidingBlock(0.3, 2, "clipped"),
    sd.Discrete(
        np.array([[1.0, 0.0, 1.0, 1.0, 0.5, 2.0], [0.0, 1.0, 1.0, 0.0, 1.5, 0.0]]),
        np.array([0.6, 0.4]),
    ),
]


def reference_unit_masks(X, Y, U, V, indices, scales, lr, lr_decay, t0):
    """Algorithm 1, steps 5-9, written as in the paper with D = diag(z / mu)."""
    U, V = U.copy(), V.copy()
    for step, (j, s) in enumerate(zip(indices, scales, strict=True)):
        eta = lr / (1 + (t0 + step) / lr_decay) if lr_decay else lr
        x, y, D = X[:, j], Y[:, j], np.diag(s)
        error = U @ D @ V.T @ x - y
        U, V = U - eta * np.outer(error, x @ V @ D), V - eta * np.outer(x, error @ U @ D)
    return U, V


@pytest.mark.parametrize("scheme", SCHEMES, ids=repr)
@pytest.mark.parametrize("lr_decay", [None, 25.0])
def test_engine_matches_reference_loop(scheme, lr_decay):
    X, Y, U0, V0 = low_rank_problem()
    iterations = 300
    trajectory = fit_sgd(
        X,
        Y,
        U0,
        V0,
        scheme,
        lr=1e-3,
        iterations=iterations,
        lr_decay=lr_decay,
        seed=7,
        record=[iterations],
    )
    rng = np.random.default_rng(7)
    indices, scales = draw_chunk(scheme, rng, iterations, X.shape[1], U0.shape[1])
    U, V = reference_unit_masks(X, Y, U0, V0, indices, scales, 1e-3, lr_decay, 0)
    # The compiled loop reassociates sums (fastmath "reassoc"): rounding differences of ~1e-15
    # per operation, amplified over 300 steps of a contracting iteration; 1e-9 is ample.
    np.testing.assert_allclose(trajectory.U, U, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(trajectory.V, V, rtol=1e-9, atol=1e-9)


def test_dropconnect_engine_matches_reference_loop():
    X, Y, U0, V0 = low_rank_problem()
    scheme, iterations = sd.DropConnect(0.3), 600  # more than one chunk of DropConnect steps
    trajectory = fit_sgd(
        X, Y, U0, V0, scheme, lr=1e-3, iterations=iterations, seed=3, record=[iterations]
    )
    rng = np.random.default_rng(3)
    draws = [
        draw_chunk(scheme, rng, n, X.shape[1], U0.shape[1], X.shape[0]) for n in (256, 256, 88)
    ]
    theta = scheme.keep_prob
    U, V = U0.copy(), V0.copy()
    for indices, keep in draws:
        for j, kept in zip(indices, keep, strict=True):
            mask = kept / theta
            x, y = X[:, j], Y[:, j]
            error = U @ (mask * V).T @ x - y  # eq. 19 for one sample
            U, V = (
                U - 1e-3 * np.outer(error, x @ (mask * V)),
                V - 1e-3 * np.outer(x, U.T @ error) * mask,
            )
    np.testing.assert_allclose(trajectory.U, U, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(trajectory.V, V, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheme", [sd.GridBlock(0.5, 2), sd.DropConnect(0.5)], ids=repr)
def test_same_seed_same_trajectory(scheme):
    X, Y, U0, V0 = low_rank_problem()
    runs = [
        fit_sgd(X, Y, U0, V0, scheme, lr=1e-3, iterations=500, seed=11, record=8) for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].expected, runs[1].expected)
    np.testing.assert_array_equal(runs[0].stochastic, runs[1].stochastic)
    np.testing.assert_array_equal(runs[0].U, runs[1].U)
    other = fit_sgd(X, Y, U0, V0, scheme, lr=1e-3, iterations=500, seed=12, record=8)
    assert not np.array_equal(other.U, runs[0].U)


@pytest.mark.parametrize("scheme", [*SCHEMES, sd.DropConnect(0.4)], ids=repr)
def test_stochastic_objective_is_unbiased_for_the_expected_one(scheme):
    """With a negligible step the weights stay put, so N x the single-sample masked loss is an
    iid sample whose mean is the exact objective (Lemma 2.1 / Thm 3.1 / eq. 19)."""
    X, Y, U0, V0 = low_rank_problem(seed=1)
    steps = 40_000
    trajectory = fit_sgd(X, Y, U0, V0, scheme, lr=1e-15, iterations=steps, seed=5, record=[steps])
    expected = trajectory.expected[0]
    rng = np.random.default_rng(5)
    if scheme.acts_on == "weights":
        indices, keep = draw_chunk(scheme, rng, 4000, X.shape[1], U0.shape[1], X.shape[0])
        losses = [
            np.sum((U0 @ (kept / 0.6 * V0).T @ X[:, j] - Y[:, j]) ** 2)
            for j, kept in zip(indices, keep, strict=True)
        ]
    else:
        indices, draws = draw_chunk(scheme, rng, 4000, X.shape[1], U0.shape[1])
        losses = [
            np.sum((U0 @ (s * (V0.T @ X[:, j])) - Y[:, j]) ** 2)
            for j, s in zip(indices, draws, strict=True)
        ]
    # The spread of the single-sample losses is estimated from 4000 independent draws made here.
    spread = X.shape[1] * np.std(losses) / np.sqrt(steps)
    # 5 standard errors: a correct sampler fails with probability < 6e-7 (normal tail; the mean
    # of 4e4 iid losses with finite variance is close to normal).
    assert abs(trajectory.stochastic[-1] - expected) <= 5 * spread


def test_average_step_is_the_gradient_of_the_expected_objective():
    """E[U_{t+1} - U_t] = -(lr / 2N) dF/dU with F the exact objective: Algorithm 1 is SGD on
    Lemma 2.1's deterministic objective (docs/theory.md: steps 8-9 are half the SGD step)."""
    X, Y, U0, V0 = low_rank_problem(seed=2)
    scheme = sd.GridBlock(0.4, 2)
    n, draws = X.shape[1], 20_000
    rng = np.random.default_rng(9)
    indices, scales = draw_chunk(scheme, rng, draws, n, U0.shape[1])
    steps_u = np.zeros_like(U0)
    steps_sq = np.zeros_like(U0)
    for j, s in zip(indices, scales, strict=True):
        hidden = s * (V0.T @ X[:, j])
        step = -np.outer(U0 @ hidden - Y[:, j], hidden)
        steps_u += step
        steps_sq += step * step
    mean = steps_u / draws
    stderr = np.sqrt(np.maximum(steps_sq / draws - mean**2, 0) / draws)
    gram = X @ X.T
    weight = 1 + scheme.characteristic(U0.shape[1])
    gradient = 2 * (U0 @ (weight * (V0.T @ gram @ V0)) - Y @ X.T @ V0)  # independent of gd.py
    # Per entry 5 standard errors; 30 entries: false failure < 30 * 6e-7 (normal tail).
    assert np.all(np.abs(mean + gradient / (2 * n)) <= 5 * stderr + 1e-12)


def test_expected_objective_decreases_and_stochastic_tracks_it():
    X, Y, U0, V0 = low_rank_problem(seed=4)
    scheme = sd.GridBlock(0.5, 2)
    trajectory = fit_sgd(
        X, Y, U0, V0, scheme, lr=2e-3, iterations=20_000, lr_decay=2e3, seed=0, record=16
    )
    assert trajectory.expected[-1] < 0.2 * trajectory.expected[0]
    assert np.all(np.isfinite(trajectory.stochastic))
    late = trajectory.iterations >= 1000
    # Interval means of 1e3+ noisy single-sample losses: agree with the objective within 30 %.
    assert np.all(np.abs(trajectory.stochastic[late] / trajectory.expected[late] - 1) < 0.3)


def test_sgd_approaches_the_global_minimum_with_decay():
    X, Y, U0, V0 = low_rank_problem(seed=5, d=6)
    scheme = sd.GridBlock(0.5, 2)
    optimum = sd.global_minimum(X, Y, scheme, 6)
    trajectory = fit_sgd(
        X,
        Y,
        U0,
        V0,
        scheme,
        lr=2e-3,
        iterations=200_000,
        lr_decay=5e3,
        seed=1,
        optimum=optimum.value,
    )
    assert trajectory.gap[-1] < 2e-2
    assert trajectory.gap[-1] > -1e-9  # F* is a lower bound (Thm 2.6)


def test_divergence_raises_with_lr_and_a_safe_suggestion():
    X, Y, U0, V0 = low_rank_problem()
    with pytest.raises(DivergenceError, match=r"lr=0\.5.*Try lr <= [0-9.e-]+"):
        fit_sgd(X, Y, U0, V0, sd.Bernoulli(0.5), lr=0.5, iterations=1000, seed=0)
    safe = safe_learning_rate(X, U0, V0, sd.Bernoulli(0.5))
    trajectory = fit_sgd(X, Y, U0, V0, sd.Bernoulli(0.5), lr=safe, iterations=1000, seed=0)
    assert np.all(np.isfinite(trajectory.expected))


def test_resume_after_interruption_gives_identical_results(tmp_path, monkeypatch):
    X, Y, U0, V0 = low_rank_problem()
    scheme = sd.SlidingBlock(0.5, 3)
    settings = dict(lr=1e-3, iterations=30_000, lr_decay=1e3, seed=2, record=12)
    uninterrupted = fit_sgd(X, Y, U0, V0, scheme, **settings)

    calls = {"n": 0}
    original = sgd_module.run_chunk

    def killed_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    path = tmp_path / "run.npz"
    monkeypatch.setattr(sgd_module, "run_chunk", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        fit_sgd(X, Y, U0, V0, scheme, checkpoint=path, **settings)
    monkeypatch.setattr(sgd_module, "run_chunk", original)
    assert path.exists()
    resumed = fit_sgd(X, Y, U0, V0, scheme, checkpoint=path, **settings)
    np.testing.assert_array_equal(resumed.expected, uninterrupted.expected)
    np.testing.assert_array_equal(resumed.stochastic, uninterrupted.stochastic)
    np.testing.assert_array_equal(resumed.U, uninterrupted.U)
    # A checkpoint of other settings or data is refused, never resumed.
    with pytest.raises(CheckpointError, match="belongs to another run"):
        fit_sgd(X, Y, U0, V0, scheme, checkpoint=path, **{**settings, "seed": 3})
    with pytest.raises(CheckpointError, match="belongs to another run"):
        fit_sgd(X, 1.5 * Y, U0, V0, scheme, checkpoint=path, **settings)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("scheme", [sd.Bernoulli(0.3), sd.GridBlock(0.5, 2)], ids=repr)
def test_fit_gd_reaches_the_closed_form_minimum(scheme):
    X, Y, U0, V0 = low_rank_problem(seed=6, d=8)
    optimum = sd.global_minimum(X, Y, scheme, 8)
    result = fit_gd(X, Y, U0, V0, scheme)
    assert optimum.rank <= 8
    # L-BFGS to ftol 1e-12 on a problem whose minimum F* is attained at this width.
    assert result.value == pytest.approx(optimum.value, rel=1e-7)
    assert result.value >= optimum.value * (1 - 1e-10)


@pytest.mark.parametrize(
    "scheme", [sd.GridBlock(0.5, 2), sd.DropConnect(0.3), sd.SlidingBlock(0.4, 3, "ring")], ids=repr
)
def test_fit_gd_gradient_matches_finite_differences(scheme):
    from structdrop.linear.gd import objective_and_gradient

    X, Y, U0, V0 = low_rank_problem(seed=7)
    (a, d), b = U0.shape, V0.shape[0]
    function = objective_and_gradient(sd.Gram.from_data(X, Y), scheme, a, b, d)
    point = np.concatenate([U0.ravel(), V0.ravel()])
    value, gradient = function(point)
    assert value == pytest.approx(float(sd.expected_loss(Y, U0, V0, X, scheme)), rel=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(5):
        direction = rng.standard_normal(point.size)
        h = 1e-6
        numeric = (function(point + h * direction)[0] - function(point - h * direction)[0]) / (
            2 * h
        )
        # Central differences: error O(h^2 |f'''|) plus rounding eps |f| / h; 1e-6 relative.
        assert numeric == pytest.approx(gradient @ direction, rel=1e-6)


def _square(value: int) -> int:
    return value * value


def test_run_sweep_preserves_order_in_parallel():
    jobs = [{"value": v} for v in range(7)]
    assert run_sweep(_square, jobs, n_jobs=2) == [v * v for v in range(7)]
    assert run_sweep(_square, jobs, n_jobs=1) == [v * v for v in range(7)]
    with pytest.raises(ValueError, match="n_jobs must be >= 1, got 0"):
        run_sweep(_square, jobs, n_jobs=0)


def test_record_points():
    points = record_points(1000, 10)
    assert points[0] == 0 and points[-1] == 1000 and np.all(np.diff(points) > 0)
    np.testing.assert_array_equal(record_points(50, [10, 20]), [0, 10, 20, 50])
    with pytest.raises(ValueError, match="record points must lie in"):
        record_points(50, [60])


def test_trajectory_to_dict_is_json_serialisable():
    import json

    X, Y, U0, V0 = low_rank_problem()
    trajectory = fit_sgd(
        X, Y, U0, V0, sd.Bernoulli(0.2), lr=1e-3, iterations=100, seed=0, optimum=1.0
    )
    data = json.loads(json.dumps(trajectory.to_dict()))
    assert data["iterations"][-1] == 100 and len(data["gap"]) == len(data["expected"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": float("nan")}, "lr must be a finite number >= 0, got nan"),
        ({"iterations": 0}, "iterations must be >= 1, got 0"),
        ({"lr_decay": 0.0}, "lr_decay must be > 0 or None, got 0.0"),
    ],
)
def test_bad_settings_raise(change, message):
    X, Y, U0, V0 = low_rank_problem()
    settings = {"lr": 1e-3, "iterations": 10, **change}
    with pytest.raises(ValueError, match=message):
        fit_sgd(X, Y, U0, V0, sd.Bernoulli(0.2), **settings)


def test_bad_data_raise():
    X, Y, U0, V0 = low_rank_problem()
    with pytest.raises(ValueError, match="same number of samples"):
        fit_sgd(X[:, :-1], Y, U0, V0, sd.Bernoulli(0.2), lr=1e-3, iterations=10)
    with pytest.raises(ValueError, match="V0's rows must match X's rows"):
        fit_sgd(X, Y, U0, V0[:-1], sd.Bernoulli(0.2), lr=1e-3, iterations=10)
    bad = X.copy()
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"X must be finite, got inf at index \(2, 3\)"):
        fit_sgd(bad, Y, U0, V0, sd.Bernoulli(0.2), lr=1e-3, iterations=10)
    with pytest.raises(ValueError, match="block_size must divide"):
        fit_sgd(X, Y, U0, V0, sd.GridBlock(0.2, 4), lr=1e-3, iterations=10)
    with pytest.raises(TypeError, match="scheme must be a structdrop Scheme"):
        fit_sgd(X, Y, U0, V0, 0.5, lr=1e-3, iterations=10)


class _Stopped(Exception):
    """Stands for the process dying right after a checkpoint was written."""


RESUME_SETTINGS = dict(lr=1e-3, iterations=3_000, lr_decay=1e3, seed=2, record=8)


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 2e-3},
        {"lr_decay": 2e3},
        {"lr_decay": None},
        {"iterations": 4_000},
        {"record": 9},
        {"record": [10, 100, 1000]},
    ],
    ids=["lr", "lr_decay", "no-lr_decay", "iterations", "record-count", "record-points"],
)
@pytest.mark.parametrize("finished", [False, True], ids=["interrupted", "finished"])
def test_a_checkpoint_of_other_settings_is_refused_not_resumed(tmp_path, change, finished):
    """A checkpoint written with one learning rate, decay, length or set of record points
    belongs to another run: fit_sgd with the new settings refuses it (CheckpointError), and
    leaves the file as it was."""
    X, Y, U0, V0 = low_rank_problem()
    scheme = sd.GridBlock(0.5, 3)
    path = tmp_path / "run.npz"
    if finished:
        fit_sgd(X, Y, U0, V0, scheme, checkpoint=path, **RESUME_SETTINGS)
    else:
        original = sgd_module.RunState.save

        def save(self, path, fingerprint):
            original(self, path, fingerprint)
            raise _Stopped

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sgd_module.RunState, "save", save)
            with pytest.raises(_Stopped):
                fit_sgd(X, Y, U0, V0, scheme, checkpoint=path, **RESUME_SETTINGS)
    written = path.read_bytes()
    with pytest.raises(CheckpointError, match="belongs to another run"):
        fit_sgd(X, Y, U0, V0, scheme, checkpoint=path, **{**RESUME_SETTINGS, **change})
    assert path.read_bytes() == written
    # the same settings still resume from it, to the run that was never interrupted
    resumed = fit_sgd(X, Y, U0, V0, scheme, checkpoint=path, **RESUME_SETTINGS)
    reference = fit_sgd(X, Y, U0, V0, scheme, **RESUME_SETTINGS)
    np.testing.assert_array_equal(resumed.expected, reference.expected)
    np.testing.assert_array_equal(resumed.U, reference.U)
