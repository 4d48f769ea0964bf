"""Each mitigation field of the spec changes what it should, through the service's train()."""

import math
from typing import Any

import numpy as np
import pytest
import torch

from core.spec import ExperimentCreate
from models import RecurrentNet
from models.norm_cells import NormRecurrentLayer
from worker.instruments import default_instruments
from worker.instruments.base import Instrument, Run, StepContext
from worker.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(**over: Any) -> ExperimentCreate:
    base: dict[str, Any] = {
        "task": {"seq_len": 10},
        "model": {"hidden_size": 12},
        "train": {"steps": 20, "batch_size": 8, "clip": {"mode": "none"}},
        "instrument": {"every": 5, "val_every": 10},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentCreate.model_validate(base)


class Keep(Instrument):
    """Keeps the model and a copy of its parameters as they started."""

    def start(self, run: Run) -> None:
        self.run = run
        self.initial = {n: p.detach().clone() for n, p in run.model.named_parameters()}

    def final(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.run.model.named_parameters()}


def trained(s: ExperimentCreate) -> Keep:
    keep = Keep()
    result = train(s, [keep])
    assert result.status == "succeeded"
    return keep


def weight_norm(params: dict[str, torch.Tensor], p: float) -> float:
    return sum(float(w.abs().pow(p).sum()) for w in params.values() if w.dim() >= 2)


# --- architecture: residual, dropout, norm -------------------------------------------------


def test_residual_adds_each_hidden_layers_input_to_its_output() -> None:
    torch.manual_seed(0)
    plain = RecurrentNet(2, 1, hidden_size=5, num_layers=3)
    res = RecurrentNet(2, 1, hidden_size=5, num_layers=3, residual=True)
    res.load_state_dict(plain.state_dict())
    x = torch.randn(7, 4, 2)
    a, b = plain(x), res(x)
    torch.testing.assert_close(a.layers[0], b.layers[0])  # the first layer has no residual
    torch.testing.assert_close(b.inputs[1], b.layers[0])
    torch.testing.assert_close(b.inputs[2], b.layers[1] + b.layers[0])
    torch.testing.assert_close(b.top, b.layers[2] + b.inputs[2])
    torch.testing.assert_close(a.top, a.layers[2])
    assert not torch.allclose(a.top, b.top)


def test_dropout_acts_between_layers_in_training_mode_only() -> None:
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, hidden_size=64, num_layers=2, dropout=0.5)
    x = torch.randn(5, 8, 2)
    out = net(x)
    kept = out.inputs[1] != 0
    frac = float(kept.float().mean())
    assert 0.4 < frac < 0.6
    torch.testing.assert_close(out.inputs[1][kept], 2 * out.layers[0][kept])  # 1 / (1 - p)
    torch.testing.assert_close(out.top, out.layers[1])  # none after the top layer
    net.eval()
    e1, e2 = net(x), net(x)
    torch.testing.assert_close(e1.inputs[1], e1.layers[0])
    torch.testing.assert_close(e1.top, e2.top)


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_norm_spec_trains_through_the_loop(norm: str, cell: str) -> None:
    s = spec(model={"cell": cell, "norm": norm, "num_layers": 2}, train={"steps": 6})
    keep = trained(s)
    assert all(isinstance(layer, NormRecurrentLayer) for layer in keep.run.model.rnn)
    assert all(layer.norm == norm for layer in keep.run.model.rnn)
    if norm == "batch":  # trained per-step statistics, one row per time step
        assert all(layer.norm_hh.trained_steps == 10 for layer in keep.run.model.rnn)
    assert keep.final().keys() == keep.initial.keys()


# --- penalties and weight decay ----------------------------------------------------------


SGD = {"optimizer": {"name": "sgd", "lr": 0.1}}


def test_l1_drives_weights_toward_zero() -> None:
    base = trained(spec(train={**SGD, "steps": 40}))
    l1 = trained(spec(train={**SGD, "steps": 40, "l1": 0.02}))
    assert torch.equal(base.initial["rnn.0.weight_hh_l0"], l1.initial["rnn.0.weight_hh_l0"])
    assert weight_norm(l1.final(), 1) < 0.8 * weight_norm(base.final(), 1)
    for name, w in l1.final().items():
        if w.dim() >= 2:
            assert float(w.abs().mean()) < float(base.final()[name].abs().mean()), name
    small = [
        float(
            torch.cat([w.flatten() for w in k.final().values() if w.dim() >= 2])
            .abs()
            .lt(1e-2)
            .float()
            .mean()
        )
        for k in (base, l1)
    ]
    assert small[1] > small[0]  # more weights near zero


def test_l2_penalty_shrinks_the_weight_norm() -> None:
    base = trained(spec(train={**SGD, "steps": 40}))
    l2 = trained(spec(train={**SGD, "steps": 40, "l2": 0.05}))
    assert weight_norm(l2.final(), 2) < 0.8 * weight_norm(base.final(), 2)


def test_l2_penalty_and_weight_decay_differ_as_documented() -> None:
    """One sgd step, lr 0.1: the penalty l2 * sum w^2 adds 2 * l2 * w to the gradient of the
    weight matrices only (l1 * sum |w| adds l1 * sign(w)); weight_decay adds wd * w to every
    parameter's."""
    lr, c = 0.1, 0.05
    one = {"optimizer": {"name": "sgd", "lr": lr}, "steps": 1}
    base = trained(spec(train=one))
    pen = trained(spec(train={**one, "l2": c}))
    l1 = trained(spec(train={**one, "l1": c}))
    wd = trained(spec(train={**one, "optimizer": {"name": "sgd", "lr": lr, "weight_decay": c}}))
    b, p, a, d = base.final(), pen.final(), l1.final(), wd.final()
    for name, w0 in base.initial.items():
        matrix = w0.dim() >= 2
        expected_pen = -lr * 2 * c * w0 if matrix else torch.zeros_like(w0)
        torch.testing.assert_close(p[name] - b[name], expected_pen, atol=1e-6, rtol=1e-4)
        expected_l1 = -lr * c * w0.sign() if matrix else torch.zeros_like(w0)
        torch.testing.assert_close(a[name] - b[name], expected_l1, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(d[name] - b[name], -lr * c * w0, atol=1e-6, rtol=1e-4)


def test_adamw_decay_is_decoupled_from_the_gradient() -> None:
    lr, wd = 0.01, 0.1
    base = trained(spec(train={"optimizer": {"name": "adamw", "lr": lr}, "steps": 1}))
    dec = trained(
        spec(train={"optimizer": {"name": "adamw", "lr": lr, "weight_decay": wd}, "steps": 1})
    )
    for name, w0 in base.initial.items():  # w -= lr * wd * w, whatever adam's step
        torch.testing.assert_close(
            dec.final()[name] - base.final()[name], -lr * wd * w0, atol=1e-7, rtol=1e-4
        )


# --- clipping ----------------------------------------------------------------------------


class GradWatch(Instrument):
    """Gradients as backward left them, and as the optimiser received them (after clipping:
    the optimiser does not write to .grad)."""

    def __init__(self) -> None:
        self.before_max: list[float] = []
        self.after_max: list[float] = []
        self.before_norm: list[float] = []
        self.after_norm: list[float] = []

    @staticmethod
    def _grads(run: Run) -> list[torch.Tensor]:
        return [p.grad for p in run.model.parameters() if p.grad is not None]

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        g = self._grads(run)
        self.before_max.append(max(float(x.abs().max()) for x in g))
        self.before_norm.append(
            float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in g])))
        )

    def after_step(self, run: Run, ctx: StepContext) -> None:
        g = self._grads(run)
        self.after_max.append(max(float(x.abs().max()) for x in g))
        self.after_norm.append(float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in g]))))


STEEP = {"model": {"hidden_size": 12, "init": {"gain": 1.5}}, "task": {"seq_len": 20}}


def test_clip_by_value_bounds_every_gradient_entry() -> None:
    watch = GradWatch()
    c = 1e-3
    train(spec(**STEEP, train={"steps": 10, "clip": {"mode": "value", "clip_value": c}}), [watch])
    assert max(watch.before_max) > 10 * c  # the bound had work to do
    assert all(m <= c * (1 + 1e-6) for m in watch.after_max)  # c as float32 rounds up
    assert all(
        m == pytest.approx(min(b, c))
        for b, m in zip(watch.before_max, watch.after_max, strict=True)
    )


def test_clip_by_norm_rescales_to_min_of_norm_and_max_norm() -> None:
    watch = GradWatch()
    mx = 0.05
    train(spec(**STEEP, train={"steps": 10, "clip": {"mode": "norm", "max_norm": mx}}), [watch])
    assert max(watch.before_norm) > 2 * mx
    for before, after in zip(watch.before_norm, watch.after_norm, strict=True):
        assert after == pytest.approx(min(before, mx), rel=1e-4)


def test_no_clipping_leaves_gradients_alone() -> None:
    watch = GradWatch()
    train(spec(**STEEP, train={"steps": 5}), [watch])
    assert watch.after_norm == watch.before_norm


# --- optimisers and dtype ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "cls"),
    [
        ({"name": "sgd", "lr": 0.05}, torch.optim.SGD),
        ({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True}, torch.optim.SGD),
        ({"name": "adam"}, torch.optim.Adam),
        ({"name": "adamw", "weight_decay": 0.01}, torch.optim.AdamW),
        ({"name": "rmsprop", "momentum": 0.5}, torch.optim.RMSprop),
    ],
)
def test_each_optimizer_runs_and_moves_the_weights(optimizer: dict, cls: type) -> None:
    keep = trained(spec(train={"optimizer": optimizer, "steps": 5}))
    opt = keep.run.optimizer
    assert type(opt) is cls
    group = opt.param_groups[0]
    for key in ("momentum", "nesterov", "weight_decay"):
        if key in optimizer:
            assert group[key] == optimizer[key]
    final = keep.final()
    for name, w0 in keep.initial.items():
        assert torch.isfinite(final[name]).all()
        assert not torch.equal(final[name], w0), name


class DtypeWatch(Instrument):
    def before_backward(self, run: Run, ctx: StepContext) -> None:
        self.seen = {ctx.output.top.dtype, ctx.pred.dtype, ctx.loss.dtype}
        self.seen |= {p.dtype for p in run.model.parameters()}


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_float64_runs_in_float64(norm: str) -> None:
    watch = DtypeWatch()
    s = spec(model={"norm": norm}, train={"steps": 2, "dtype": "float64"})
    assert train(s, [watch]).status == "succeeded"
    assert watch.seen == {torch.float64}


# --- reproducibility ---------------------------------------------------------------------


REPRO = {
    "model": {"hidden_size": 10, "num_layers": 2, "dropout": 0.3, "norm": "batch"},
    "train": {"steps": 15, "optimizer": {"name": "adam", "lr": 0.01}},
}


def curves(s: ExperimentCreate) -> tuple[np.ndarray, np.ndarray]:
    series = train(s, default_instruments(s)).batch.series
    return series["loss"][1], series["val_loss"][1]


def test_same_spec_and_seed_give_bit_identical_curves_on_cpu() -> None:
    s = spec(seed=3, **REPRO)
    (loss_a, val_a), (loss_b, val_b) = curves(s), curves(s)
    assert len(loss_a) == 15 and np.isfinite(loss_a).all()
    assert np.array_equal(loss_a, loss_b) and np.array_equal(val_a, val_b)


def test_different_seeds_give_different_curves() -> None:
    loss_a, _ = curves(spec(seed=3, **REPRO))
    loss_b, _ = curves(spec(seed=4, **REPRO))
    assert not np.array_equal(loss_a, loss_b)
    assert math.isfinite(float(loss_b.sum()))
