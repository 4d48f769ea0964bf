"""The API and real Celery worker processes on PostgreSQL + Redis and on the embedded
default (SQLite + the SQLAlchemy broker): the whole loop, divergence, and SIGKILL."""

import json
import os
import signal

import pytest

from core.status import TERMINAL
from tests.factories import EXPLODING, LONG
from tests.factories import PROCESS_SMALL as SMALL
from tests.integration.workers import start_worker, stop, wait_for

pytestmark = pytest.mark.integration


def status_of(client, exp_id: str) -> dict:
    return client.get(f"/v1/experiments/{exp_id}").json()


def test_worker_runs_experiments_and_survives_divergence(client, backend, tmp_path) -> None:
    worker = start_worker(backend, tmp_path)
    try:
        ids = [
            client.post("/v1/experiments", json=s, headers={"X-Request-ID": f"req-{n}"}).json()[
                "id"
            ]
            for n, s in enumerate((SMALL, {**SMALL, **EXPLODING}, SMALL))
        ]
        for exp_id in ids:
            wait_for(lambda i=exp_id: status_of(client, i)["status"] in TERMINAL, 120, "a run")
        assert [status_of(client, i)["status"] for i in ids] == [
            "succeeded",
            "diverged",
            "succeeded",
        ]
        metrics = client.get(f"/v1/experiments/{ids[0]}/metrics").json()
        assert metrics["steps"] == list(range(40))
        events = client.get(f"/v1/experiments/{ids[1]}/events").json()["items"]
        nonfinite = [e for e in events if e["kind"] == "nonfinite"]
        assert nonfinite and nonfinite[0]["detail"]["origin"]["where"]
        assert {e["kind"] for e in events} <= {"norm_overflow", "nonfinite", "halt"}
        assert worker.poll() is None
    finally:
        stop(worker)
    # The submitting request's id follows each experiment into the worker's JSON log lines.
    lines = [
        json.loads(x)
        for f in tmp_path.glob("*.log")
        for x in f.read_text().splitlines()
        if x.startswith("{")
    ]
    for n, exp_id in enumerate(ids):
        mine = [x for x in lines if x.get("experiment_id") == exp_id]
        assert {x["msg"] for x in mine} >= {"experiment started", "experiment ended"}
        assert {x.get("request_id") for x in mine} == {f"req-{n}"}


def kill_mid_run(client, backend, tmp_path, **env: str) -> str:
    first = start_worker(backend, tmp_path, **env)
    try:
        exp_id = client.post("/v1/experiments", json=LONG).json()["id"]
        wait_for(lambda: status_of(client, exp_id)["progress"]["step"] > 0, 120, "progress")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first)
    assert status_of(client, exp_id)["status"] == "running"
    return exp_id


def test_sigkill_mid_run_is_run_again_to_the_end(client, backend, tmp_path) -> None:
    exp_id = kill_mid_run(client, backend, tmp_path)
    second = start_worker(backend, tmp_path)
    try:
        wait_for(lambda: status_of(client, exp_id)["status"] in TERMINAL, 180, "the re-run")
    finally:
        stop(second)
    exp = status_of(client, exp_id)
    assert exp["status"] == "succeeded" and exp["attempt"] == 2
    # the killed attempt's partial traces are gone, the retry's are whole
    assert client.get(f"/v1/experiments/{exp_id}/metrics").json()["steps"] == list(range(1500))
    kinds = [e["kind"] for e in client.get(f"/v1/experiments/{exp_id}/events").json()["items"]]
    assert kinds == ["worker_lost"]


def test_sigkill_with_no_attempts_left_is_failed_with_the_reason(client, backend, tmp_path) -> None:
    exp_id = kill_mid_run(client, backend, tmp_path, MAX_ATTEMPTS="1")
    second = start_worker(backend, tmp_path, MAX_ATTEMPTS="1")
    try:
        wait_for(lambda: status_of(client, exp_id)["status"] in TERMINAL, 60, "the verdict")
    finally:
        stop(second)
    exp = status_of(client, exp_id)
    assert exp["status"] == "failed" and exp["error"]["type"] == "worker_lost"
    assert "no heartbeat" in exp["error"]["message"]


def test_hard_time_limit_fails_the_row_and_ends_the_worker(
    client, backend, tmp_path, settings, monkeypatch
) -> None:
    # One step of this takes minutes on a CPU: the soft limit, checked between steps, cannot
    # stop it; the hard limit does. Its estimated peak (about 49 GiB, mostly the validation
    # batch it never reaches) is over the default memory budget: allowed here.
    monkeypatch.setattr(settings, "max_worker_memory", 2**40)
    huge = {
        "model": {"cell": "gru", "hidden_size": 1024},
        "task": {"seq_len": 5000},
        "train": {"steps": 2, "batch_size": 32},
    }
    worker = start_worker(backend, tmp_path, SOFT_TIME_LIMIT_S="6", HARD_TIME_LIMIT_GRACE_S="2")
    try:
        resp = client.post("/v1/experiments", json=huge)
        assert resp.status_code == 202, resp.text
        exp_id = resp.json()["id"]
        try:
            wait_for(lambda: worker.poll() is not None, 60, "the worker to end itself")
        except AssertionError:
            raise AssertionError(status_of(client, exp_id)) from None
    finally:
        stop(worker)
    assert worker.returncode == 70
    exp = status_of(client, exp_id)
    assert exp["status"] == "failed" and exp["error"]["type"] == "time_limit"
    assert "hard" in exp["error"]["message"]
