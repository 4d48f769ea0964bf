"""Validation errors name the field as the client wrote it, and say what was meant."""

import pytest
from pydantic import ValidationError

from core.errors import field_errors
from core.spec import ExperimentCreate


def fields_of(body: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        ExperimentCreate.model_validate(body)
    return [(e["field"], e["message"]) for e in field_errors(info.value.errors())]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": {"seq_len": 1}}, "task.seq_len"),  # not task.adding.seq_len
        ({"task": {"name": "copy", "seq_len": 0}}, "task.seq_len"),
        ({"model": {"cell": "lstm", "activation": "tanh"}}, "model.activation"),  # not model
        ({"model": {"cell": "gru", "init": {"chrono": True}}}, "model.init.chrono"),
        (
            {"model": {"cell": "rnn", "recurrent_param": "orthogonal", "init": {"gain": 2}}},
            "model.init.gain",
        ),
        ({"train": {"optimizer": {"nesterov": True}}}, "train.optimizer.nesterov"),
        ({"model": {"cell": "lstm"}, "train": {"flossing": {"weight": 0.1}}}, "train.flossing"),
    ],
)
def test_each_error_names_the_field_the_client_wrote(body: dict, field: str) -> None:
    assert [f for f, _ in fields_of(body)] == [field]


@pytest.mark.parametrize(
    ("body", "meant"),
    [
        ({"modle": {}}, "model"),
        ({"model": {"hiden_size": 3}}, "model.hidden_size"),
        ({"task": {"seq_lne": 3}}, "task.seq_len"),
        ({"train": {"optimiser": {}}}, "train.optimizer"),
        ({"model": {"init": {"recurent": "identity"}}}, "model.init.recurrent"),
    ],
)
def test_a_typo_gets_a_did_you_mean(body: dict, meant: str) -> None:
    ((_, message),) = fields_of(body)
    assert message.endswith(f"did you mean {meant!r}?")


def test_no_suggestion_for_a_name_like_nothing() -> None:
    ((field, message),) = fields_of({"model": {"zzzzzz": 1}})
    assert field == "model.zzzzzz" and "did you mean" not in message
