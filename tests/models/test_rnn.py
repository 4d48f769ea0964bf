"""The networks and their initialisation."""

import pytest
import torch
from torch import nn

from models import RecurrentNet, init_recurrent_net
from models.cells import ElmanLayer


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_elman_layer_matches_torch_fused_rnn(activation: str) -> None:
    torch.manual_seed(0)
    fused = nn.RNN(3, 5, nonlinearity=activation).double()
    mine = ElmanLayer(3, 5, activation).double()
    mine.load_state_dict(fused.state_dict())
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    (a, ha), (b, hb) = fused(x), mine(x)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ha, hb)


@pytest.mark.parametrize(
    ("cell", "activation", "module"),
    [
        ("rnn", "tanh", nn.RNN),
        ("rnn", "relu", nn.RNN),
        ("rnn", "elu", ElmanLayer),
        ("rnn", "linear", ElmanLayer),
        ("lstm", None, nn.LSTM),
        ("gru", None, nn.GRU),
    ],
)
def test_fused_modules_where_torch_has_them(cell, activation, module) -> None:
    net = RecurrentNet(2, 1, cell=cell, activation=activation, hidden_size=6, num_layers=3)
    assert all(type(layer) is module for layer in net.rnn)
    out = net(torch.randn(9, 4, 2))
    assert out.top.shape == (9, 4, 6) and len(out.layers) == 3
    assert [i.shape[-1] for i in out.inputs] == [2, 6, 6]


def test_residual_adds_the_layer_input_between_hidden_layers() -> None:
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, hidden_size=4, num_layers=2, residual=True)
    out = net(torch.randn(5, 3, 2))
    torch.testing.assert_close(out.top, out.layers[1] + out.layers[0])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("gain", [0.5, 1.0, 1.7])
def test_orthogonal_gain_sets_every_singular_value_of_every_block(cell: str, gain: float) -> None:
    net = RecurrentNet(
        2, 1, cell=cell, activation="tanh" if cell == "rnn" else None, hidden_size=8, num_layers=2
    )
    init_recurrent_net(net, "orthogonal", "xavier_uniform", gain)
    for w in net.recurrent_weights().values():
        for block in w.detach().split(8):
            torch.testing.assert_close(torch.linalg.svdvals(block), torch.full((8,), gain))
    assert all(float(layer.bias_hh_l0.detach().abs().max()) == 0 for layer in net.rnn)


def test_identity_and_scaled_normal() -> None:
    net = RecurrentNet(2, 1, activation="relu", hidden_size=64)
    init_recurrent_net(net, "identity", "xavier_uniform", 1.0)
    torch.testing.assert_close(net.rnn[0].weight_hh_l0.detach(), torch.eye(64))
    torch.manual_seed(0)
    init_recurrent_net(net, "normal", "xavier_uniform", 0.5)
    radius = torch.linalg.eigvals(net.rnn[0].weight_hh_l0.detach()).abs().max()
    assert 0.4 < float(radius) < 0.6  # circular law: close to the gain


def test_default_keeps_torchs_own_init() -> None:
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, hidden_size=8)
    before = net.rnn[0].weight_hh_l0.detach().clone()
    init_recurrent_net(net, "default", "default", 1.0)
    assert torch.equal(before, net.rnn[0].weight_hh_l0.detach())


FUSABLE = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]


@pytest.mark.parametrize(("cell", "activation"), FUSABLE)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_fused_route_equals_the_per_layer_route(cell, activation, num_layers) -> None:
    """torch's multi-layer kernel on the layers' own weights: the same outputs and the same
    gradients as the stack of single-layer modules (float64, 1e-12), and no copy of a weight."""
    torch.manual_seed(0)
    net = RecurrentNet(
        3, 2, cell=cell, activation=activation, hidden_size=6, num_layers=num_layers
    ).double()
    x = torch.randn(9, 4, 3, dtype=torch.float64, requires_grad=True)
    params = list(net.parameters())
    got = []
    for per_layer in (True, False):
        out = net(x, per_layer=per_layer)
        assert out.per_layer == (per_layer or num_layers == 1)
        loss = net.head(out.top).pow(2).sum() + out.top[-1].sin().sum()
        got.append((out.top, torch.autograd.grad(loss, [x, *params])))
    (top_a, grads_a), (top_b, grads_b) = got
    torch.testing.assert_close(top_b, top_a, rtol=1e-12, atol=1e-12)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-12, atol=1e-12)
    assert (net.fused_mode() is not None) == (num_layers > 1)
    ptrs = {p.data_ptr() for p in params}
    assert {w.data_ptr() for w in net.flat_weights()} <= ptrs  # the modules' own tensors
    assert not net.flatten_for_cudnn()  # a no-op on the CPU


def test_fused_route_applies_the_dropout_between_layers_only_in_training() -> None:
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, cell="lstm", hidden_size=8, num_layers=2, dropout=0.5).double()
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    net.eval()
    torch.testing.assert_close(net(x, per_layer=False).top, net(x).top, rtol=1e-12, atol=1e-12)
    net.train()
    assert not torch.allclose(net(x, per_layer=False).top, net(x).top)  # masks drawn


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cell": "rnn", "activation": "elu"},  # own Elman layer
        {"cell": "rnn", "activation": "tanh", "norm": "layer"},
        {"cell": "gru", "residual": True},
    ],
)
def test_no_fused_route_where_something_sits_between_or_inside_the_layers(kwargs) -> None:
    net = RecurrentNet(2, 1, hidden_size=4, num_layers=2, **kwargs)
    assert net.fused_mode() is None
    out = net(torch.randn(5, 3, 2), per_layer=False)
    assert out.per_layer and len(out.layers) == 2


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_parameter_names_say_the_cell(cell: str, norm: str) -> None:
    """A user reading per-parameter gradient norms sees `lstm.1.weight_hh_l0`, not `rnn.1...`;
    `net.rnn` is the same stack whatever the cell."""
    net = RecurrentNet(2, 1, cell=cell, hidden_size=4, num_layers=2, norm=norm)
    names = [n for n, _ in net.named_parameters()]
    stacked = [n for n in names if not n.startswith("head.")]
    assert stacked and all(n.startswith(f"{cell}.") for n in stacked), names
    assert f"{cell}.1.weight_hh_l0" in names and "head.weight" in names
    assert net.get_submodule(cell) is net.rnn and len(net.rnn) == 2
    assert list(net.recurrent_weights()) == [f"{cell}.0.weight_hh_l0", f"{cell}.1.weight_hh_l0"]
    assert list(net.state_dict()) == names  # a state dict round-trips under the same names
    twin = RecurrentNet(2, 1, cell=cell, hidden_size=4, num_layers=2, norm=norm)
    twin.load_state_dict(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), net.parameters(), strict=True))
