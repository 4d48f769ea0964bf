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
