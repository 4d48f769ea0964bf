"""The layer whose backward is the closed-form adjoint (gradlab/instruments/closed_layer.py):
its outputs and every gradient equal torch's own module under autograd, the adjoints it
leaves equal an unrolled autograd computation of dL/dh_t (and dL/dc_t), and a training run
that takes it on its instrumented steps reports what the route without it reports."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from core.spec import ExperimentCreate
from gradlab.instruments import adjoint, matmul, native
from gradlab.instruments.closed_layer import closed_forward
from worker import train as train_mod
from worker.instruments import default_instruments

T, B, N_IN, H = 9, 3, 4, 5
KINDS = {
    "lstm": lambda i: nn.LSTM(i, H),
    "gru": lambda i: nn.GRU(i, H),
    "rnn:tanh": lambda i: nn.RNN(i, H, nonlinearity="tanh"),
    "rnn:relu": lambda i: nn.RNN(i, H, nonlinearity="relu"),
}


# float64 takes torch.addmm and torch's ops; float32 on the CPU oneDNN's products or torch's own,
# by the kind of CPU (gradlab/instruments/matmul.py), and the C kernels for the gate arithmetic
# where they build (native.py): each route pinned in turn, and torch's ops without the kernels
ROUTES = [
    (torch.float64, None, True),
    (torch.float32, "onednn", True),
    (torch.float32, "blas", True),
    (torch.float32, "blas", False),
]


@pytest.fixture(
    params=ROUTES, ids=["float64", "float32-onednn", "float32-blas", "float32-torch-ops"]
)
def dtype(request: pytest.FixtureRequest):
    """The dtype a test runs in, with its product route and kernels pinned while it runs."""
    dtype, route, kernels = request.param
    with matmul.pinned(route), contextlib.nullcontext() if kernels else native.off():
        yield dtype


# (rtol, atol) of the outputs, of the gradients
TOL = {torch.float64: ((1e-12, 1e-12), (1e-10, 1e-12)), torch.float32: ((2e-6, 2e-6), (1e-4, 1e-5))}


def two_layers(
    kind: str, dtype: torch.dtype = torch.float64
) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    lower, upper = KINDS[kind](N_IN).to(dtype), KINDS[kind](H).to(dtype)
    for p in [*lower.parameters(), *upper.parameters()]:
        p.data.mul_(1.7)  # large enough that saturation and decay both show
    x = torch.randn(T, B, N_IN, dtype=dtype)
    target = torch.randn(T, B, H, dtype=dtype)
    return lower, upper, x, target


def loss_of(h1: torch.Tensor, h2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # a loss at every step on both layers: every direct path is exercised
    return ((h2 - target) ** 2).sum() + 0.3 * (h1 * h2).sum()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_outputs_and_gradients_equal_torchs_module(kind: str, dtype: torch.dtype) -> None:
    lower, upper, x, target = two_layers(kind, dtype)
    (rtol, atol), (grad_rtol, grad_atol) = TOL[dtype]
    xr = x.clone().requires_grad_()
    h1, h2 = lower(xr)[0], None
    h2 = upper(h1)[0]
    loss_of(h1, h2, target).backward()
    want = [p.grad.clone() for p in [*lower.parameters(), *upper.parameters()]] + [xr.grad]
    for p in [*lower.parameters(), *upper.parameters()]:
        p.grad = None
    xc = x.clone().requires_grad_()
    c1 = closed_forward(lower, xc)
    c2 = closed_forward(upper, c1)
    assert c1.grad_fn is not None and type(c1.grad_fn).__name__ == "_ClosedBackward"
    torch.testing.assert_close(c1, h1.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(c2, h2.detach(), rtol=rtol, atol=atol)
    loss_of(c1, c2, target).backward()
    got = [p.grad for p in [*lower.parameters(), *upper.parameters()]] + [xc.grad]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=grad_rtol, atol=grad_atol)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_adjoints_it_leaves_equal_unrolled_autograd(kind: str, dtype: torch.dtype) -> None:
    """dL/dh_t (and an lstm's dL/dc_t) of each layer, every path through later steps included,
    against autograd on the unrolled cells, each h_t (c_t) a node of its own."""
    lower, upper, x, target = two_layers(kind, dtype)
    rtol, atol = TOL[dtype][1] if dtype == torch.float32 else (1e-10, 1e-12)
    c1 = closed_forward(lower, x)
    c2 = closed_forward(upper, c1)
    c1.retain_grad()
    c2.retain_grad()
    loss_of(c1, c2, target).backward()
    for layer, inp, h in ((lower, x, c1), (upper, c1.detach(), c2)):
        a, cell = adjoint.total_adjoint(layer, inp, h)
        want = adjoint.unrolled(adjoint.cell_step(layer, kind), inp, h.grad)
        torch.testing.assert_close(a, want, rtol=rtol, atol=atol)
        assert a[0].abs().sum() > 0  # the recursion reached the first step
        if kind in ("lstm", "gru"):  # the gates it kept are the ones a recompute gives
            g, again = adjoint.gates(layer, inp, h), adjoint._gates(layer, inp, h)
            assert g is not again
            torch.testing.assert_close(g.values, again.values, rtol=rtol, atol=atol)
            if kind == "gru":
                torch.testing.assert_close(g.hh_n, again.hh_n, rtol=rtol, atol=atol)
        if kind == "lstm":
            cells = _unrolled_cell_adjoint(layer, inp, h.grad)
            torch.testing.assert_close(cell, cells, rtol=rtol, atol=atol)
        else:
            assert cell is None


def _unrolled_cell_adjoint(layer: nn.LSTM, x: torch.Tensor, direct: torch.Tensor) -> torch.Tensor:
    step = adjoint.cell_step(layer, "lstm")
    state, hs, cs = None, [], []
    for t in range(x.shape[0]):
        state = step(x[t], state)
        state[1].retain_grad()
        hs.append(state[0])
        cs.append(state[1])
    sum((h * d).sum() for h, d in zip(hs, direct, strict=True)).backward()
    return torch.stack([c.grad for c in cs])


def test_gradcheck() -> None:
    torch.manual_seed(0)
    for make in KINDS.values():
        layer = make(2).double()
        x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
        w = [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0]

        def f(x, *w, layer=layer):
            for name, value in zip(
                ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), w, strict=True
            ):
                layer._parameters[name] = value
            return closed_forward(layer, x)

        assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in w]))


def test_other_kinds_and_no_grad_take_the_modules_own_route() -> None:
    assert closed_forward(nn.RNN(2, 3, num_layers=2), torch.randn(4, 1, 2)) is None
    with torch.no_grad():
        assert closed_forward(nn.LSTM(2, 3), torch.randn(4, 1, 2)) is None


@pytest.mark.parametrize(
    "model",
    [
        {"cell": "lstm", "num_layers": 2},
        {"cell": "gru", "num_layers": 2, "residual": True},
        {"cell": "rnn", "activation": "tanh", "num_layers": 2, "residual": True},
        {"cell": "rnn", "activation": "relu", "recurrent_param": "orthogonal"},
    ],
)
def test_a_run_reports_what_the_route_without_it_reports(model, monkeypatch) -> None:
    """float64: the same run with and without the closed route on its instrumented steps
    gives the same losses, gradient norms, temporal profiles and cell paths, to rounding."""
    spec = ExperimentCreate.model_validate(
        {
            "task": {"seq_len": 10},
            "model": {"hidden_size": 12, **model},
            "train": {"steps": 12, "batch_size": 4, "dtype": "float64"},
            "instrument": {"every": 3, "val_every": 6},
        }
    )
    used: list[bool] = []
    real = train_mod.closed_forward

    def spy(layer, x):
        h = real(layer, x)
        used.append(h is not None)
        return h

    monkeypatch.setattr(train_mod, "closed_forward", spy)
    closed = train_mod.train(spec, default_instruments(spec)).batch.series
    assert used and all(used)
    monkeypatch.setattr(train_mod, "closed_forward", lambda layer, x: None)
    plain = train_mod.train(spec, default_instruments(spec)).batch.series
    names = [n for n in plain if n.startswith(("temporal/", "cell_temporal/", "grad"))]
    assert any(n.startswith("temporal/") for n in names)
    for name in [*names, "loss", "val_loss"]:
        assert closed[name][0] == plain[name][0], name
        np.testing.assert_allclose(closed[name][1], plain[name][1], rtol=1e-9, err_msg=name)
