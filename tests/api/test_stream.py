"""GET /v1/experiments/{id}/stream (Server-Sent Events) while a real run goes, and after."""

import json

import pytest

from tests.checks import assert_problem
from tests.factories import SMALL, add_experiment
from tests.serving import worker_thread


def read_events(client, exp_id: str) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    with client.stream("GET", f"/v1/experiments/{exp_id}/stream") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((event, json.loads(line.removeprefix("data: "))))
    return out


@pytest.fixture
def fast(settings, monkeypatch):
    from api.routes import stream

    monkeypatch.setattr(stream, "POLL_S", 0.05)
    monkeypatch.setattr(settings, "flush_every_steps", 10)  # several batches a run
    return settings


def test_stream_follows_a_run_to_its_end(client, sessions, fast) -> None:
    spec = {**SMALL, "train": {**SMALL["train"], "steps": 60}}
    exp_id = add_experiment(sessions, spec)
    with worker_thread(sessions):
        events = read_events(client, exp_id)
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and events[0][1]["status"] in ("queued", "running", "succeeded")
    assert kinds[-1] == "end" and kinds.count("end") == 1
    statuses = [d["status"] for k, d in events if k == "status"]
    assert statuses[-1] == "succeeded" and len(statuses) == len(set(statuses))
    steps = [d["step"] for k, d in events if k == "progress"]
    assert steps == sorted(steps) and steps[-1] == 60
    # every flushed loss point arrives exactly once, in order
    loss_steps = [s for k, d in events if k == "batch" for s in d.get("loss", {}).get("steps", [])]
    assert loss_steps == list(range(60))
    grad_steps = [
        s for k, d in events if k == "batch" for s in d.get("grad_norm_total", {}).get("steps", [])
    ]
    assert grad_steps == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 59]
    end = events[-1][1]
    assert end["id"] == exp_id and end["summary"]["steps_run"] == 60
    assert end["diagnosis"]["verdict"]
    final = client.get(f"/v1/experiments/{exp_id}/metrics").json()
    streamed = [v for k, d in events if k == "batch" for v in d.get("loss", {}).get("values", [])]
    assert streamed == pytest.approx(final["loss"])


def test_a_finished_experiment_streams_everything_and_ends(client, sessions, fast) -> None:
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, SMALL)
    assert run_experiment(exp_id) == "succeeded"
    events = read_events(client, exp_id)
    assert [k for k, _ in events] == ["status", "progress", "batch", "end"]
    assert events[2][1]["loss"]["steps"] == list(range(30))


def test_stream_of_another_owners_experiment_is_404(client, sessions, api_key) -> None:
    exp_id = add_experiment(sessions, SMALL)  # owner "tester"
    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    assert_problem(client.get(f"/v1/experiments/{exp_id}/stream", headers=other), 404)
    assert_problem(client.get("/v1/experiments/missing/stream"), 404)
