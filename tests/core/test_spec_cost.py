"""The compute-budget estimate of a spec (core/spec.py: estimated_cost)."""

import pytest

from core.spec import ExperimentCreate, estimated_cost, seq_len_of


def cost_of(**spec: object) -> float:
    return estimated_cost(ExperimentCreate.model_validate(spec))


@pytest.mark.parametrize(
    ("task", "t"),
    [
        ({"name": "adding", "seq_len": 300}, 300),
        ({"name": "copy", "seq_len": 100}, 120),
        ({"name": "digits", "read": "rows"}, 8),
        ({"name": "digits", "read": "pixels"}, 64),
    ],
)
@pytest.mark.parametrize(("cell", "gates"), [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_cost_is_steps_batch_t_hidden_squared_layers_gates(
    task: dict, t: int, cell: str, gates: int
) -> None:
    spec = {
        "task": task,
        "model": {"cell": cell, "hidden_size": 40, "num_layers": 3},
        "train": {"steps": 700, "batch_size": 16},
    }
    assert seq_len_of(ExperimentCreate.model_validate(spec).task) == t
    assert cost_of(**spec) == 700 * 16 * t * 40**2 * 3 * gates


def test_cost_scales_with_each_factor() -> None:
    base = cost_of()
    assert cost_of(model={"hidden_size": 256}) == pytest.approx(4 * base)  # default 128
    assert cost_of(train={"steps": 4000}) == pytest.approx(2 * base)
    assert cost_of(task={"seq_len": 400}) == pytest.approx(2 * base)
    assert cost_of(model={"num_layers": 3}) == pytest.approx(3 * base)


def test_default_spec_is_within_the_default_budget() -> None:
    from core.settings import Settings

    assert cost_of() < Settings().max_cost
    biggest = {
        "task": {"seq_len": 5000},
        "model": {"cell": "lstm", "hidden_size": 1024, "num_layers": 8},
        "train": {"steps": 100_000, "batch_size": 1024},
    }
    assert cost_of(**biggest) > Settings().max_cost
