"""DropoutPenalty: the regularizer of a mask law as a loss term (Thm 3.1, eq. 14-16), equal to
the library's penalty and to the masks' expected objective, and reaching the closed-form optimum
(Thm 2.7 as corrected in docs/theory.md) without gradient noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import structdrop as sd
from nn_oracles import Z, discrete_law, seeded
from structdrop import nn as sdnn


def test_dropout_penalty_equals_the_library_penalty_and_closed_forms():
    g = seeded(6)
    U = torch.randn(3, 6, dtype=torch.float64, generator=g)
    H = torch.randn(20, 6, dtype=torch.float64, generator=g)
    for scheme in (sd.Bernoulli(0.3), sd.GridBlock(0.3, 2), sd.SlidingBlock(0.2, 3)):
        got = sdnn.DropoutPenalty(scheme)(U, H)
        assert got.shape == ()
        torch.testing.assert_close(got, sd.penalty(U, H.T, scheme), rtol=1e-14, atol=0)
    ratio = 0.3 / 0.7
    # Cor. 3.2: p/(1-p) sum_i ||u_i||^2 ||g_i||^2
    dropout = ratio * ((U**2).sum(0) * (H**2).sum(0)).sum()
    torch.testing.assert_close(sdnn.DropoutPenalty(sd.Bernoulli(0.3))(U, H), dropout)
    # Lemma 2.1: p/(1-p) sum_blocks ||U_i G_i||_F^2
    blocks = sum(((U[:, i : i + 2] @ H[:, i : i + 2].T) ** 2).sum() for i in (0, 2, 4))
    torch.testing.assert_close(sdnn.DropoutPenalty(sd.GridBlock(0.3, 2))(U, H), ratio * blocks)
    assert repr(sdnn.DropoutPenalty(sd.Bernoulli(0.5))) == (
        "DropoutPenalty(scheme=Bernoulli(p=0.5))"
    )


@pytest.mark.parametrize(
    "scheme",
    [sd.GridBlock(0.4, 2), sd.SlidingBlock(0.3, 3, "clipped"), discrete_law()],
    ids=["grid", "sliding", "discrete"],
)
def test_masked_loss_minus_fit_averages_to_the_penalty(scheme):
    # Thm 3.1: E ||Y - U (z/mu * G)||^2 = ||Y - U G||^2 + penalty. The masked loss of one row
    # is iid over 20000 rows; the sample mean is within Z estimated standard errors (CLT; the
    # estimate is within a few percent at this n): false failure about 6e-7 per scheme.
    d = scheme.mean(4).shape[0] if isinstance(scheme, sd.Discrete) else 4
    g = seeded(7)
    U = torch.randn(2, d, dtype=torch.float64, generator=g)
    h = torch.randn(d, dtype=torch.float64, generator=g)
    y = torch.randn(2, dtype=torch.float64, generator=g)
    n = 20000
    masked = sdnn.StructuredDropout(scheme, generator=seeded(8))(h.expand(n, d).clone())
    losses = ((masked @ U.T - y) ** 2).sum(1) - ((U @ h - y) ** 2).sum()
    exact = float(sdnn.DropoutPenalty(scheme)(U, h[None, :]))
    stderr = float(losses.std() / math.sqrt(n))
    assert abs(float(losses.mean()) - exact) <= Z * stderr


def test_dropout_penalty_rejects_bad_inputs():
    with pytest.raises(TypeError, match="scheme"):
        sdnn.DropoutPenalty("grid")
    penalty = sdnn.DropoutPenalty(sd.Bernoulli(0.5))
    with pytest.raises(ValueError, match="features must be a 2-D"):
        penalty(torch.randn(2, 3), torch.randn(3))
    with pytest.raises(TypeError, match=r"features must be a torch\.Tensor"):
        penalty(torch.randn(2, 3), [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="U's columns must match G's rows"):
        penalty(torch.randn(2, 3), torch.randn(5, 4))


# --------------------------------------------------------------------------------------------
# The penalty form reaches the masks' optimum, without gradient noise (the example's claim)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The penalty form reaches the masks' optimum, without gradient noise
# --------------------------------------------------------------------------------------------


def _linear_data(b=10, a=8, n=200, rank=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((b, n))
    Y = rng.standard_normal((a, rank)) @ rng.standard_normal((rank, b)) @ X
    return X, Y + 0.5 * rng.standard_normal((a, n))


def _network(b, a, d, seed):
    torch.manual_seed(seed)
    return (
        nn.Linear(b, d, bias=False, dtype=torch.float64),
        nn.Linear(d, a, bias=False, dtype=torch.float64),
    )


@pytest.mark.slow
def test_penalty_and_masks_reach_the_closed_form_optimum():
    # U V^T X with b=10, a=8, d=10, N=200 and GridBlock(0.3, 2). The oracle is the closed-form
    # global minimum F* (Thm 2.7 as corrected in docs/theory.md). The penalty form (deterministic,
    # L-BFGS) reaches it to 1e-9; the mask form (SGD with masks, decaying Adam steps) comes
    # within 1 % (it stalls at a gap set by the gradient noise; measured 0.2 % at 3000 steps).
    b, a, d, r, p = 10, 8, 10, 2, 0.3
    scheme = sd.GridBlock(p, r)
    X_np, Y_np = _linear_data(b, a)
    X, Y = torch.tensor(X_np.T), torch.tensor(Y_np.T)
    optimum = sd.global_minimum(X_np, Y_np, scheme, d)

    def expected(first, last):
        U, V = last.weight.detach().numpy(), first.weight.detach().numpy().T
        return float(sd.expected_loss(Y_np, U, V, X_np, scheme))

    first, last = _network(b, a, d, seed=1)
    penalty = sdnn.DropoutPenalty(scheme)
    lbfgs = torch.optim.LBFGS(
        [first.weight, last.weight],
        max_iter=1000,
        history_size=50,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def objective():
        hidden = first(X)
        return ((last(hidden) - Y) ** 2).sum() + penalty(last.weight, hidden)

    def closure():
        lbfgs.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    for _ in range(3):
        lbfgs.step(closure)
    assert abs(expected(first, last) - optimum.value) <= 1e-9 * optimum.value
    # Balanced blocks at the optimum (Thm 2.5).
    norms = sd.block_norms(last.weight.detach().numpy(), first.weight.detach().numpy().T, X_np, r)
    np.testing.assert_allclose(norms, norms.mean(), rtol=1e-5)

    # Gradient noise at the optimum: the penalty gradient is deterministic and ~0; the masked
    # gradient is unbiased for it (each of the 180 coordinates' mean over 400 draws within Z
    # estimated standard errors: false failure about 1e-4) but has a large variance.
    params = [first.weight, last.weight]
    dropout = sdnn.BlockDropout(p, r, generator=seeded(2))
    draws = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(((last(dropout(first(X))) - Y) ** 2).sum(), params)
                ]
            )
            for _ in range(400)
        ]
    )
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(objective(), params)])
    again = torch.cat([g.flatten() for g in torch.autograd.grad(objective(), params)])
    assert torch.equal(exact, again)
    assert float(exact.norm()) <= 1e-4 * float(draws.std(0).norm())
    stderr = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((draws.mean(0) - exact).abs() <= Z * stderr).all())

    # The mask form: same optimum, up to the noise floor.
    first, last = _network(b, a, d, seed=1)
    adam = torch.optim.Adam([first.weight, last.weight], lr=0.02)
    decay = torch.optim.lr_scheduler.LambdaLR(adam, lambda t: 1.0 / (1.0 + t / 300))
    dropout = sdnn.StructuredDropout(scheme, generator=seeded(3))
    for _ in range(3000):
        adam.zero_grad()
        ((last(dropout(first(X))) - Y) ** 2).sum().backward()
        adam.step()
        decay.step()
    gap = (expected(first, last) - optimum.value) / optimum.value
    assert 0.0 <= gap <= 0.01


def test_dropout_penalty_of_dropconnect_is_dropouts():
    # DropConnect's masks on the entries of U regularize as Dropout does (docs/theory.md; see
    # structdrop.penalty): the penalty of the law on weights is its law on units'.
    g = seeded(9)
    U = torch.randn(3, 5, dtype=torch.float64, generator=g)
    H = torch.randn(12, 5, dtype=torch.float64, generator=g)
    got = sdnn.DropoutPenalty(sd.DropConnect(0.35))(U, H)
    want = sdnn.DropoutPenalty(sd.Bernoulli(0.35))(U, H)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(got, 0.35 / 0.65 * ((U**2).sum(0) * (H**2).sum(0)).sum())
    meta = sdnn.DropoutPenalty(sd.DropConnect(0.35))(U.to("meta"), H.to("meta"))
    assert meta.shape == () and meta.dtype == torch.float64 and meta.is_meta
