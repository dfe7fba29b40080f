"""Gram form vs direct evaluation of the DropBlock objective (Lemma 2.1, eq. 4-5).

At the paper's scale (a = 80, b = 100, d = 50, block size 5, p = 0.5) for N = 1e3, 1e4, 1e5:

* "as written": ``||Y - U V^T X||^2 + (1-theta)/theta sum_i ||U_i V_i^T X||_F^2``, block by block;
* "features": ``G = V^T X``, then ``||Y - U G||^2 + <Cbar, U^T U * G G^T>`` (eq. 15);
* ours: ``Gram.from_data(X, Y)`` once, then ``expected_loss`` per evaluation, cost free of N.

Prints the time ratios (baseline / ours, measured in this run) and the relative disagreement.
Run: ``python benchmarks/bench_objectives.py``.
"""

from __future__ import annotations

import numpy as np

import structdrop as sd
from _timing import best_time

A, B, D, BLOCK, P = 80, 100, 50, 5, 0.5


def as_written(Y, U, V, X, theta: float, block: int) -> float:
    fit = np.sum((Y - U @ V.T @ X) ** 2)
    blocks = sum(
        np.sum((U[:, i : i + block] @ (V[:, i : i + block].T @ X)) ** 2)
        for i in range(0, U.shape[1], block)
    )
    return fit + (1 - theta) / theta * blocks


def via_features(Y, U, V, X, cbar: np.ndarray) -> float:
    G = V.T @ X
    return np.sum((Y - U @ G) ** 2) + np.sum(cbar * (U.T @ U) * (G @ G.T))


def main() -> None:
    rng = np.random.default_rng(0)
    scheme = sd.GridBlock(P, BLOCK)
    cbar = scheme.characteristic(D)
    U = rng.standard_normal((A, D))
    V = rng.standard_normal((B, D))
    truth = rng.standard_normal((A, 50)) @ rng.standard_normal((50, B))
    print(f"DropBlock objective, a={A} b={B} d={D} r={BLOCK} p={P}; ratios = baseline / ours")
    header = (
        f"{'N':>7} | {'as written / ours':>17} | {'features / ours':>15} | "
        f"{'build Gram / as written':>23} | {'rel. diff':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in (1_000, 10_000, 100_000):
        X = rng.standard_normal((B, n))
        Y = truth @ X
        stats = sd.Gram.from_data(X, Y)
        ours = best_time(lambda stats=stats: stats.expected_loss(U, V, scheme))
        written = best_time(lambda X=X, Y=Y: as_written(Y, U, V, X, 1 - P, BLOCK), repeat=3)
        features = best_time(lambda X=X, Y=Y: via_features(Y, U, V, X, cbar), repeat=3)
        build = best_time(lambda X=X, Y=Y: sd.Gram.from_data(X, Y), repeat=3)
        exact = as_written(Y, U, V, X, 1 - P, BLOCK)
        diff = abs(float(stats.expected_loss(U, V, scheme)) - exact) / exact
        print(
            f"{n:>7} | {written / ours:>16.1f}x | {features / ours:>14.1f}x | "
            f"{build / written:>22.2f}x | {diff:>9.1e}"
        )
    print(
        f"\nours per evaluation at N=1e5: {ours * 1e6:.0f} us "
        "(the same at every N: the Gram statistics are built once per data set)"
    )


if __name__ == "__main__":
    main()
