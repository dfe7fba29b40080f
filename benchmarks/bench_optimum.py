"""Closed-form global minimum (Thm 2.7, corrected) vs a generic convex solver.

At the paper's scale (X: 100 x 1000, Y = U_true V_true^T X: 80 x 1000, rank 50; GridBlock with
p = 0.5 and block size 5 at width 50) the same convex problem

    min_W ||Y - W X||^2 + beta ||W X||_(r)^2

is solved by ``structdrop.global_minimum`` and by CVXPY as an SDP, using the variational form
``||A||_(r)^2 = min { tr(A^T T^-1 A) : 0 <= T <= I, tr T <= r }`` (McDonald et al. 2014) and the
Gram reduction: with ``L L^T = X X^T`` the singular values of W X are those of ``B = W L``.

Prints the time ratio (CVXPY / ours, same run), and compares the values two ways: with the
solver's reported optimum (within its tolerance), and with the objective evaluated exactly at the
solver's minimiser, an upper bound on the true minimum that ours must never exceed.
Run: ``python benchmarks/bench_optimum.py [--small]``.
"""

from __future__ import annotations

import sys
import time

import cvxpy as cp
import numpy as np

import structdrop as sd
from _timing import best_time

SOLVER_EPS = 1e-6  # SCS's relative and absolute tolerance (primal/dual residuals, duality gap)
TIME_LIMIT = 900.0  # seconds; SCS then returns its current iterate ("optimal_inaccurate")


def cvxpy_minimum(X: np.ndarray, Y: np.ndarray, beta: float, r: int) -> dict[str, float]:
    """The SDP in the whitened variable ``B = W L`` (X has full row rank here, so L is
    invertible): ``||Y - W X||^2 = ||Y||^2 - ||C||^2 + ||B - C||^2`` with ``C = Y X^T L^-T``.

    The solver sees ``Y / c`` with ``c = ||Y||_F`` (objective of order 1: SCS's tolerances are
    absolute and relative to that scale); the prox is homogeneous, so values scale by ``c^2``.
    """
    a, b = Y.shape[0], X.shape[0]
    scale = float(np.linalg.norm(Y))
    Y = Y / scale
    lower = np.linalg.cholesky(X @ X.T)
    target = np.linalg.solve(lower, X @ Y.T).T  # C = Y X^T L^-T
    constant = float(np.sum(Y * Y) - np.sum(target * target))
    B = cp.Variable((a, b))
    T = cp.Variable((a, a), PSD=True)
    objective = constant + cp.sum_squares(B - target) + beta * cp.matrix_frac(B, T)
    constraints = [np.eye(a) - T >> 0, cp.trace(T) <= r]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    start = time.perf_counter()
    # SCS (first-order splitting): an interior-point solver (Clarabel) needs a dense KKT system
    # of the (a+b)-dimensional PSD cone, over 15 GB and many minutes at this size.
    problem.solve(solver=cp.SCS, eps_abs=SOLVER_EPS, eps_rel=SOLVER_EPS, time_limit_secs=TIME_LIMIT)
    seconds = time.perf_counter() - start
    minimiser = B.value
    at_minimiser = (
        constant
        + float(np.sum((minimiser - target) ** 2))
        + beta * float(sd.spectral_ksupport_norm(minimiser, r)) ** 2
    )
    return {
        "reported": float(problem.value) * scale**2,
        "at_minimiser": at_minimiser * scale**2,
        "seconds": seconds,
        "status": problem.status,
    }


def main() -> None:
    small = "--small" in sys.argv
    a, b, n, rank, width, block, p = (
        (8, 10, 100, 5, 10, 5, 0.5) if small else (80, 100, 1000, 50, 50, 5, 0.5)
    )
    rng = np.random.default_rng(0)
    X = rng.standard_normal((b, n))
    Y = rng.standard_normal((a, rank)) @ rng.standard_normal((rank, b)) @ X
    scheme = sd.GridBlock(p, block)
    ours = best_time(lambda: sd.global_minimum(X, Y, scheme, width), repeat=5)
    optimum = sd.global_minimum(X, Y, scheme, width)
    solver = cvxpy_minimum(X, Y, optimum.beta, block)
    print(
        f"global minimum, X {b}x{n}, Y {a}x{n} (rank {rank}), GridBlock(p={p}, r={block}), "
        f"width {width}, beta={optimum.beta:.4g}, rho*={optimum.rho}, rank(A*)={optimum.rank}"
    )
    print(f"CVXPY + SCS (eps {SOLVER_EPS:g}), status {solver['status']}")
    print(f"  time ratio CVXPY / ours:                         {solver['seconds'] / ours:10.0f}x")
    print(
        f"  (ours - solver's reported value) / value:        "
        f"{(optimum.value - solver['reported']) / solver['reported']:+.2e}"
    )
    print(
        f"  (ours - objective at the solver's minimiser) / value: "
        f"{(optimum.value - solver['at_minimiser']) / solver['at_minimiser']:+.2e}  (<= 0 expected)"
    )
    print(
        f"\nours: {ours * 1e3:.2f} ms per call; CVXPY: {solver['seconds']:.1f} s (one solve, "
        "including compilation)"
    )


if __name__ == "__main__":
    main()
