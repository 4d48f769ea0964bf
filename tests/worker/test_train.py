"""The training loop on its own: no database, no Celery."""

import math

import numpy as np
import pytest
import torch

from core.spec import ExperimentCreate
from tests.factories import EXPLODING
from worker.datasets import make_task
from worker.instruments import default_instruments
from worker.instruments.base import Instrument
from worker.train import build_model, train


def spec(**over) -> ExperimentCreate:
    base = {
        "task": {"seq_len": 12},
        "model": {"hidden_size": 16},
        "train": {"steps": 23, "batch_size": 8},
        "instrument": {"every": 5, "val_every": 10},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentCreate.model_validate(base)


def test_loss_every_step_and_grad_norms_at_instrumented_steps() -> None:
    s = spec()
    result = train(s, default_instruments(s))
    series = result.batch.series
    assert result.status == "succeeded" and result.steps_run == 23
    assert series["loss"][0] == list(range(23))
    # every 5 steps, and the last step too
    assert series["grad_norm_total"][0] == [0, 5, 10, 15, 20, 22]
    assert series["val_loss"][0] == [9, 19, 22]
    assert result.summary["final_val_loss"] == pytest.approx(series["val_loss"][1][-1, 0])
    assert result.summary["baseline_loss"] == pytest.approx(1 / 6)


def test_step0_grad_norms_equal_an_independent_recomputation() -> None:
    s = spec(model={"cell": "lstm", "num_layers": 2})
    result = train(s, default_instruments(s))
    torch.manual_seed(s.seed)
    task = make_task(s.task)
    net = build_model(s, task)
    x, y = task.batch(s.train.batch_size, torch.Generator().manual_seed(s.seed))
    out = net(x)
    torch.nn.functional.mse_loss(net.head(out.top[-1]), y).backward()
    for name, p in net.named_parameters():
        steps, values = result.batch.series[f"grad/{name}"]
        assert steps[0] == 0
        assert values[0, 0] == pytest.approx(float(p.grad.norm()), rel=1e-5), name
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in net.parameters()))
    assert result.batch.series["grad_norm_total"][1][0, 0] == pytest.approx(total, rel=1e-5)


def test_exploding_spec_halts_diverged_with_the_event_located() -> None:
    s = spec(**EXPLODING)
    result = train(s, default_instruments(s))
    assert result.status == "diverged"
    events = result.batch.events
    nonfinite = [e for e in events if e["kind"] == "nonfinite"]
    assert len(nonfinite) == 1 and nonfinite[0]["step"] == result.summary["halted_at_step"]
    origin = nonfinite[0]["detail"]["origin"]
    assert origin["where"] in {"activation", "output", "loss", "gradient", "grad_norm", "weight"}
    assert nonfinite[0]["detail"]["action"] == "halt"
    assert [e["kind"] for e in events][-1] == "halt"
    assert result.summary["nan_events"] == 1


class PoisonGradientAt(Instrument):
    """Makes the gradient of one step NaN, as an overflow in backward would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights_before: dict[str, torch.Tensor] = {}
        self.weights_after: dict[str, torch.Tensor] = {}

    def before_backward(self, run, ctx) -> None:
        if ctx.step == self.step:
            ctx.output.top.register_hook(lambda g: g * float("nan"))
            self.weights_before = {n: p.detach().clone() for n, p in run.model.named_parameters()}

    def after_step(self, run, ctx) -> None:
        if ctx.step == self.step:
            self.weights_after = {n: p.detach().clone() for n, p in run.model.named_parameters()}


def test_skip_step_drops_the_update_and_goes_on() -> None:
    s = spec(train={"nan_policy": "skip_step"})
    poison = PoisonGradientAt(7)
    result = train(s, [*default_instruments(s), poison])
    assert result.status == "succeeded" and result.steps_run == 23
    assert result.summary["nan_events"] == 1 and result.summary["skipped_steps"] == 1
    (event,) = [e for e in result.batch.events if e["kind"] == "nonfinite"]
    assert event["step"] == 7 and event["detail"]["action"] == "skip_step"
    assert event["detail"]["origin"]["where"] == "gradient"
    for name, before in poison.weights_before.items():
        assert torch.equal(before, poison.weights_after[name]), name


def test_halt_policy_stops_at_the_poisoned_step() -> None:
    s = spec()
    result = train(s, [*default_instruments(s), PoisonGradientAt(4)])
    assert result.status == "diverged" and result.summary["halted_at_step"] == 4
    assert result.steps_run == 5


def test_skip_step_gives_up_after_too_many_in_a_row() -> None:
    s = spec(
        **{**EXPLODING, "train": {**EXPLODING["train"], "nan_policy": "skip_step", "steps": 150}}
    )
    result = train(s, default_instruments(s))
    assert result.status == "diverged"
    assert result.summary["skipped_steps"] == 100 and result.summary["halted_at_step"] == 99


def test_should_stop_cancels_between_steps() -> None:
    calls = iter(range(1000))
    s = spec(train={"steps": 50})
    result = train(s, default_instruments(s), should_stop=lambda: next(calls) >= 6)
    assert result.status == "cancelled" and result.steps_run == 6
    assert result.batch.series["loss"][0] == list(range(6))


def test_flushes_in_batches_as_it_goes() -> None:
    flushed: list[tuple[list[int], int]] = []
    s = spec(train={"steps": 25})
    result = train(
        s,
        default_instruments(s),
        flush_every_steps=10,
        flush_every_s=1e9,
        on_flush=lambda b, step: flushed.append((b.series["loss"][0], step)),
    )
    assert [step for _, step in flushed] == [10, 20]
    assert [steps for steps, _ in flushed] == [list(range(10)), list(range(10, 20))]
    assert result.batch.series["loss"][0] == list(range(20, 25))


@pytest.mark.parametrize(
    "task", [{"name": "adding", "seq_len": 12}, {"name": "copy", "seq_len": 5}]
)
def test_chunked_validation_equals_one_pass_over_the_whole_set(task: dict) -> None:
    from worker.instruments.base import Run
    from worker.train import Validator, forward

    s = spec(task=task)
    t = make_task(s.task)
    net = build_model(s, t)
    run = Run(
        s, t, net, torch.optim.SGD(net.parameters(), lr=0.1), torch.device("cpu"), torch.float32
    )
    v = Validator(run)
    v.chunk = 1000  # 4096 = 4 full chunks and a partial one
    loss, acc = v.evaluate(run)
    with torch.no_grad():
        net.eval()
        _, pred = forward(run, v.x)
    assert v.size == 4096
    assert loss == pytest.approx(float(t.loss(pred, v.y)), rel=1e-5)
    want_acc = t.accuracy(pred, v.y)
    assert (acc is None) == (want_acc is None)
    if acc is not None:
        assert acc == pytest.approx(float(want_acc), rel=1e-6)
    result = train(s, default_instruments(s))
    assert result.summary["val_size"] == 4096
    assert result.summary["baseline_loss_val"] == pytest.approx(t.constant_baseline(v.y))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_steps_train_exactly_as_per_layer_steps(cell: str) -> None:
    """Two layers: the steps between instrumented ones take the fused kernel; on the CPU the
    run is bit-identical to one that goes per layer at every step."""
    over = {"model": {"cell": cell, "num_layers": 2}, "train": {"steps": 12}}
    fused = train(spec(**over, instrument={"every": 5, "on": []}), ())
    per_layer = train(spec(**over, instrument={"every": 1, "on": []}), ())
    loss_f, loss_p = (r.batch.series["val_loss"][1] for r in (fused, per_layer))
    assert np.array_equal(loss_f, loss_p)


def test_a_nonfinite_fused_step_is_located_per_layer() -> None:
    """The step that blows up is not instrumented: the loop goes per layer again to find the
    first non-finite activation, as an instrumented step would have."""
    over = {**EXPLODING, "model": {"activation": "relu", "num_layers": 2, "init": {"gain": 1.3}}}
    located = []
    for every in (1000, 1):
        s = spec(**over, instrument={"every": every, "on": []})
        result = train(s, default_instruments(s))
        (event,) = [e for e in result.batch.events if e["kind"] == "nonfinite"]
        located.append((event["step"], event["detail"]["origin"]))
    assert located[0] == located[1]
    step, origin = located[0]
    assert step == 1 and origin["where"] == "activation" and origin["time_step"] > 0


SYNCS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize(
    "train_over",
    [
        {"clip": {"mode": "norm"}},
        {"clip": {"mode": "value", "clip_value": 0.5}},
        {"clip": {"mode": "none"}, "optimizer": {"name": "sgd", "lr": 0.01}},
    ],
)
def test_one_host_sync_per_step_between_instrumented_steps(monkeypatch, train_over) -> None:
    """A tensor turned into a Python value is a device sync on a GPU. Between instrumented
    steps the loop and its instruments make exactly one (the loss, the norm, the accuracy and
    the clip decision's peak, fetched together); counted here on the CPU by wrapping torch's
    conversions where gradlab's own code calls them."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    calls: list[str] = []

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            ours = caller.startswith(root) and "site-packages" not in caller
            if ours and "/tests/" not in caller:
                calls.append(name)
            return original(self, *a, **k)

        return wrapper

    class Marks(Instrument):
        def __init__(self) -> None:
            self.at: dict[int, int] = {}

        def before_backward(self, run, ctx) -> None:
            self.at[ctx.step] = len(calls)

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    s = spec(
        task={"name": "copy", "seq_len": 5},
        model={"cell": "lstm", "num_layers": 2},
        train={"steps": 14, **train_over},
        instrument={"every": 1000, "val_every": 10**5},
    )
    marks = Marks()
    result = train(s, [*default_instruments(s), marks])
    assert result.status == "succeeded"
    per_step = [marks.at[k + 1] - marks.at[k] for k in range(1, 12)]
    assert per_step == [1] * 11, per_step
