"""GET /metrics (Prometheus), X-Request-ID in and out, JSON log lines."""

import io
import json
import logging
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.tables import Experiment, utcnow
from tests.factories import SMALL, add_experiment


def scrape(client) -> dict[tuple[str, tuple], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def requests(samples: dict, route: str, status: str) -> float:
    labels = (("method", "GET"), ("route", route), ("status", status))
    return samples.get(("gradlab_http_requests_total", labels), 0.0)


def test_requests_are_counted_by_route_template(client) -> None:
    route = "/v1/experiments/{experiment_id}"
    before = scrape(client)
    for i in range(3):
        assert client.get(f"/v1/experiments/nope-{i}").status_code == 404
    assert client.get("/v1/experiments").status_code == 200
    after = scrape(client)
    assert requests(after, route, "404") - requests(before, route, "404") == 3
    assert (
        requests(after, "/v1/experiments", "200") - requests(before, "/v1/experiments", "200") == 1
    )
    count = ("gradlab_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert after[count] - before.get(count, 0) == 3
    # ids never become labels
    assert not any("nope-" in str(labels) for _, labels in after)


def test_experiments_by_status_queue_depth_and_speed(client, sessions) -> None:
    from worker.runner import run_experiment

    ids = [add_experiment(sessions, SMALL) for _ in range(3)]
    assert run_experiment(ids[0]) == "succeeded"
    now = utcnow()
    with sessions() as s:
        row = s.get(Experiment, ids[1])
        row.status, row.worker, row.progress_step = "running", "gpu-7", 50
        row.started_at, row.heartbeat_at = now - timedelta(seconds=10), now
        s.commit()
    samples = scrape(client)
    status = {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items()
        if name == "gradlab_experiments"
    }
    assert status["queued"] == 1 and status["running"] == 1 and status["succeeded"] == 1
    assert status["diverged"] == 0
    assert samples[("gradlab_queue_depth", ())] == 1
    assert samples[("gradlab_database_up", ())] == 1
    speed = samples[("gradlab_worker_steps_per_second", (("worker", "gpu-7"),))]
    assert speed == pytest.approx(5.0)


def test_a_scrape_answers_while_the_database_is_down(client, monkeypatch) -> None:
    from api import observability

    def down():
        raise ConnectionError("database down")

    monkeypatch.setattr(observability, "get_read_engine", down)
    samples = scrape(client)
    assert samples[("gradlab_database_up", ())] == 0
    assert not any(name == "gradlab_queue_depth" for name, _ in samples)


@pytest.fixture
def log_lines():
    from core.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gradlab")
    logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_request_id_in_and_out_and_on_the_log_line(client, log_lines) -> None:
    resp = client.get("/v1/experiments", headers={"X-Request-ID": "trace-42.a"})
    assert resp.headers["x-request-id"] == "trace-42.a"
    generated = {client.get("/v1/experiments").headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3 and all(len(g) == 32 for g in generated)
    bad = client.get("/v1/experiments", headers={"X-Request-ID": "has spaces\tand tabs"})
    assert bad.headers["x-request-id"] != "has spaces\tand tabs"
    # problems carry it too
    missing = client.get("/v1/experiments/missing", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-404"
    lines = [line for line in log_lines() if line["msg"] == "request"]
    mine = next(line for line in lines if line["request_id"] == "trace-42.a")
    assert mine["route"] == "/v1/experiments" and mine["status"] == 200
    assert mine["level"] == "info" and mine["logger"] == "gradlab.http" and mine["duration_ms"] > 0
    assert next(line for line in lines if line["request_id"] == "r-404")["status"] == 404


def test_query_strings_stay_out_of_the_log(client, log_lines) -> None:
    client.get("/v1/experiments/x/report?key=glk_secret")
    assert "glk_secret" not in json.dumps(log_lines())


def test_the_request_id_is_stored_on_the_experiments_it_submits(client, sessions) -> None:
    one = client.post("/v1/experiments", json=SMALL, headers={"X-Request-ID": "submit-1"})
    sweep = client.post(
        "/v1/sweeps",
        json={"base": SMALL, "seeds": [1, 2]},
        headers={"X-Request-ID": "sweep-7"},
    )
    assert one.status_code == 202 and sweep.status_code == 202, sweep.text
    untold = client.post("/v1/experiments", json=SMALL)
    with sessions() as s:
        assert s.get(Experiment, one.json()["id"]).request_id == "submit-1"
        assert s.get(Experiment, untold.json()["id"]).request_id == untold.headers["x-request-id"]
        in_sweep = s.query(Experiment).filter_by(sweep_id=sweep.json()["id"]).all()
        assert len(in_sweep) == 2 and {r.request_id for r in in_sweep} == {"sweep-7"}
