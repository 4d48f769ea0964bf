"""The learning-rate schedule (train.schedule): the documented factor at chosen steps, and the
loop really trains with it."""

import math

import pytest
from pydantic import ValidationError

from core.spec import ExperimentCreate, ScheduleSpec
from worker.instruments.base import Instrument, Run, StepContext
from worker.optim import lr_factor
from worker.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sched(**kw) -> ScheduleSpec:
    return ScheduleSpec.model_validate(kw)


def test_constant_is_one_everywhere() -> None:
    s = sched()
    assert [lr_factor(s, k, 50) for k in (0, 1, 25, 49)] == [1.0] * 4


def test_step_multiplies_by_gamma_every_step_size_updates() -> None:
    s = sched(name="step", step_size=10, gamma=0.5)
    got = {k: lr_factor(s, k, 100) for k in (0, 9, 10, 19, 20, 35)}
    assert got == {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.25, 35: 0.125}


def test_cosine_goes_from_one_through_half_towards_zero() -> None:
    s = sched(name="cosine")
    total = 100
    values = [lr_factor(s, k, total) for k in range(total)]
    assert values[0] == 1.0
    assert values[50] == pytest.approx(0.5)
    assert values[25] == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert values[-1] == pytest.approx((1 + math.cos(math.pi * 99 / 100)) / 2) and values[-1] < 1e-3
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_warmup_is_linear_then_the_schedule_starts_from_its_end() -> None:
    s = sched(name="step", step_size=3, gamma=0.1, warmup_steps=4)
    assert [lr_factor(s, k, 20) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [lr_factor(s, k, 20) for k in (4, 6, 7)] == pytest.approx([1.0, 1.0, 0.1])
    c = sched(name="cosine", warmup_steps=10)
    assert lr_factor(c, 10, 110) == 1.0
    assert lr_factor(c, 60, 110) == pytest.approx(0.5)  # halfway through what follows warm-up


def test_schedule_fields_are_validated() -> None:
    with pytest.raises(ValidationError):
        sched(name="step", step_size=0)
    with pytest.raises(ValidationError):
        sched(name="exponential")
    with pytest.raises(ValidationError):
        sched(gamma=1.5)


class LrSeen(Instrument):
    """The lr the optimiser actually used at each update."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def after_step(self, run: Run, ctx: StepContext) -> None:
        self.lrs.append(run.optimizer.param_groups[0]["lr"])


def test_the_loop_uses_and_records_the_scheduled_lr() -> None:
    spec = ExperimentCreate.model_validate(
        {
            "task": {"seq_len": 5},
            "model": {"hidden_size": 4},
            "train": {
                "steps": 12,
                "batch_size": 4,
                "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
                "schedule": {"name": "step", "step_size": 4, "gamma": 0.5, "warmup_steps": 2},
            },
            "instrument": {"every": 3, "val_every": 100},
        }
    )
    seen = LrSeen()
    result = train(spec, [seen])
    expected = [0.2 * lr_factor(spec.train.schedule, k, 12) for k in range(12)]
    assert seen.lrs == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.1) and expected[-1] == pytest.approx(0.05)
    steps, values = result.batch.series["lr"]
    assert steps == [0, 3, 6, 9, 11]
    assert values[:, 0].tolist() == pytest.approx([expected[k] for k in steps])
