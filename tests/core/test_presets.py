"""Each preset says what it studies, how many runs it makes and about how long they take."""

import math

import pytest

from core.presets import COST_PER_SECOND, PRESETS, preset_info
from core.spec import SweepCreate, estimated_cost
from core.sweeps import expand, resolve


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_counts_its_runs_and_their_time(name: str) -> None:
    info = preset_info(name, 5e13)
    preset = PRESETS[name]
    levels = math.prod(len(v) for v in preset["grid"].values())
    assert info["runs"] == levels * len(preset["seeds"])
    assert info["description"] and info["name"] == preset["name"]
    points = expand(resolve(SweepCreate(preset=name)), 5e13)
    seconds = sum(estimated_cost(s) for _, s in points) / COST_PER_SECOND
    assert info["estimated_seconds"]["one_worker"] == math.ceil(seconds)
    assert info["estimated_seconds"]["four_workers"] == math.ceil(seconds / 4)


def test_the_presets_route_lists_them(client) -> None:
    body = client.get("/v1/sweeps/presets").json()
    assert set(body) == set(PRESETS)
    assert all(p["runs"] > 0 and p["estimated_seconds"]["one_worker"] > 0 for p in body.values())


def dynamics_steps(spec) -> list[int]:
    """The steps on which the lyapunov and reach instruments run, as the loop and the
    instruments count them: every `dynamics_every`-th instrumented step."""
    n, every = spec.train.steps, spec.instrument.every
    instrumented = [s for s in range(n) if s % every == 0 or s == n - 1]
    return instrumented[:: spec.instrument.dynamics_every]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_measures_the_dynamics_its_verdict_reads_at_the_end_of_the_run(name) -> None:
    """The verdict reads the last WINDOW_STEPS steps of the reach (copy) and of lambda_1: they
    must be steps of the trained net's second half, not step 0 and one more."""
    from core.diagnosis import WINDOW_STEPS

    for params, spec in expand(resolve(SweepCreate(preset=name)), 5e13):
        on = set(spec.instrument.on)
        assert {"temporal", "lyapunov", "credit"} <= on
        if spec.task.name == "copy":
            assert "reach" in on and spec.model.norm == "none"  # the reach skips norm layers
        late = [s for s in dynamics_steps(spec) if s >= spec.train.steps // 2]
        assert len(late) >= WINDOW_STEPS, (params, late)


def test_the_flossing_preset_differs_only_by_flossing() -> None:
    points = expand(resolve(SweepCreate(preset="flossing")), 5e13)
    by = {(p["variant"], p["task.seq_len"], s.seed): s for p, s in points}
    for (label, t_len, seed), spec in by.items():
        if label.endswith(" + flossing"):
            plain = by[(label.removesuffix(" + flossing"), t_len, seed)]
            assert plain.train.flossing is None and spec.train.flossing is not None
            assert spec.model == plain.model and spec.task == plain.task
            assert spec.model_copy(update={"train": plain.train}) == plain
            assert spec.model.cell == "rnn" and spec.model.activation in (None, "tanh")
    assert len(by) == 3 * 4 * 2
