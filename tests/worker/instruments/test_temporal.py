"""The fast temporal profile against an unrolled autograd reference written out by hand here
(independent of gradlab/instruments/adjoint.py), and the exact linear-RNN check."""

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from core.spec import ExperimentCreate
from gradlab.instruments.adjoint import hidden_adjoint
from models import RecurrentNet, init_recurrent_net
from worker.instruments.temporal import TemporalProfile, profiles, retain
from worker.train import train

ACTS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "elu": F.elu,
    "linear": lambda z: z,
}


def reference_step(net: RecurrentNet, layer: nn.Module, x: Tensor, state):
    """One time step from the PyTorch documentation's equations."""
    wi, wh, bi, bh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
    if net.cell == "lstm":
        h, c = state
        i, f, g, o = (x @ wi.T + bi + h @ wh.T + bh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if net.cell == "gru":
        (h,) = state
        xr, xz, xn = (x @ wi.T + bi).chunk(3, dim=1)
        hr, hz, hn = (h @ wh.T + bh).chunk(3, dim=1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)
    (h,) = state
    return (ACTS[net.activation](x @ wi.T + bi + h @ wh.T + bh),)


def reference_profiles(net: RecurrentNet, x: Tensor, y: Tensor) -> list[np.ndarray]:
    """Unrolled loop with the same weights, h_t.retain_grad(), the same head and loss."""
    inp, hs_all = x, []
    for i, layer in enumerate(net.rnn):
        z = x.new_zeros(x.shape[1], net.hidden_size)
        state = (z, z) if net.cell == "lstm" else (z,)
        hs = []
        for t in range(x.shape[0]):
            state = reference_step(net, layer, inp[t], state)
            state[0].retain_grad()
            hs.append(state[0])
        hs_all.append(hs)
        h = torch.stack(hs)
        inp = h + inp if net.residual and i > 0 else h
    F.mse_loss(net.head(inp[-1]), y).backward()
    return [np.array([float(h.grad.norm()) for h in hs]) for hs in hs_all]


def fast_profiles(net: RecurrentNet, x: Tensor, y: Tensor, method: str = "closed") -> list:
    out = net(x)
    retain(out)
    F.mse_loss(net.head(out.top[-1]), y).backward()
    return [p.numpy() for p in profiles(net.rnn, out, method)]


def make_net(cell: str, act: str | None, layers: int, residual: bool, dtype, gain=1.0):
    torch.manual_seed(0)
    net = RecurrentNet(
        3, 1, cell=cell, activation=act, hidden_size=16, num_layers=layers, residual=residual
    )
    init_recurrent_net(net, "orthogonal", "xavier_uniform", gain)
    with torch.no_grad():  # non-zero biases so every term of the equations is exercised
        for layer in net.rnn:
            layer.bias_ih_l0.uniform_(-0.3, 0.3)
            layer.bias_hh_l0.uniform_(-0.3, 0.3)
    net = net.to(dtype)
    x = torch.randn(25, 4, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))
    y = torch.randn(4, 1, dtype=dtype, generator=torch.Generator().manual_seed(2))
    return net, x, y


CASES = [("rnn", a) for a in ACTS] + [("lstm", None), ("gru", None)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("layers", "residual"), [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize(("cell", "act"), CASES, ids=[f"{c}-{a}" for c, a in CASES])
def test_fast_profile_equals_unrolled_reference(cell, act, layers, residual, dtype) -> None:
    net, x, y = make_net(cell, act, layers, residual, dtype)
    want = reference_profiles(net, x, y)
    net.zero_grad()
    got = fast_profiles(net, x, y)
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    assert len(got) == layers
    for g, w in zip(got, want, strict=True):
        assert g.shape == (25,) and np.all(w > 0)
        assert np.max(np.abs(g - w) / w) < tol, (g, w)


@pytest.mark.parametrize(("cell", "act"), [("rnn", "tanh"), ("lstm", None), ("gru", None)])
def test_unrolled_route_agrees_with_closed_form(cell, act) -> None:
    net, x, y = make_net(cell, act, 2, False, torch.float64)
    closed = fast_profiles(net, x, y, "closed")
    net.zero_grad()
    unrolled = fast_profiles(net, x, y, "unrolled")
    for a, b in zip(closed, unrolled, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)


class StepOnly(nn.Module):
    """A custom layer the instrument has no closed form for: only `step`."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.hidden_size = n
        self.cell = nn.RNNCell(n, n)

    def step(self, x: Tensor, state: Tensor | None) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden_size) if state is None else state
        return F.layer_norm(self.cell(x, h), (self.hidden_size,))

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        state, hs = None, []
        for t in range(x.shape[0]):
            state = self.step(x[t], state)
            hs.append(state)
        return torch.stack(hs), None


def test_generic_step_layer_and_unknown_layer() -> None:
    torch.manual_seed(0)
    layer = StepOnly(6).double()
    x = torch.randn(12, 3, 6, dtype=torch.float64)
    # Reference: the same layer unrolled with retain_grad, loss on a weighted sum of all steps.
    state, hs = None, []
    for t in range(12):
        state = layer.step(x[t], state)
        state.retain_grad()
        hs.append(state)
    w = torch.randn(12, 3, 6, dtype=torch.float64)
    (torch.stack(hs) * w).sum().backward()
    want = torch.stack([h.grad for h in hs])
    h, _ = layer(x)
    got = hidden_adjoint(layer, x, h, w)  # the direct gradient of that loss is w
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    assert hidden_adjoint(nn.Identity(), x, h, w) is None  # unknown: skipped, no crash


@pytest.mark.parametrize("gamma", [0.9, 1.0, 1.1])
def test_linear_rnn_log_profile_has_slope_log_gamma(gamma: float) -> None:
    spec = ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": 60},
            "model": {
                "cell": "rnn",
                "activation": "linear",
                "hidden_size": 32,
                "init": {"recurrent": "orthogonal", "gain": gamma},
            },
            "train": {"steps": 1, "batch_size": 8, "dtype": "float64", "device": "cpu"},
            "instrument": {"every": 1},
        }
    )
    result = train(spec, [TemporalProfile()])
    steps, values = result.batch.series["temporal/0"]
    assert steps == [0] and values.shape == (1, 60) and values.dtype == np.float64
    log_p = np.log(values[0])
    # ||dL/dh_t|| = gamma^(T-1-t) ||dL/dh_{T-1}||: each step back multiplies by gamma.
    np.testing.assert_allclose(log_p[:-1] - log_p[1:], math.log(gamma), atol=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_norm_layers_go_through_the_generic_route(cell: str) -> None:
    """Layer-normalised cells have no closed form here: their own `step` is unrolled."""
    torch.manual_seed(0)
    net = RecurrentNet(3, 1, cell=cell, hidden_size=8, num_layers=2, norm="layer").double()
    x = torch.randn(15, 4, 3, dtype=torch.float64)
    y = torch.randn(4, 1, dtype=torch.float64)
    # Reference: every layer unrolled through its own step(), h_t.retain_grad().
    inp, hs_all = x, []
    for layer in net.rnn:
        state, hs = None, []
        for t in range(15):
            state = layer.step(inp[t], state)
            h = state if isinstance(state, Tensor) else state[0]
            h.retain_grad()
            hs.append(h)
        hs_all.append(hs)
        inp = torch.stack(hs)
    F.mse_loss(net.head(inp[-1]), y).backward()
    want = [np.array([float(h.grad.norm()) for h in hs]) for hs in hs_all]
    net.zero_grad()
    for g, w in zip(fast_profiles(net, x, y), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10)


def test_window_keeps_the_last_five_finite_profiles_oldest_first() -> None:
    from core.diagnosis import WINDOW_STEPS, profile_evidence

    s = ExperimentCreate.model_validate(
        {
            "task": {"seq_len": 10},
            "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2},
            "train": {"steps": 23, "batch_size": 4, "device": "cpu"},
            "instrument": {"every": 2, "on": ["temporal"]},
        }
    )
    temporal = TemporalProfile()
    result = train(s, [temporal])
    window = result.summary["temporal_profile"]["window"]
    assert WINDOW_STEPS == 5 and [w["step"] for w in window] == [14, 16, 18, 20, 22]
    steps, values = result.batch.series["temporal/1"]
    assert window[-1]["layers"][1] == profile_evidence(values[steps.index(22)].tolist())
    assert len(window[0]["cell_layers"]) == 2 and window[0]["cell_layers"][0]["seq_len"] == 10
    assert result.summary["temporal_profile"]["last"]["step"] == 22


def test_leaky_relu_slope_is_exact_in_float64() -> None:
    from gradlab.instruments.adjoint import activation_derivative

    h = torch.tensor([[[-1.0, 2.0]]], dtype=torch.float64)
    d = activation_derivative("leaky_relu", nn.Identity(), h, h)
    assert d.dtype == torch.float64 and d[0, 0, 0].item() == 0.01 and d[0, 0, 1].item() == 1.0


def test_summary_records_the_thread_count() -> None:
    spec = ExperimentCreate.model_validate({"train": {"steps": 1, "device": "cpu"}})
    assert train(spec, []).summary["torch_threads"] == torch.get_num_threads()
