"""Training with dropout masks and training with the explicit penalty reach the same optimum.

A linear network ``U V^T X`` (b inputs, d hidden units, a outputs) is trained on the squared loss
with grid DropBlock on its hidden units in two ways:

(a) with masks: ``BlockDropout`` (or ``StructuredDropout(GridBlock(p, r))``) between the layers,
    a fresh mask for every sample at every step -- stochastic gradients;
(b) without masks: the plain loss plus ``DropoutPenalty(GridBlock(p, r))``, the exact expected
    objective of (a) (Thm 3.1, eq. 14-15; Lemma 2.1, eq. 4-5) -- deterministic gradients.

Both are compared with the closed-form global minimum ``F*`` of the expected objective
(``structdrop.global_minimum``, Thm 2.7 corrected in docs/theory.md), evaluated exactly with
``structdrop.expected_loss``. At the optimum of (b) the script also measures the gradient noise
of (a): the expected mask gradient equals the penalty gradient (zero there), but a single mask
draw's gradient has a large variance, whereas the penalty's gradient has none.

Run: ``python examples/penalty_vs_masks.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import structdrop as sd
from structdrop import nn as sdnn

# ---- configuration ---------------------------------------------------------------------------
B, A, D, N = 10, 8, 10, 200  # inputs, outputs, hidden width, samples
BLOCK, P = 2, 0.3  # DropBlock: blocks of 2 hidden units, each dropped with probability 0.3
TARGET_RANK, NOISE = 4, 0.5
MASK_STEPS, MASK_LR, LR_DECAY = 3000, 0.02, 300  # Adam with lr / (1 + t / LR_DECAY)
NOISE_DRAWS = 500  # mask draws used to measure the gradient noise
SEED = 0
# ----------------------------------------------------------------------------------------------


def make_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X (B x N) Gaussian, Y = W X + noise with W of rank TARGET_RANK (column-wise samples)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, N))
    W = rng.standard_normal((A, TARGET_RANK)) @ rng.standard_normal((TARGET_RANK, B))
    Y = W @ X + NOISE * rng.standard_normal((A, N))
    return X, Y


def make_network(seed: int) -> tuple[nn.Linear, nn.Linear]:
    """``first.weight`` is V^T (D x B) and ``last.weight`` is U (A x D)."""
    torch.manual_seed(seed)
    first = nn.Linear(B, D, bias=False, dtype=torch.float64)
    last = nn.Linear(D, A, bias=False, dtype=torch.float64)
    return first, last


def factors(first: nn.Linear, last: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """(U, V) of the network as NumPy arrays."""
    return last.weight.detach().numpy(), first.weight.detach().numpy().T


def train_with_penalty(
    X: torch.Tensor, Y: torch.Tensor, scheme: sd.Scheme, seed: int
) -> tuple[nn.Linear, nn.Linear]:
    """Full-batch L-BFGS on ||Y - U V^T X||^2 + DropoutPenalty: no masks, no noise."""
    first, last = make_network(seed)
    penalty = sdnn.DropoutPenalty(scheme)
    optimizer = torch.optim.LBFGS(
        [*first.parameters(), *last.parameters()],
        max_iter=1000,
        history_size=50,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        hidden = first(X)
        loss = ((last(hidden) - Y) ** 2).sum() + penalty(last.weight, hidden)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    return first, last


def train_with_masks(
    X: torch.Tensor, Y: torch.Tensor, dropout: nn.Module, seed: int
) -> tuple[nn.Linear, nn.Linear]:
    """Adam on the masked loss ||Y - U (z/mu * V^T X)||^2, one fresh mask per sample and step."""
    first, last = make_network(seed)
    optimizer = torch.optim.Adam([*first.parameters(), *last.parameters()], lr=MASK_LR)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1.0 + t / LR_DECAY))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(MASK_STEPS):
        optimizer.zero_grad()
        loss = ((last(dropout(first(X), generator=generator)) - Y) ** 2).sum()
        loss.backward()
        optimizer.step()
        decay.step()
    return first, last


def gradient_noise(
    X: torch.Tensor,
    Y: torch.Tensor,
    first: nn.Linear,
    last: nn.Linear,
    dropout: nn.Module,
    scheme: sd.Scheme,
    draws: int,
    seed: int,
) -> dict[str, float]:
    """Mean and total variance of the masked gradient over ``draws`` masks, and the norm of the
    penalty form's (deterministic) gradient, at the current weights."""
    params = [first.weight, last.weight]
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(draws):
        loss = ((last(dropout(first(X), generator=generator)) - Y) ** 2).sum()
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    stacked = torch.stack(grads)
    hidden = first(X)
    exact = ((last(hidden) - Y) ** 2).sum() + sdnn.DropoutPenalty(scheme)(last.weight, hidden)
    penalty_grad = torch.cat([g.flatten() for g in torch.autograd.grad(exact, params)])
    return {
        "mask_grad_mean_norm": float(stacked.mean(0).norm()),
        "mask_grad_std_total": float(stacked.var(0).sum().sqrt()),
        "penalty_grad_norm": float(penalty_grad.norm()),
    }


def main() -> None:
    X_np, Y_np = make_data(SEED)
    X, Y = torch.tensor(X_np.T), torch.tensor(Y_np.T)  # rows = samples for torch
    scheme = sd.GridBlock(P, BLOCK)
    optimum = sd.global_minimum(X_np, Y_np, scheme, D)
    print(f"U V^T X with b={B}, a={A}, d={D}, N={N}; GridBlock(p={P}, block_size={BLOCK})")
    print(f"closed-form global minimum F* = {optimum.value:.6f} (rank {optimum.rank})\n")

    runs = {}
    start = time.perf_counter()
    runs["penalty (DropoutPenalty, L-BFGS)"] = train_with_penalty(X, Y, scheme, SEED + 1)
    times = {"penalty (DropoutPenalty, L-BFGS)": time.perf_counter() - start}
    for name, dropout in (
        ("masks (BlockDropout, Adam)", sdnn.BlockDropout(P, BLOCK)),
        ("masks (StructuredDropout, Adam)", sdnn.StructuredDropout(scheme)),
    ):
        start = time.perf_counter()
        runs[name] = train_with_masks(X, Y, dropout, SEED + 1)
        times[name] = time.perf_counter() - start

    print(f"{'training':<34} {'E[loss] at the end':>20} {'relative gap':>13} {'time':>7}")
    for name, (first, last) in runs.items():
        U, V = factors(first, last)
        value = float(sd.expected_loss(Y_np, U, V, X_np, scheme))
        gap = (value - optimum.value) / optimum.value
        print(f"{name:<34} {value:>20.6f} {gap:>13.2e} {times[name]:>6.2f}s")

    first, last = runs["penalty (DropoutPenalty, L-BFGS)"]
    noise = gradient_noise(
        X, Y, first, last, sdnn.BlockDropout(P, BLOCK), scheme, NOISE_DRAWS, SEED + 2
    )
    print(f"\ngradients at the optimum found with the penalty ({NOISE_DRAWS} mask draws):")
    print(f"  penalty form, ||grad||                        {noise['penalty_grad_norm']:.3e}")
    print(f"  masks, ||mean of the stochastic gradients||   {noise['mask_grad_mean_norm']:.3e}")
    print(f"  masks, sqrt(total variance of one gradient)   {noise['mask_grad_std_total']:.3e}")
    print(
        "  (the mean is zero up to sampling error: its norm is about "
        f"{noise['mask_grad_std_total'] / NOISE_DRAWS**0.5:.1e} for {NOISE_DRAWS} draws)"
    )
    print(
        "\nBoth forms minimize the same expected objective; the penalty form gets there with "
        "exact, noise-free gradients. (BlockDropout and StructuredDropout(GridBlock) draw the "
        "same masks from the same generator, hence the identical rows.)"
    )


if __name__ == "__main__":
    main()
