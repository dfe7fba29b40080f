"""Algorithm 1 per step: compiled engine vs a straightforward NumPy loop, and vs the flop bound.

Paper scale (a = 80, b = 100, d = 50, N = 1000), GridBlock(p = 0.5, block size 5). A step costs
about 44k flops (h = V^T x: 2bd, U (s*h): 2ad, the U update 2ad, U^T e: 2ad, the V update 2bd),
so the flop bound is 44k / (single-core dgemm rate, measured here with one BLAS thread).
Prints: NumPy loop / ours (goal >= 8x) and ours / flop bound (goal <= 2.5x), all from this run.

The flop bound is not the floor. A step must read U (a x d) and V (b x d) once to form
``h = V^T x`` and ``e = U (s*h) - y`` before it can update them, then read and write them again:
3 passes over 72 KB (at the paper's sizes), 216 KB per step, for 44k flops, an arithmetic
intensity of about 0.2 flop/byte. U and V do not fit in L1 (32 KB per core here) but do in L2, so
the step is bound by L2 bandwidth, not by the FMA units (a roofline). The benchmark measures that
floor in the same run: one read pass and one read-modify-write pass (``w -= c_i v``, the form of
the updates) over arrays of U's and V's shapes, compiled the same way as the engine, and prints
ours / memory floor. Running several independent runs in one loop would not lower it: each run
has its own U and V, so the bytes per step per run stay the same.
Run: ``python benchmarks/bench_sgd.py``.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import structdrop as sd
from structdrop.linear import fit_sgd
from structdrop.linear._engine import FASTMATH

A, B, D, N, BLOCK, P, LR = 80, 100, 50, 1000, 5, 0.5, 1e-6


def numpy_loop(X, Y, U, V, scheme, lr, iterations, rng) -> None:
    """Algorithm 1 as one would write it in NumPy: one mask and one sample per step."""
    mean = scheme.mean(U.shape[1])
    for _ in range(iterations):
        j = rng.integers(X.shape[1])
        s = scheme.sample(1, U.shape[1], rng)[0] / mean
        x = X[:, j]
        hidden = s * (V.T @ x)
        error = U @ hidden - Y[:, j]
        grad_v = np.outer(x, (U.T @ error) * s)
        U -= lr * np.outer(error, hidden)
        V -= lr * grad_v


def flops_per_second() -> float:
    """Single-core dgemm rate on a 512 x 512 product."""
    rng = np.random.default_rng(0)
    left, right = rng.standard_normal((512, 512)), rng.standard_normal((512, 512))
    best = np.inf
    for _ in range(20):
        start = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - start)
    return 2 * 512**3 / best


@numba.njit(cache=True, fastmath=FASTMATH)
def _read_pass(W: np.ndarray, v: np.ndarray, out: np.ndarray, repeats: int) -> None:
    """``out = W v``, row by row: one read of W per repeat (the pass that forms h and e)."""
    rows, cols = W.shape
    for _ in range(repeats):
        for i in range(rows):
            acc = 0.0
            for k in range(cols):
                acc += W[i, k] * v[k]
            out[i] += acc


@numba.njit(cache=True, fastmath=FASTMATH)
def _update_pass(W: np.ndarray, c: np.ndarray, v: np.ndarray, repeats: int) -> None:
    """``W -= c v^T``: one read and one write of W per repeat (the form of both updates)."""
    rows, cols = W.shape
    for _ in range(repeats):
        for i in range(rows):
            ci = c[i] * 1e-30
            for k in range(cols):
                W[i, k] -= ci * v[k]


def memory_floor(repeats: int = 20_000) -> tuple[float, float]:
    """Seconds per step of the memory passes alone (two reads and one read-modify-write of U
    and of V), and the bytes they move."""
    rng = np.random.default_rng(0)
    U, V = rng.standard_normal((A, D)), rng.standard_normal((B, D))
    v, out = rng.standard_normal(D), np.zeros(max(A, B))
    _read_pass(U, v, out, 1), _update_pass(U, out, v, 1)  # compile
    best = np.inf
    for _ in range(5):
        start = time.perf_counter()
        for W in (U, V):
            _read_pass(W, v, out, 2 * repeats)
            _update_pass(W, out, v, repeats)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best, 8.0 * 4 * (A + B) * D


def per_step(function, iterations: int, repeat: int = 3) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        function(iterations)
        best = min(best, (time.perf_counter() - start) / iterations)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, N))
    Y = rng.standard_normal((A, 50)) @ rng.standard_normal((50, B)) @ X
    U0, V0 = rng.standard_normal((A, D)), rng.standard_normal((B, D))
    with threadpool_limits(limits=1):
        rate = flops_per_second()
        bound = (2 * B * D + 6 * A * D + 2 * B * D) / rate
        floor, moved = memory_floor()
        rows = []
        for scheme, steps in (
            (sd.GridBlock(P, BLOCK), 200_000),
            (sd.Bernoulli(P), 200_000),
            (sd.DropConnect(P), 20_000),
        ):
            fit_sgd(X, Y, U0, V0, scheme, lr=LR, iterations=100, seed=0)  # compile
            ours = per_step(
                lambda n, s=scheme: fit_sgd(X, Y, U0, V0, s, lr=LR, iterations=n, seed=0, record=2),
                steps,
            )
            naive = per_step(
                lambda n, s=scheme: numpy_loop(
                    X, Y, U0.copy(), V0.copy(), s, LR, n, np.random.default_rng(1)
                ),
                5_000,
                repeat=1,
            )
            rows.append((repr(scheme), naive / ours, ours / bound, ours, ours / floor))
    print(
        f"Algorithm 1 at a={A} b={B} d={D} N={N}; one BLAS thread; "
        f"dgemm {rate / 1e9:.1f} GFLOP/s, flop bound {bound * 1e6:.2f} us/step"
    )
    print(
        f"memory floor: {moved / 1e3:.0f} KB per step (2 reads + 1 read-modify-write of U, V) in "
        f"{floor * 1e6:.2f} us = {moved / floor / 1e9:.0f} GB/s (L2-resident, measured here)"
    )
    header = f"{'NumPy loop / ours':>17} | {'ours / flop bound':>17} | {'ours / memory floor':>19}"
    print(f"{'scheme':>44} | {header}")
    for name, speedup, over_bound, _, over_floor in rows:
        print(f"{name:>44} | {speedup:>16.1f}x | {over_bound:>16.2f}x | {over_floor:>18.2f}x")
    print(
        "\nper step, ours: "
        + ", ".join(f"{n.split('(')[0]} {t * 1e6:.2f} us" for n, _, _, t, _ in rows)
    )


if __name__ == "__main__":
    main()
