"""structdrop.head_report: the capacity bound of Prop. 3.3 / Thm 2.7 by hand and with the
numbers Fig. 2's data has always recorded; the law's closed form or its absence; the report's
fields on a head with and without a bias. (Independent oracles: tests/test_head_oracles.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import structdrop as sd


def labels_of(counts: list[int]) -> torch.Tensor:
    """Class labels with ``counts[c]`` samples of class c."""
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def bound_report(counts: list[int], scheme: sd.Scheme, width: int) -> sd.HeadReport:
    """The report of a zero head on random features of one-hot targets with these counts: the
    capacity bound depends on the targets alone."""
    labels = labels_of(counts)
    features = torch.randn(len(labels), width, generator=torch.Generator().manual_seed(0))
    stats = sd.HeadStats(width, len(counts)).update(features, labels)
    return sd.head_report(stats, torch.zeros(len(counts), width), scheme)


def test_one_hot_singular_values_are_root_class_counts() -> None:
    report = bound_report([9, 4, 1], sd.Bernoulli(0.5), width=4)
    np.testing.assert_allclose(report.target_singular_values, [3.0, 2.0, 1.0], atol=1e-12)


@pytest.mark.parametrize(
    ("width", "beta", "expected", "value"),
    [
        # beta = (1-theta)/(theta d) = 1/4: tau = beta sum(x) = 6 beta / (1 + 3 beta) = 6/7.
        (4, 0.25, [15 / 7, 8 / 7, 1 / 7], 36 / 7),
        # beta = 1: tau = 6/4 > m_3 zeroes x_3; on two, tau = 5 - 2 tau = 5/3.
        (1, 1.0, [4 / 3, 1 / 3, 0.0], 28 / 3),
    ],
)
def test_dropout_prediction_is_a_soft_threshold(
    width: int, beta: float, expected: list[float], value: float
) -> None:
    """Prop. 3.3 (with its 1/d): ``x_i = (m_i - tau)_+``, ``tau = beta sum_i x_i``; the value
    is ``sum (m_i - x_i)^2 + beta (sum x_i)^2``."""
    report = bound_report([9, 4, 1], sd.Bernoulli(0.5), width=width)
    assert report.beta == pytest.approx(beta)
    assert report.block_size == 1
    np.testing.assert_allclose(report.predicted_singular_values, expected, atol=1e-12)
    assert report.capacity_bound == pytest.approx(value, rel=1e-12)


def test_balanced_classes_shrink_uniformly_under_grid_dropblock() -> None:
    """Ten classes of four: all m_i = 2. With r = 5 < 10 the k-support norm of a flat vector
    is ``(sum x)^2 / r``, so ``x = m / (1 + beta a / r)`` with beta = (5/80)(0.5/0.5)."""
    report = bound_report([4] * 10, sd.GridBlock(0.5, 5), width=80)
    beta = 5 / 80
    x = 2.0 / (1.0 + beta * 10 / 5)
    np.testing.assert_allclose(report.predicted_singular_values, [x] * 10, rtol=1e-12)
    assert report.capacity_bound == pytest.approx(10 * (2 - x) ** 2 + beta * (10 * x) ** 2 / 5)


@pytest.mark.parametrize(
    ("counts", "scheme", "width", "value", "singular_values"),
    [
        (  # the --quick run's class counts
            [3, 1, 8, 6, 4, 8, 6, 5, 5, 4],
            sd.GridBlock(0.5, 5),
            80,
            5.2610943561906165,
            [
                2.5866491192169994,
                2.5866491192169994,
                2.207711737253987,
                2.207711737253987,
                1.9942899719705987,
                1.9942899719705987,
                1.7582219944708088,
                1.7582219944708088,
                1.490272802039686,
                0.758221994470809,
            ],
        ),
        (
            [7, 5, 5, 3, 1],
            sd.Bernoulli(0.3),
            20,
            1.8778312268594697,
            [
                2.455107348349112,
                2.0454240147843112,
                2.0454240147843112,
                1.5414068448533988,
                0.8093560372845217,
            ],
        ),
        (
            [7, 5, 5, 3, 1],
            sd.DropConnect(0.2),
            20,
            1.1414268241694807,
            [
                2.5298696866689077,
                2.1201863531041067,
                2.1201863531041067,
                1.6161691831731944,
                0.8841183756043172,
            ],
        ),
        (
            [9, 7, 4, 4, 2, 1],
            sd.GridBlock(0.4, 4),
            8,
            8.114213562373095,
            [
                2.2499999999999996,
                1.9843134832984428,
                1.3585786437626903,
                1.3585786437626903,
                0.7727922061357856,
                0.35857864376269044,
            ],
        ),
    ],
)
def test_the_bound_keeps_the_numbers_fig2_has_always_recorded(
    counts: list[int], scheme: sd.Scheme, width: int, value: float, singular_values: list[float]
) -> None:
    """The theoretical minimum as Fig. 2's data recorded it before it was measured through the
    head API (``theory.value`` and ``theory.singular_values`` in fig2*.json)."""
    report = bound_report(counts, scheme, width)
    assert report.capacity_bound == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(report.predicted_singular_values, singular_values, rtol=1e-12)
    np.testing.assert_allclose(report.target_singular_values, np.sqrt(sorted(counts)[::-1]))


@pytest.mark.parametrize(
    ("scheme", "closed_form"),
    [
        (sd.Bernoulli(0.3), True),
        (sd.GridBlock(0.5, 3), True),
        (sd.DropConnect(0.2), True),  # masks on U regularize as Dropout
        (sd.SlidingBlock(0.2, 3), False),
        (sd.Discrete(np.eye(6)[[0, 1, 2]] + 0.5, np.array([0.2, 0.3, 0.5])), False),
    ],
)
def test_the_law_says_whether_it_has_a_closed_form(scheme: sd.Scheme, closed_form: bool) -> None:
    report = bound_report([2, 2], scheme, 6)
    assert (report.capacity_bound is not None) == closed_form
    assert (report.predicted_singular_values is not None) == closed_form
    assert (report.block_norms is not None) == closed_form  # blocks of Thm 2.5
    if not closed_form:
        assert "no closed form" in report.capacity_note and report.capacity_gap is None
    assert report.scheme == scheme.to_dict()


def test_the_report_on_a_head_with_a_bias_is_of_the_centred_problem() -> None:
    """A free bias fits the targets' mean: the bound is that of the centred targets (their
    singular values: of ``diag(n) - n n^T / N``), below the one without a bias; the best
    bias is ``(Y - U* G) 1 / N``."""
    counts = [6, 3, 3]
    labels = labels_of(counts)
    features = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(1)) + 2.0
    stats = sd.HeadStats(6, 3).update(features, labels)
    weight = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    plain = sd.head_report(stats, weight, sd.Bernoulli(0.3))
    biased = sd.head_report(stats, weight, sd.Bernoulli(0.3), bias=torch.zeros(3))
    assert biased.centred and not plain.centred
    assert biased.objective == pytest.approx(plain.objective, rel=1e-12)  # b = 0: same head
    n = np.array(counts, dtype=float)
    centred = np.sqrt(np.clip(np.linalg.eigvalsh(np.diag(n) - np.outer(n, n) / n.sum()), 0, None))
    np.testing.assert_allclose(biased.target_singular_values, centred[::-1], atol=1e-12)
    assert biased.capacity_bound < plain.capacity_bound
    assert biased.best_objective <= plain.best_objective
    G = features.double().T
    Y = torch.nn.functional.one_hot(labels, 3).double().T
    expected_bias = (Y - biased.best_weight @ G).mean(1)
    torch.testing.assert_close(biased.best_bias, expected_bias, rtol=1e-10, atol=1e-12)


def test_the_report_is_json() -> None:
    report = bound_report([3, 2], sd.GridBlock(0.2, 2), 4)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["scheme"] == {"law": "GridBlock", "p": 0.2, "block_size": 2}
    assert "best_weight" not in data and data["capacity_bound"] == report.capacity_bound
    assert "gap to the best head" in report.summary()
