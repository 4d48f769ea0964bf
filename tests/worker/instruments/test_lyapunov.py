"""Step Jacobians against autograd, and the Lyapunov exponents and conditioning against the
closed-form linear cases, log-determinants and the adjoint's own growth rate."""

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from models import RecurrentNet
from tests.factories import make_spec
from worker.instruments.jacobians import step_jacobians
from worker.instruments.lyapunov import Lyapunov, conditioning, default_lags, exponents
from worker.instruments.temporal import profiles, retain
from worker.train import train


def reference_step(cell: str, layer, x_t, state):
    wi, wh, bi, bh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
    n = layer.hidden_size
    if cell == "lstm":
        h, c = state[:n], state[n:]
        i, f, g, o = (wi @ x_t + bi + wh @ h + bh).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.cat([torch.sigmoid(o) * torch.tanh(c), c])
    if cell == "gru":
        xr, xz, xn = (wi @ x_t + bi).chunk(3)
        hr, hz, hn = (wh @ state + bh).chunk(3)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        return (1 - z) * torch.tanh(xn + r * hn) + z * state
    return torch.tanh(wi @ x_t + bi + wh @ state + bh)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_step_jacobians_equal_autograd(cell: str) -> None:
    torch.manual_seed(0)
    net = RecurrentNet(3, 1, cell=cell, hidden_size=6).double()
    with torch.no_grad():
        for p in net.rnn[0].parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(20, 2, 3, dtype=torch.float64)
    h = net(x).layers[0].detach()
    got = step_jacobians(net.rnn[0], x, h)(0, 20)
    size = 12 if cell == "lstm" else 6
    state = torch.zeros(size, dtype=torch.float64)
    for t in range(20):
        want = jacobian(lambda s, t=t: reference_step(cell, net.rnn[0], x[t, 0], s), state)
        torch.testing.assert_close(got[t], want, rtol=1e-12, atol=1e-14)
        state = reference_step(cell, net.rnn[0], x[t, 0], state).detach()
    np.testing.assert_allclose(state[:6], h[-1, 0], rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_structured_products_equal_the_dense_jacobians(cell: str, dtype: torch.dtype) -> None:
    """right() and left() never build J_t whole: they must equal J_t @ f.T and p @ J_t for
    every t, a frame stored transposed (as exponents() keeps it) and any number of rows."""
    torch.manual_seed(4)
    net = RecurrentNet(3, 1, cell=cell, hidden_size=8).to(dtype)
    with torch.no_grad():
        for p in net.rnn[0].parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(12, 2, 3, dtype=dtype)
    jac = step_jacobians(net.rnn[0], x, net(x).layers[0].detach())
    size = 16 if cell == "lstm" else 8
    f = torch.randn(size, 3, dtype=dtype).T  # (k, S), not contiguous
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 0, "atol": 1e-5}
    for t, j in enumerate(jac(0, 12).double()):
        for rows in (5, size):
            p = torch.randn(rows, size, dtype=dtype)
            torch.testing.assert_close(jac.left(p, t).double(), p.double() @ j, **tol)
        torch.testing.assert_close(jac.right(t, f).double(), (j @ f.double().T).T, **tol)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_conditioning_equals_svd_of_the_plain_jacobian_products(cell: str) -> None:
    """The running product goes through each J_t's structure (left()), not J_t itself: it
    must give the singular values of the plain matrix products."""
    torch.manual_seed(1)
    net = RecurrentNet(3, 1, cell=cell, hidden_size=6).double()
    x = torch.randn(20, 2, 3, dtype=torch.float64)
    jac = step_jacobians(net.rnn[0], x, net(x).layers[0].detach())
    lags = default_lags(20)
    smax, smin = conditioning(jac, 20, lags)
    full = jac(0, 20)
    for k, tau in enumerate(lags):
        eye = torch.eye(full.shape[1], dtype=full.dtype)
        prod = torch.linalg.multi_dot([*full[20 - tau :].flip(0), eye])
        s = torch.linalg.svdvals(prod)
        torch.testing.assert_close(smax[k], s[0], rtol=1e-10, atol=0)
        # sigma_min is resolved relative to sigma_max (float64: ~1e-15 of it), not to itself
        torch.testing.assert_close(smin[k], s[-1], rtol=1e-8, atol=1e-13 * float(s[0]))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_float32_conditioning_equals_svd_of_the_plain_products_in_float64(cell: str) -> None:
    """A float32 product through the steps' structure: its extreme singular values must be
    those of the plain products (float32 factors, multiplied in float64), sigma_min down to
    ~1e-7 sigma_max."""
    torch.manual_seed(5)
    net = RecurrentNet(3, 1, cell=cell, hidden_size=32)
    x = torch.randn(40, 2, 3)
    jac = step_jacobians(net.rnn[0], x, net(x).layers[0].detach())
    lags = default_lags(40)
    smax, smin = conditioning(jac, 40, lags)
    full = jac(0, 40).double()
    eye = torch.eye(full.shape[1], dtype=full.dtype)
    for k, tau in enumerate(lags):
        s = torch.linalg.svdvals(torch.linalg.multi_dot([*full[40 - tau :].flip(0), eye]))
        torch.testing.assert_close(smax[k], s[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(smin[k], s[-1], rtol=1e-3, atol=1e-7 * float(s[0]))
    assert float(smin[0]) > 1e-5 * float(smax[0])  # so lag 1 tests sigma_min, 100x the atol


def linear_net(gamma: float, n: int = 16) -> RecurrentNet:
    net = RecurrentNet(2, 1, cell="rnn", activation="linear", hidden_size=n).double()
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    with torch.no_grad():
        net.rnn[0].weight_hh_l0.copy_(gamma * q)
    return net


@pytest.mark.parametrize("gamma", [0.8, 1.0, 1.25])
def test_linear_rnn_exponents_and_conditioning_are_log_gamma(gamma: float) -> None:
    torch.manual_seed(1)
    net = linear_net(gamma)
    x = torch.randn(40, 3, 2, dtype=torch.float64)
    jac = step_jacobians(net.rnn[0], x, net(x).layers[0].detach())
    lam, logdet = exponents(jac, 40, 16, k=16)
    np.testing.assert_allclose(lam.numpy(), math.log(gamma), atol=1e-12)
    assert float(logdet) == pytest.approx(16 * math.log(gamma), abs=1e-10)
    lags = default_lags(40)
    assert lags == [1, 2, 4, 8, 16, 32]
    smax, smin = conditioning(jac, 40, lags)
    np.testing.assert_allclose(smax.numpy(), gamma ** np.array(lags), rtol=1e-10)
    np.testing.assert_allclose(smin.numpy(), gamma ** np.array(lags), rtol=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_sum_of_all_exponents_is_the_mean_log_determinant(cell: str) -> None:
    torch.manual_seed(2)
    net = RecurrentNet(2, 1, cell=cell, hidden_size=8).double()
    x = torch.randn(30, 2, 2, dtype=torch.float64)
    jac = step_jacobians(net.rnn[0], x, net(x).layers[0].detach())
    size = 16 if cell == "lstm" else 8
    lam, logdet = exponents(jac, 30, size, k=size)
    want = np.mean([np.linalg.slogdet(j.numpy())[1] for j in jac(0, 30)])
    assert float(lam.sum()) == pytest.approx(want, rel=1e-9)  # QR of a dense start frame
    assert float(logdet) == pytest.approx(want, rel=1e-10)


def test_a_relu_unit_off_from_t0_does_not_make_lambda_1_minus_infinity() -> None:
    """IRNN (W = I, relu) with units 0-2 off at every step and 3-7 on: J_t = diag(on), so the
    top five exponents are 0 and the others -inf. A frame started on e_0 (a unit that is off)
    read lambda_1 = -inf, and the exponents came in the frame's order, not by size."""
    net = RecurrentNet(1, 1, cell="rnn", activation="relu", hidden_size=8).double()
    with torch.no_grad():
        net.rnn[0].weight_hh_l0.copy_(torch.eye(8))
        net.rnn[0].weight_ih_l0.zero_()
        net.rnn[0].bias_hh_l0.zero_()
        net.rnn[0].bias_ih_l0.copy_(torch.tensor([-1.0] * 3 + [1.0] * 5))
    x = torch.zeros(400, 1, 1, dtype=torch.float64)
    jac = step_jacobians(net.rnn[0], x, net(x).layers[0].detach())
    lam, _ = exponents(jac, 400, 8, k=4)
    assert torch.isfinite(lam).all() and float(lam.min()) > -0.01  # ln of one R entry / T
    assert float(lam[0]) == float(lam.max())
    full, _ = exponents(jac, 400, 8, k=8)
    # the off units: -inf, or the rounding left in an exactly singular product (~1e-16 a QR)
    assert float(full[:5].min()) > -0.01 and float(full[5:].max()) < -5


def test_adjoint_decay_rate_agrees_with_lambda_1() -> None:
    """On a long sequence the backward adjoint grows or decays at the top exponent."""
    torch.manual_seed(3)
    n, t_len = 64, 600
    net = RecurrentNet(1, 1, cell="rnn", activation="tanh", hidden_size=n).double()
    with torch.no_grad():
        net.rnn[0].weight_hh_l0.normal_(0, 1.2 / math.sqrt(n))
        net.rnn[0].weight_ih_l0.normal_(0, 0.5)
    x = torch.randn(t_len, 1, 1, dtype=torch.float64)
    out = net(x)
    retain(out)
    net.head(out.top[-1]).sum().backward()
    (p,) = profiles(net.rnn, out)
    lam, _ = exponents(step_jacobians(net.rnn[0], x, out.layers[0].detach()), t_len, n, k=1)
    tau = np.arange(100, 500)
    slope = np.polyfit(tau, np.log(p.numpy()[t_len - 1 - tau]), 1)[0]
    assert abs(slope - float(lam[0])) < 0.1 * abs(float(lam[0])), (slope, float(lam[0]))


def test_lyapunov_instrument_records_series_and_window() -> None:
    spec = make_spec(
        model={"cell": "lstm", "num_layers": 2},
        train={"steps": 3},
        instrument={"dynamics_every": 2},
    )
    res = train(spec, [Lyapunov(k=4)])
    steps, lam = res.batch.series["lyapunov/1"]
    assert steps == [0, 2] and lam.shape == (2, 4)  # every 2nd instrumented step
    _, smax = res.batch.series["conditioning/0/sigma_max"]
    _, smin = res.batch.series["conditioning/0/sigma_min"]
    assert smax.shape == (2, 4) and np.all(smax >= smin)  # lags 1, 2, 4, 8 at T = 12
    layer = res.summary["lyapunov"]["window"][-1]["layers"][0]
    assert layer["lambda_1"] == layer["exponents"][0] and layer["lags"] == [1, 2, 4, 8]
    assert res.summary["lyapunov"]["k"] == 4
