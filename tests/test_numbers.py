"""Numbers at the edges: mixed NumPy/torch inputs, meta tensors, extreme scales, autograd
through the closed-form optimum.

Oracles, all independent of the code under test's new paths:
- the all-NumPy (or all-torch) evaluation of the same quantity, for mixed inputs;
- homogeneity: ``||c w||_(k) = c ||w||_(k)``, ``prox(c w) = c prox(w)`` (c > 0) and, for the
  optimum, ``A*(cX, cY) = c A*(X, Y)``, ``x -> c x``, ``F* -> c^2 F*``, ``W*`` unchanged, with
  ``c`` a power of ten (not a power of two, which the code scales by internally);
- closed forms: ``||(t, t)||_(2) = sqrt(2) t``, the prox example ``(10, 1, 1) -> (5, 1/3,
  1/3)`` at k = 2, beta = 1;
- central finite differences (``torch.autograd.gradcheck``, float64) and Danskin's theorem
  ``dF*/dY = 2 (Y - A*)`` for the gradients of the optimum.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import structdrop as sd
from oracles import as_numpy, gradcheck_optimum
from structdrop import nn as sdnn
from structdrop.linear import fit_sgd
from structdrop.nn import functional as F

# Same formula, same float64 data, different array library or product order: rounding only.
SAME_RTOL = 1e-12


# ----------------------------------------------------------------------------------------------
# 1. Mixed NumPy / torch inputs
# ----------------------------------------------------------------------------------------------
MIXED_SCHEMES = [
    ("bernoulli", sd.Bernoulli(0.3)),
    ("grid", sd.GridBlock(0.4, 2)),
    ("sliding", sd.SlidingBlock(0.3, 2)),
    ("dropconnect", sd.DropConnect(0.25)),
]


def _data(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    a, b, d, n = 3, 4, 6, 7
    return (
        rng.standard_normal((b, n)),  # X
        rng.standard_normal((a, n)),  # Y
        rng.standard_normal((a, d)),  # U
        rng.standard_normal((b, d)),  # V
    )


def _features(V, X):
    return V.T @ X if isinstance(X, torch.Tensor) else as_numpy(V).T @ X


# name -> f(X, Y, U, V, scheme); every public evaluation of objectives.py that takes arrays
OBJECTIVES = {
    "expected_loss": lambda X, Y, U, V, s: sd.expected_loss(Y, U, V, X, s),
    "linear_penalty": lambda X, Y, U, V, s: sd.linear_penalty(U, V, X, s),
    # penalty(U, G): mixed as NumPy features G with torch U (G = V^T X, no gradient to V)
    "penalty": lambda X, Y, U, V, s: sd.penalty(U, _features(V, X), s),
    "Gram.fit": lambda X, Y, U, V, s: sd.Gram.from_data(X, Y).fit(U, V),
    "Gram.penalty": lambda X, Y, U, V, s: sd.Gram.from_data(X, Y).penalty(U, V, s),
    "Gram.penalty no Y": lambda X, Y, U, V, s: sd.Gram.from_data(X).penalty(U, V, s),
    "Gram.expected_loss": lambda X, Y, U, V, s: sd.Gram.from_data(X, Y).expected_loss(U, V, s),
}


@pytest.mark.parametrize("scheme", [s for _, s in MIXED_SCHEMES], ids=[n for n, _ in MIXED_SCHEMES])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_numpy_data_with_torch_factors_gives_torch_value_and_gradient(name, scheme):
    X, Y, U, V = _data()
    f = OBJECTIVES[name]
    want = float(f(X, Y, U, V, scheme))  # all NumPy
    Ut = torch.tensor(U, requires_grad=True)
    Vt = torch.tensor(V, requires_grad=True)
    got = f(X, Y, Ut, Vt, scheme)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float64
    assert got.ndim == 0
    assert float(got.detach()) == pytest.approx(want, rel=SAME_RTOL)
    # Autograd is kept through U and V, and agrees with the all-torch gradient.
    got.backward()
    Ur = torch.tensor(U, requires_grad=True)
    Vr = torch.tensor(V, requires_grad=True)
    f(torch.from_numpy(X), torch.from_numpy(Y), Ur, Vr, scheme).backward()
    np.testing.assert_allclose(as_numpy(Ut.grad), as_numpy(Ur.grad), rtol=1e-10, atol=1e-12)
    if name != "penalty":
        np.testing.assert_allclose(as_numpy(Vt.grad), as_numpy(Vr.grad), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scheme", [s for _, s in MIXED_SCHEMES], ids=[n for n, _ in MIXED_SCHEMES])
def test_torch_data_with_numpy_factors_and_float32_factors(scheme):
    X, Y, U, V = _data(1)
    want = float(sd.expected_loss(Y, U, V, X, scheme))
    got = sd.expected_loss(torch.from_numpy(Y), U, V, torch.from_numpy(X), scheme)
    assert isinstance(got, torch.Tensor)
    assert float(got) == pytest.approx(want, rel=SAME_RTOL)
    # float32 torch factors with float64 NumPy data compute in float64 (one float64 input).
    got32 = sd.expected_loss(Y, torch.tensor(U, dtype=torch.float32), V, X, scheme)
    assert got32.dtype == torch.float64
    want32 = float(sd.expected_loss(Y, U.astype(np.float32).astype(np.float64), V, X, scheme))
    assert float(got32) == pytest.approx(want32, rel=SAME_RTOL)


def test_mixed_sampled_loss_and_block_norms_match_numpy():
    X, Y, U, V = _data(2)
    scheme = sd.GridBlock(0.4, 2)
    want = sd.sampled_loss(Y, U, V, X, scheme, 50, seed=3)
    got = sd.sampled_loss(Y, torch.from_numpy(U), torch.from_numpy(V), X, scheme, 50, seed=3)
    assert got.mean == pytest.approx(want.mean, rel=SAME_RTOL)
    assert got.stderr == pytest.approx(want.stderr, rel=SAME_RTOL)
    norms = sd.block_norms(torch.from_numpy(U), torch.from_numpy(V), X, 2)
    assert isinstance(norms, torch.Tensor)
    np.testing.assert_allclose(
        as_numpy(norms), as_numpy(sd.block_norms(U, V, X, 2)), rtol=SAME_RTOL
    )


# ----------------------------------------------------------------------------------------------
# 2. Meta tensors
# ----------------------------------------------------------------------------------------------
def _meta(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


_X, _Y, _U, _V = _data(3)
_W = np.array([3.0, -1.0, 2.0])


def _with(name: str, **arrays):
    """The inputs of the maths functions with one of them replaced by a meta tensor."""
    inputs = {"X": _X, "Y": _Y, "U": _U, "V": _V, "G": _V.T @ _X, "w": _W, "A": _U}
    inputs[name] = _meta(*inputs[name].shape)
    return inputs


MATHS_CALLS = {
    # argument that is meta -> call
    "expected_loss X": ("X", lambda a: sd.expected_loss(a["Y"], a["U"], a["V"], a["X"], _GRID)),
    "expected_loss U": ("U", lambda a: sd.expected_loss(a["Y"], a["U"], a["V"], a["X"], _GRID)),
    "linear_penalty V": ("V", lambda a: sd.linear_penalty(a["U"], a["V"], a["X"], _GRID)),
    "penalty G": ("G", lambda a: sd.penalty(a["U"], a["G"], _GRID)),
    "sampled_loss Y": ("Y", lambda a: sd.sampled_loss(a["Y"], a["U"], a["V"], a["X"], _GRID, 4)),
    "Gram.from_data X": ("X", lambda a: sd.Gram.from_data(a["X"], a["Y"])),
    "Gram.fit U": ("U", lambda a: sd.Gram.from_data(a["X"], a["Y"]).fit(a["U"], a["V"])),
    "global_minimum X": ("X", lambda a: sd.global_minimum(a["X"], a["Y"], _GRID, 4)),
    "global_minimum Y": ("Y", lambda a: sd.global_minimum(a["X"], a["Y"], _GRID, 4)),
    "block_norms V": ("V", lambda a: sd.block_norms(a["U"], a["V"], a["X"], 2)),
    "ksupport_norm w": ("w", lambda a: sd.ksupport_norm(a["w"], 2)),
    "prox_ksupport_sq w": ("w", lambda a: sd.prox_ksupport_sq(a["w"], 0.5, 2)),
    "spectral_ksupport_norm A": ("A", lambda a: sd.spectral_ksupport_norm(a["A"], 2)),
    "prox_spectral_ksupport_sq A": ("A", lambda a: sd.prox_spectral_ksupport_sq(a["A"], 1.0, 2)),
    "fit_sgd X": (
        "X",
        lambda a: fit_sgd(a["X"], a["Y"], a["U"], a["V"], _GRID, lr=1e-3, iterations=2, seed=0),
    ),
}
_GRID = sd.GridBlock(0.4, 2)


@pytest.mark.parametrize("call", list(MATHS_CALLS))
def test_maths_functions_refuse_meta_tensors_naming_the_argument(call):
    name, function = MATHS_CALLS[call]
    with pytest.raises(ValueError, match=rf"^{name} is a meta tensor \(it has a shape but no "):
        function(_with(name))


def test_meta_message_says_what_to_do():
    with pytest.raises(ValueError, match="pass a tensor on a real device") as info:
        sd.ksupport_norm(_meta(5), 2)
    assert "(5,)" in str(info.value)


LAYERS = [
    ("DropBlock1d", lambda: sdnn.DropBlock1d(0.2, 3), (2, 3, 9)),
    ("DropBlock2d", lambda: sdnn.DropBlock2d(0.2, 3), (2, 3, 8, 8)),
    ("DropBlock3d", lambda: sdnn.DropBlock3d(0.2, (1, 2, 3)), (2, 3, 4, 5, 6)),
    ("DropBlock2d batch", lambda: sdnn.DropBlock2d(0.2, 3, scale="batch"), (2, 3, 8, 8)),
    (
        "DropBlock2d shared",
        lambda: sdnn.DropBlock2d(0.2, 3, boundary="clipped", shared_channels=True),
        (2, 3, 8, 8),
    ),
    ("DropBlock2d batchwise", lambda: sdnn.DropBlock2d(0.2, 3, batchwise=True), (2, 3, 8, 8)),
    ("DropBlock2d inplace", lambda: sdnn.DropBlock2d(0.2, 3, inplace=True), (2, 3, 8, 8)),
    ("BlockDropout", lambda: sdnn.BlockDropout(0.3, 2, dim=1), (2, 6, 5)),
    ("Structured bernoulli", lambda: sdnn.StructuredDropout(sd.Bernoulli(0.3)), (2, 5, 6)),
    ("Structured grid", lambda: sdnn.StructuredDropout(sd.GridBlock(0.3, 3)), (4, 6)),
    ("Structured sliding", lambda: sdnn.StructuredDropout(sd.SlidingBlock(0.3, 3)), (4, 6)),
    (
        "Structured discrete",
        lambda: sdnn.StructuredDropout(sd.Discrete(np.eye(3), np.ones(3) / 3)),
        (4, 3),
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("make, shape", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_layers_propagate_meta_shapes_in_train_and_eval(make, shape, training, dtype):
    layer = make().train(training)
    state = torch.get_rng_state()
    out = layer(_meta(*shape, dtype=dtype))
    assert out.is_meta
    assert tuple(out.shape) == shape
    assert out.dtype == dtype
    assert torch.equal(torch.get_rng_state(), state)  # no random draw for a meta input


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_dropconnect_linear_on_meta(per_sample, training):
    layer = sdnn.DropConnectLinear(5, 3, 0.4, per_sample=per_sample, device="meta")
    out = layer.train(training)(_meta(2, 7, 5, dtype=torch.float32))
    assert out.is_meta
    assert tuple(out.shape) == (2, 7, 3)
    assert out.dtype == torch.float32


def test_dropout_penalty_on_meta_is_a_meta_scalar():
    penalty = sdnn.DropoutPenalty(sd.GridBlock(0.3, 2))
    out = penalty(_meta(3, 4, dtype=torch.float32), _meta(10, 4, dtype=torch.float32))
    assert out.is_meta
    assert out.shape == ()
    assert out.dtype == torch.float32
    # shapes are still checked
    with pytest.raises(ValueError, match="4"):
        penalty(_meta(3, 4), _meta(10, 5))


def test_functional_forms_and_a_meta_model():
    x = _meta(2, 3, 8, 8, dtype=torch.float32)
    for out in (
        F.drop_block(x, 0.1, 3),
        F.drop_block2d(x, 0.1, 3, gamma="interior"),
        F.drop_block1d(_meta(2, 3, 8), 0.1, 2),
        F.drop_block3d(_meta(1, 2, 3, 4, 5), 0.1, 2),
        F.block_dropout(x, 0.5, 4, dim=-1),
        F.structured_dropout(x, sd.SlidingBlock(0.2, 2, boundary="ring")),
    ):
        assert out.is_meta
    weight = _meta(3, 8, dtype=torch.float32)
    assert F.dropconnect_linear(x, weight, None, 0.3, per_sample=True).shape == (2, 3, 8, 3)
    masks = F.sample_masks(sd.GridBlock(0.5, 2), (4, 5), 6, device="meta")
    assert masks.is_meta
    assert tuple(masks.shape) == (4, 5, 6)
    # A whole model on the meta device, e.g. for counting activations before allocating.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, device="meta"),
        sdnn.DropBlock2d(0.1, 3),
        nn.Flatten(),
        sdnn.DropConnectLinear(8 * 16, 10, 0.2, device="meta"),
        sdnn.StructuredDropout(sd.GridBlock(0.2, 5)),
    )
    assert tuple(model(_meta(4, 3, 4, 4, dtype=torch.float32)).shape) == (4, 10)


# ----------------------------------------------------------------------------------------------
# 3. k-support norms at extreme scales
# ----------------------------------------------------------------------------------------------
SCALES = [1e300, 1e-300, 1e150, 1e-150]


@pytest.mark.filterwarnings("error")  # an overflow must not pass silently
def test_ksupport_norm_of_equal_huge_and_tiny_entries():
    # ||(t, t)||_(2) = ||(t, t)||_2 = sqrt(2) t
    for t in (1e300, 1e-300):
        assert float(sd.ksupport_norm([t, t], 2)) == pytest.approx(math.sqrt(2.0) * t, rel=1e-12)
        assert float(sd.ksupport_norm([t, t], 1)) == pytest.approx(2.0 * t, rel=1e-12)


@pytest.mark.filterwarnings("error")  # an overflow must not pass silently
@pytest.mark.parametrize("c", SCALES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_ksupport_norms_are_homogeneous_at_extreme_scales(c, k):
    rng = np.random.default_rng(k)
    w = rng.standard_normal(6)
    A = rng.standard_normal((4, 5))
    assert float(sd.ksupport_norm(c * w, k)) == pytest.approx(
        c * float(sd.ksupport_norm(w, k)), rel=1e-12
    )
    # c * A has the singular values of A times c; the SVD is computed at each scale: 1e-12.
    assert float(sd.spectral_ksupport_norm(c * A, k)) == pytest.approx(
        c * float(sd.spectral_ksupport_norm(A, k)), rel=1e-12
    )


@pytest.mark.filterwarnings("error")  # an overflow must not pass silently
@pytest.mark.parametrize("c", SCALES)
def test_proxes_are_homogeneous_at_extreme_scales(c):
    # docs/theory.md: prox of (10, 1, 1) at k = 2, beta = 1 is (5, 1/3, 1/3); signs and order kept.
    w = np.array([1.0, -10.0, 1.0])
    np.testing.assert_allclose(
        sd.prox_ksupport_sq(c * w, 1.0, 2), c * np.array([1 / 3, -5.0, 1 / 3]), rtol=1e-12
    )
    rng = np.random.default_rng(4)
    q1, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    q2, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    A = q1 @ np.diag([10.0, 1.0, 1.0]) @ q2[:3]
    want = q1 @ np.diag([5.0, 1 / 3, 1 / 3]) @ q2[:3]
    got = sd.prox_spectral_ksupport_sq(c * A, 1.0, 2)
    np.testing.assert_allclose(got / c, want, rtol=0, atol=1e-12 * np.abs(want).max())
    # A strong regularizer (beta m_i overflowed before the breakpoints were normalized).
    v = rng.standard_normal(7)
    for beta in (0.7, 1e10):
        want = c * sd.prox_ksupport_sq(v, beta, 3)
        got = sd.prox_ksupport_sq(c * v, beta, 3)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15 * np.abs(want).max())
        assert np.count_nonzero(got) == np.count_nonzero(want)


@pytest.mark.filterwarnings("error")  # an overflow must not pass silently
def test_unrepresentable_norms_raise_naming_the_overflow():
    with pytest.raises(ValueError, match=r"k-support norm overflows float64 \(about 1e308\)"):
        sd.ksupport_norm([1.5e308, 1.5e308], 2)  # sqrt(2) * 1.5e308 > 1.8e308
    with pytest.raises(ValueError, match=r"spectral k-support norm overflows float64"):
        sd.spectral_ksupport_norm(np.diag([1.5e308, 1.5e308]), 2)
    with pytest.raises(ValueError, match=r"k-support norm overflows float32 \(about 1e38\)"):
        sd.ksupport_norm(torch.tensor([3e38, 3e38]), 2)
    # the largest representable case is still right
    assert float(sd.ksupport_norm([1e308, 1e308], 2)) == pytest.approx(
        math.sqrt(2.0) * 1e308, rel=1e-12
    )


# ----------------------------------------------------------------------------------------------
# 4. The global minimum at extreme scales
# ----------------------------------------------------------------------------------------------
def _noisy_problem() -> tuple[np.ndarray, np.ndarray]:
    """N > b and noise outside the row space (residual > 0), a dominant head (rho* > 1)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 8))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    Y = q @ np.diag([10.0, 1.0, 0.5]) @ np.linalg.qr(X.T)[0].T + 0.1 * rng.standard_normal((3, 8))
    return X, Y


@pytest.mark.filterwarnings("error")  # an overflow must not pass silently
@pytest.mark.parametrize("scheme, width", [(sd.GridBlock(0.5, 2), 4), (sd.Bernoulli(0.3), 3)])
@pytest.mark.parametrize("c", [1e-150, 1e150])
def test_global_minimum_scales_with_the_data(c, scheme, width):
    X, Y = _noisy_problem()
    ref = sd.global_minimum(X, Y, scheme, width)
    opt = sd.global_minimum(c * X, c * Y, scheme, width)
    assert ref.residual > 1e-3
    # An SVD at each scale: rounding ~1e-15 relative, 1e-10 leaves a wide margin.
    np.testing.assert_allclose(opt.singular_values / c, ref.singular_values, rtol=1e-10)
    np.testing.assert_allclose(
        opt.target_singular_values / c, ref.target_singular_values, rtol=1e-10
    )
    np.testing.assert_allclose(opt.prediction / c, ref.prediction, atol=1e-10 * np.abs(Y).max())
    np.testing.assert_allclose(opt.weights, ref.weights, atol=1e-10 * np.abs(ref.weights).max())
    assert opt.value == pytest.approx(c * c * ref.value, rel=1e-10)
    assert opt.residual == pytest.approx(c * c * ref.residual, rel=1e-10)
    assert (opt.rank, opt.rho) == (ref.rank, ref.rho)


@pytest.mark.filterwarnings("error")  # an overflow must not pass silently
@pytest.mark.parametrize(
    "cx, cy", [(1e-200, 1e-200), (1.0, 1e-200), (1e-250, 1e50), (1e200, 1e100)]
)
def test_global_minimum_arrays_are_exact_when_the_value_is_not_representable(cx, cy):
    X, Y = _noisy_problem()
    scheme = sd.GridBlock(0.5, 2)
    ref = sd.global_minimum(X, Y, scheme, 4)
    opt = sd.global_minimum(cx * X, cy * Y, scheme, 4)
    np.testing.assert_allclose(opt.singular_values / cy, ref.singular_values, rtol=1e-10)
    np.testing.assert_allclose(opt.prediction / cy, ref.prediction, atol=1e-10 * np.abs(Y).max())
    np.testing.assert_allclose(
        opt.weights / (cy / cx), ref.weights, atol=1e-10 * np.abs(ref.weights).max()
    )
    if cy * cy * ref.value > 1e-290:  # a normal float64: exact
        assert opt.value == pytest.approx(cy * cy * ref.value, rel=1e-10)
    else:  # F* ~ 1e-400 underflows (gradually), never to a negative or non-finite number
        assert 0.0 <= opt.value < 1e-300


@pytest.mark.filterwarnings("error")  # an overflow must not pass silently
def test_global_minimum_raises_when_the_value_overflows():
    X, Y = _noisy_problem()
    with pytest.raises(
        ValueError, match=r"^the optimum value overflows float64 \(about 1e40\d\): rescale Y"
    ):
        sd.global_minimum(X * 1e200, Y * 1e200, sd.GridBlock(0.5, 2), 4)
    with pytest.raises(ValueError, match=r"W\* \(the optimal weights\) overflows float64"):
        sd.global_minimum(X * 1e-250, Y * 1e100, sd.GridBlock(0.5, 2), 4)
    # torch float32: representable in float64, not in float32
    with pytest.raises(ValueError, match=r"optimum value overflows float32"):
        sd.global_minimum(
            torch.tensor(X, dtype=torch.float32),
            torch.tensor(Y * 1e30, dtype=torch.float32),
            sd.GridBlock(0.5, 2),
            4,
        )


# ----------------------------------------------------------------------------------------------
# 5. Autograd through the global minimum
# ----------------------------------------------------------------------------------------------
FIELDS = [
    "prediction",
    "weights",
    "value",
    "residual",
    "singular_values",
    "target_singular_values",
]


def _well_separated():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 5)), 3.0 * rng.standard_normal((4, 5))


@pytest.mark.slow
@pytest.mark.parametrize(
    "scheme, width",
    [(sd.GridBlock(0.5, 2), 4), (sd.Bernoulli(0.5), 2), (sd.GridBlock(0.3, 4), 4)],
    ids=["grid (head + middle)", "bernoulli (soft threshold)", "grid r >= rank (ridge)"],
)
@pytest.mark.parametrize("field", FIELDS)
def test_global_minimum_gradients_match_finite_differences(field, scheme, width):
    X, Y = _well_separated()
    gradcheck_optimum(X, Y, scheme, width, field)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sv, scheme, width",
    [
        ((10.0, 1.0, 1.0), sd.GridBlock(0.5, 2), 2),  # the worked example: tie in the middle piece
        ((4.0, 4.0, 1.0), sd.GridBlock(0.5, 2), 4),  # tie in the head
        ((3.0, 3.0, 1.0), sd.Bernoulli(0.5), 2),  # tie in the soft-thresholded part
    ],
)
def test_gradients_are_right_at_repeated_singular_values(sv, scheme, width):
    """Where torch.linalg.svd's backward is undefined (ties, zeros), the spectral formula is."""
    rng = np.random.default_rng(1)
    q1, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    q2, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    Y = q1[:, :3] @ np.diag(sv) @ q2[:3]  # rank 3 of 4: a zero singular value too
    X = rng.standard_normal((5, 5))
    for field in ("prediction", "weights", "value"):
        gradcheck_optimum(X, Y, scheme, width, field)
    gradcheck_optimum(X, Y, scheme, width, "singular_values", reduce=lambda x: (x * x).sum())


def test_value_gradient_is_danskins_and_values_equal_numpy():
    X, Y = _noisy_problem()
    scheme = sd.GridBlock(0.5, 2)
    ref = sd.global_minimum(X, Y, scheme, 4)
    Xt, Yt = torch.tensor(X, requires_grad=True), torch.tensor(Y, requires_grad=True)
    opt = sd.global_minimum(Xt, Yt, scheme, 4)
    for field in FIELDS:
        value = getattr(opt, field)
        assert isinstance(value, torch.Tensor)
        assert value.requires_grad, field
        np.testing.assert_allclose(
            as_numpy(value), as_numpy(getattr(ref, field)), rtol=SAME_RTOL, atol=0
        )
    opt.value.backward()
    # F*(Y) = min_A ||Y - A||^2 + beta ||A||_(r)^2 over the row space: dF*/dY = 2 (Y - A*).
    np.testing.assert_allclose(as_numpy(Yt.grad), 2.0 * (Y - ref.prediction), atol=1e-10)


def test_autograd_at_extreme_scale_and_in_float32():
    X, Y = _noisy_problem()
    scheme = sd.GridBlock(0.5, 2)
    c = 1e150
    Yt = torch.tensor(c * Y, requires_grad=True)
    opt = sd.global_minimum(torch.tensor(c * X), Yt, scheme, 4)
    opt.value.backward()
    ref = sd.global_minimum(X, Y, scheme, 4)
    np.testing.assert_allclose(as_numpy(Yt.grad) / c, 2.0 * (Y - ref.prediction), atol=1e-10)
    X32 = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    opt32 = sd.global_minimum(X32, torch.tensor(Y, dtype=torch.float32), scheme, 4)
    assert opt32.prediction.dtype == torch.float32
    assert opt32.value.dtype == torch.float32
    opt32.prediction.sum().backward()
    assert X32.grad.dtype == torch.float32
    assert bool(torch.isfinite(X32.grad).all())


def test_result_kinds_without_autograd():
    X, Y = _noisy_problem()
    scheme = sd.GridBlock(0.5, 2)
    numpy_opt = sd.global_minimum(X, Y, scheme, 4)
    assert isinstance(numpy_opt.value, float)
    assert isinstance(numpy_opt.residual, float)
    Xt = torch.tensor(X, requires_grad=True)
    with torch.no_grad():
        opt = sd.global_minimum(Xt, torch.tensor(Y), scheme, 4)
    assert not opt.prediction.requires_grad
    assert isinstance(opt.value, torch.Tensor)
    assert opt.value.ndim == 0
    assert float(opt.value) == pytest.approx(numpy_opt.value, rel=SAME_RTOL)
