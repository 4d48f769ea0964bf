import json
import logging

from core.logs import JsonFormatter, bound_request_id, request_id


def test_json_formatter_keeps_extras_and_the_request_id() -> None:
    fields = {"name": "gradlab.api", "levelname": "WARNING", "msg": "slow %s"}
    record = logging.makeLogRecord({**fields, "args": ("thing",), "experiment_id": "e1"})
    with bound_request_id("rid-1"):
        line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "slow thing" and line["level"] == "warning"
    assert line["experiment_id"] == "e1" and line["request_id"] == "rid-1"


def test_bound_request_id_is_undone_on_exit_and_absent_when_none() -> None:
    record = logging.makeLogRecord({"name": "gradlab.worker", "msg": "x"})
    with bound_request_id("outer"), bound_request_id(None):
        assert "request_id" not in json.loads(JsonFormatter().format(record))
    assert request_id.get() is None
