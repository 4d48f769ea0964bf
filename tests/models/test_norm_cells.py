"""Layer and batch normalisation inside the recurrence (models/norm_cells.py)."""

import pytest
import torch
from torch import Tensor, nn

from models import RecurrentNet, init_recurrent_net
from models.norm_cells import (
    EPS,
    GateLayerNorm,
    NormGRULayer,
    NormLSTMLayer,
    NormRecurrentLayer,
    NormRNNLayer,
    StepBatchNorm,
    make_norm_layer,
)

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "elu"), ("lstm", None), ("gru", None)]
T, B, I, H = 6, 16, 3, 8  # noqa: E741


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def linear_layer(norm: str, *, zero_ih: bool = False, zero_hh: bool = False) -> NormRNNLayer:
    """h_t = N_ih(W_ih x_t) + N_hh(W_hh h_{t-1}): the normalised terms themselves, observable."""
    torch.manual_seed(0)
    layer = NormRNNLayer(I, H, norm, "linear").double()
    with torch.no_grad():
        layer.bias_ih_l0.zero_()
        layer.bias_hh_l0.zero_()
        layer.norm_ih.weight.fill_(1.0)
        layer.norm_hh.weight.fill_(1.0)
        if zero_ih:
            layer.weight_ih_l0.zero_()
        if zero_hh:
            layer.weight_hh_l0.zero_()
    return layer


def drifting_input(t: int = T, b: int = B) -> Tensor:
    """Inputs whose mean and spread change with the time step: shared statistics would not
    normalise every step."""
    g = torch.Generator().manual_seed(1)
    steps = torch.arange(t, dtype=torch.float64).view(t, 1, 1)
    return 3.0 * steps + (steps + 1) * torch.randn(t, b, I, generator=g, dtype=torch.float64)


def hidden(state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    return state if isinstance(state, Tensor) else state[0]


def test_layer_norm_normalises_the_recurrent_term_at_every_step() -> None:
    layer = linear_layer("layer", zero_ih=True)
    h0 = 5.0 + 3.0 * torch.randn(1, B, H, dtype=torch.float64)
    h, _ = layer(torch.randn(T, B, I, dtype=torch.float64), h0)  # h_t = LN(W_hh h_{t-1})
    torch.testing.assert_close(
        h.mean(-1), torch.zeros(T, B, dtype=torch.float64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(
        h.std(-1, unbiased=False), torch.ones(T, B, dtype=torch.float64), atol=1e-3, rtol=0
    )
    with torch.no_grad():
        layer.norm_hh.weight.fill_(2.5)  # the gain scales the normalised term
    h, _ = layer(torch.randn(T, B, I, dtype=torch.float64), h0)
    assert torch.allclose(h.std(-1, unbiased=False), torch.full((T, B), 2.5).double(), atol=3e-3)


def test_layer_norm_normalises_the_input_term_per_example() -> None:
    layer = linear_layer("layer", zero_hh=True)
    h, _ = layer(drifting_input())  # h_t = LN(W_ih x_t)
    assert h.mean(-1).abs().max() < 1e-9
    assert (h.std(-1, unbiased=False) - 1).abs().max() < 1e-3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_normalises_each_gate_block_of_gated_cells(cell: str) -> None:
    torch.manual_seed(0)
    layer = make_norm_layer(cell, None, I, H, "layer").double()
    seen: list[tuple[int, Tensor, Tensor]] = []
    norms = [layer.norm_ih, layer.norm_hh] + ([layer.norm_c] if cell == "lstm" else [])
    for n in norms:
        n.register_forward_hook(lambda m, i, out: seen.append((m.gates, i[0], out.detach())))
    layer(drifting_input())
    blocks = [
        (z.reshape(*z.shape[:-1], g, H), out.reshape(*out.shape[:-1], g, H))
        for g, z, out in seen
        if out.abs().max() > 0
    ]
    # the input term once, the recurrent term for t >= 1 (h_0 = 0), the lstm's c_t per step
    assert len(blocks) == (2 * T if cell == "lstm" else T)
    for z, out in blocks:  # the initial gains are 1 and there is no shift: exactly normalised
        assert out.mean(-1).abs().max() < 1e-9
        var = z.var(-1, unbiased=False)  # std is 1 up to LayerNorm's eps
        torch.testing.assert_close(out.std(-1, unbiased=False), (var / (var + EPS)).sqrt())


def test_batch_norm_uses_separate_statistics_per_time_step_in_training() -> None:
    layer = linear_layer("batch", zero_hh=True)
    h, _ = layer(drifting_input())  # h_t = BN_t(W_ih x_t)
    assert h.mean(1).abs().max() < 1e-9  # every step, every feature, over the batch
    assert (h.std(1, unbiased=False) - 1).abs().max() < 1e-3
    fresh = make_norm_layer("rnn", "tanh", I, H, "batch")
    assert torch.all(fresh.norm_ih.weight == 0.1)  # Cooijmans et al.'s initial gain


def test_batch_norm_recurrent_term_is_normalised_over_the_batch() -> None:
    layer = linear_layer("batch", zero_ih=True)
    h0 = 2.0 + torch.randn(1, B, H, dtype=torch.float64)
    h, _ = layer(torch.zeros(T, B, I, dtype=torch.float64), h0)
    assert h.mean(1).abs().max() < 1e-9
    assert (h.std(1, unbiased=False) - 1).abs().max() < 1e-3


def test_batch_norm_evaluates_with_running_statistics_per_step_and_the_last_beyond() -> None:
    layer = linear_layer("batch", zero_hh=True)
    norm = layer.norm_ih
    assert isinstance(norm, StepBatchNorm)
    norm.momentum = 1.0  # running statistics := this batch's
    x = drifting_input()
    layer(x)
    z = x @ layer.weight_ih_l0.detach().T  # (T, B, H)
    assert norm.trained_steps == T
    torch.testing.assert_close(norm.running_mean, z.mean(1))
    torch.testing.assert_close(norm.running_var, z.var(1, unbiased=True))

    layer.eval()
    longer = drifting_input(T + 3, 5)
    h, _ = layer(longer)
    zl = longer @ layer.weight_ih_l0.detach().T
    idx = torch.arange(T + 3).clamp(max=T - 1)  # steps beyond the trained length: the last
    expected = (zl - norm.running_mean[idx, None]) / torch.sqrt(norm.running_var[idx, None] + EPS)
    torch.testing.assert_close(h, expected)
    assert norm.trained_steps == T  # evaluation does not touch the statistics


def test_batch_norm_before_any_training_uses_mean_0_variance_1() -> None:
    layer = linear_layer("batch", zero_hh=True).eval()
    x = drifting_input()
    h, _ = layer(x)
    torch.testing.assert_close(h, (x @ layer.weight_ih_l0.detach().T) / (1 + EPS) ** 0.5)


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize(("cell", "activation"), CELLS)
def test_step_is_forward_one_time_step_values_and_gradients(
    norm: str, cell: str, activation: str | None
) -> None:
    torch.manual_seed(0)
    layer = make_norm_layer(cell, activation, I, H, norm).double()
    x = drifting_input()
    h, _ = layer(x)
    grads = torch.autograd.grad(h.pow(2).sum(), list(layer.parameters()))
    buffers = [b.clone() for b in layer.buffers()]

    state = None
    outs = []
    for t in range(T):
        state = layer.step(x[t], state)
        outs.append(hidden(state))
    stepped = torch.stack(outs)
    torch.testing.assert_close(stepped, h, rtol=1e-10, atol=1e-12)
    again = torch.autograd.grad(stepped.pow(2).sum(), list(layer.parameters()))
    for a, b in zip(grads, again, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(buffers, layer.buffers(), strict=True):
        assert torch.equal(a, b)  # step never moves the running statistics

    layer.eval()
    h_eval, _ = layer(x)
    state = None
    for t in range(T):
        state = layer.step(x[t], state, t)
    torch.testing.assert_close(hidden(state), h_eval[-1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("cell", "torch_module"), [("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU)]
)
def test_parameters_have_torch_names_and_shapes(cell: str, torch_module: type) -> None:
    ours = dict(make_norm_layer(cell, "tanh", I, H, "layer").named_parameters())
    for name, p in torch_module(I, H).named_parameters():
        assert ours[name].shape == p.shape, name


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize(("cell", "activation"), CELLS)
def test_recurrent_net_builds_norm_layers_and_initialisers_reach_them(
    norm: str, cell: str, activation: str | None
) -> None:
    net = RecurrentNet(
        2, 1, cell=cell, activation=activation, hidden_size=H, num_layers=2, norm=norm
    )
    kinds = {"rnn": NormRNNLayer, "lstm": NormLSTMLayer, "gru": NormGRULayer}
    assert all(type(layer) is kinds[cell] for layer in net.rnn)
    init_recurrent_net(net, "orthogonal", "xavier_uniform", 0.7)
    for layer in net.rnn:
        for blk in layer.weight_hh_l0.detach().split(H):
            sv = torch.linalg.svdvals(blk)
            torch.testing.assert_close(sv, torch.full_like(sv, 0.7), rtol=1e-4, atol=1e-5)
        assert float(layer.bias_hh_l0.detach().abs().max()) == 0
    out = net(torch.randn(T, 4, 2))
    assert out.top.shape == (T, 4, H) and len(out.layers) == 2


def test_float64_reaches_parameters_buffers_and_outputs() -> None:
    layer = make_norm_layer("lstm", None, I, H, "batch").double()
    h, (hn, cn) = layer(drifting_input())
    assert h.dtype == hn.dtype == cn.dtype == torch.float64
    assert all(b.dtype == torch.float64 for b in layer.buffers())
    assert all(p.dtype == torch.float64 for p in layer.parameters())


def test_norm_modules_are_the_documented_kinds() -> None:
    assert isinstance(make_norm_layer("gru", None, I, H, "layer").norm_hh, GateLayerNorm)
    assert isinstance(make_norm_layer("gru", None, I, H, "batch").norm_hh, StepBatchNorm)
    assert isinstance(make_norm_layer("rnn", "sigmoid", I, H, "layer"), NormRecurrentLayer)
    with pytest.raises(ValueError, match="norm"):
        make_norm_layer("rnn", "tanh", I, H, "group")
