"""The compute-budget estimate of a spec (core/spec.py: estimated_cost)."""

import pytest

from core.spec import ExperimentCreate, TaskShape, estimated_cost, seq_len_of, task_shape


def cost_of(**spec: object) -> float:
    return estimated_cost(ExperimentCreate.model_validate(spec))


@pytest.mark.parametrize(
    ("task", "t", "f"),
    [
        ({"name": "adding", "seq_len": 300}, 300, 2),
        ({"name": "copy", "seq_len": 100}, 120, 10),
        ({"name": "digits", "read": "rows"}, 8, 8),
        ({"name": "digits", "read": "pixels"}, 64, 1),
    ],
)
@pytest.mark.parametrize(("cell", "gates"), [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_cost_is_steps_batch_t_gates_hidden_times_recurrent_and_input_widths(
    task: dict, t: int, f: int, cell: str, gates: int
) -> None:
    spec = {
        "task": task,
        "model": {"cell": cell, "hidden_size": 40, "num_layers": 3},
        "train": {"steps": 700, "batch_size": 16},
    }
    assert seq_len_of(ExperimentCreate.model_validate(spec).task) == t
    assert task_shape(ExperimentCreate.model_validate(spec).task) == TaskShape(t, f)
    assert cost_of(**spec) == 700 * 16 * t * gates * 40 * (40 * 3 + f)


def test_an_uploaded_datasets_cost_reads_its_t_and_f() -> None:
    spec = ExperimentCreate.model_validate(
        {
            "task": {"name": "dataset", "id": "d"},
            "model": {"hidden_size": 10},
            "train": {"steps": 5, "batch_size": 2},
        }
    )
    assert estimated_cost(spec, TaskShape(30, 1000)) == 5 * 2 * 30 * 10 * (10 + 1000)
    with pytest.raises(ValueError, match="shape"):
        estimated_cost(spec)


def test_cost_scales_with_each_factor() -> None:
    base = cost_of()
    # default hidden 128, adding F=2: hidden x (hidden + F)
    assert cost_of(model={"hidden_size": 256}) == pytest.approx(base * 256 * 258 / (128 * 130))
    assert cost_of(train={"steps": 4000}) == pytest.approx(2 * base)
    assert cost_of(task={"seq_len": 400}) == pytest.approx(2 * base)
    assert cost_of(model={"num_layers": 3}) == pytest.approx(base * (3 * 128 + 2) / (128 + 2))


def test_default_spec_is_within_the_default_budget() -> None:
    from core.settings import Settings

    assert cost_of() < Settings().max_cost
    biggest = {
        "task": {"seq_len": 5000},
        "model": {"cell": "lstm", "hidden_size": 1024, "num_layers": 8},
        "train": {"steps": 100_000, "batch_size": 1024},
    }
    assert cost_of(**biggest) > Settings().max_cost
