"""worker.runner and worker.store against the real databases: claim, train, store, finish."""

import threading
import time

from sqlalchemy import select

from core.tables import Event, Experiment, SeriesChunk
from core.traces import concat
from tests.factories import EXPLODING, SMALL, add_experiment


def test_runs_and_stores_the_traces(sessions) -> None:
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, SMALL)
    assert run_experiment(exp_id) == "succeeded"
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        assert row.status == "succeeded" and row.attempt == 1 and row.progress_step == 30
        assert row.summary["steps_run"] == 30 and row.finished_at is not None
        chunks = s.scalars(select(SeriesChunk).where(SeriesChunk.name == "loss")).all()
        steps, loss = concat(list(chunks))
    assert steps == list(range(30)) and all(v > 0 for v in loss)
    # a second delivery of the same message does nothing
    assert run_experiment(exp_id) is None


def test_flushes_while_running(sessions, settings, monkeypatch) -> None:
    from worker.runner import run_experiment

    monkeypatch.setattr(settings, "flush_every_steps", 10)
    exp_id = add_experiment(sessions, SMALL)
    run_experiment(exp_id, settings)
    with sessions() as s:
        firsts = s.scalars(select(SeriesChunk.first_step).where(SeriesChunk.name == "loss")).all()
    assert sorted(firsts) == [0, 10, 20]


def test_exploding_is_diverged_and_the_next_one_runs(sessions) -> None:
    from worker.runner import run_experiment

    bad = add_experiment(sessions, {**SMALL, **EXPLODING})
    good = add_experiment(sessions, SMALL)
    assert run_experiment(bad) == "diverged"
    assert run_experiment(good) == "succeeded"
    with sessions() as s:
        kinds = s.scalars(select(Event.kind).where(Event.experiment_id == bad)).all()
        nonfinite = s.scalar(select(Event).where(Event.kind == "nonfinite"))
        assert s.get(Experiment, bad).summary["halted_at_step"] == nonfinite.step
    # Finite gradients that only overflowed the norm come first, as norm_overflow events.
    assert [k for k in kinds if k != "norm_overflow"] == ["nonfinite", "halt"]
    assert nonfinite.detail["origin"]["where"]


def test_an_error_inside_torch_is_failed_with_the_reason(sessions) -> None:
    from worker.runner import run_experiment

    # No CUDA on this machine: torch raises when the model is moved there.
    exp_id = add_experiment(sessions, {**SMALL, "train": {**SMALL["train"], "device": "cuda"}})
    assert run_experiment(exp_id) == "failed"
    with sessions() as s:
        row = s.get(Experiment, exp_id)
    assert row.status == "failed" and row.error["type"] == "training_error"
    assert row.error["exception"] and row.error["message"]


def test_cancel_while_running_stops_it(sessions, settings, monkeypatch, client) -> None:
    from worker.runner import run_experiment

    # The heartbeat is far off: only the cancel poll can stop the run within the join below.
    monkeypatch.setattr(settings, "heartbeat_interval_s", 120.0)
    monkeypatch.setattr(settings, "cancel_poll_s", 0.2)
    exp_id = add_experiment(sessions, {**SMALL, "train": {**SMALL["train"], "steps": 100_000}})
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(run_experiment(exp_id, settings)))
    thread.start()
    deadline = time.time() + 30
    while client.get(f"/v1/experiments/{exp_id}").json()["status"] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    assert client.post(f"/v1/experiments/{exp_id}/cancel").status_code == 202
    thread.join(15)
    assert result == ["cancelled"]
    body = client.get(f"/v1/experiments/{exp_id}").json()
    assert body["status"] == "cancelled" and body["progress"]["step"] < 100_000


def test_a_retry_drops_the_failed_attempts_traces(sessions) -> None:
    from core import lifecycle
    from worker import store
    from worker.instruments.base import Recorder
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, SMALL)
    with sessions() as s:  # attempt 1 writes a partial trace, then its worker dies
        lifecycle.claim(s, exp_id, "dead-worker")
        rec = Recorder()
        for step in range(100, 105):
            rec.record("loss", step, 9.0)
        store.write_batch(s, exp_id, 1, rec.drain(), 105)
        row = s.get(Experiment, exp_id)
        row.status = "queued"  # what the reconciler does with a stale attempt
        s.commit()
    assert run_experiment(exp_id) == "succeeded"
    with sessions() as s:
        chunks = s.scalars(select(SeriesChunk).where(SeriesChunk.name == "loss")).all()
        assert {c.attempt for c in chunks} == {2}
        assert concat(list(chunks))[0] == list(range(30))


def test_soft_time_limit_stops_and_keeps_the_traces(sessions, client) -> None:
    from worker.runner import run_experiment

    spec = {**SMALL, "train": {**SMALL["train"], "steps": 100_000, "time_limit_s": 3.0}}
    exp_id = add_experiment(sessions, spec)
    assert run_experiment(exp_id) == "failed"
    body = client.get(f"/v1/experiments/{exp_id}").json()
    assert body["error"]["type"] == "time_limit"
    steps_run = body["summary"]["steps_run"]
    assert 0 < steps_run < 100_000
    assert len(client.get(f"/v1/experiments/{exp_id}/metrics").json()["loss"]) == steps_run


def test_the_run_and_its_threads_log_with_its_request_id(sessions, settings, monkeypatch) -> None:
    import logging

    from core import lifecycle
    from core.logs import request_id
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, SMALL)
    with sessions() as s:
        s.get(Experiment, exp_id).request_id = "req-run-1"
        s.commit()
    seen: list[tuple[str, str, str | None]] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.threadName, record.getMessage(), request_id.get()))

    def failing_heartbeat(*_args: object) -> None:
        raise RuntimeError("database restarting")

    # the heartbeat thread fails its beats, so it logs from its own thread
    monkeypatch.setattr(settings, "heartbeat_interval_s", 0.01)
    monkeypatch.setattr(settings, "cancel_poll_s", 0.01)
    monkeypatch.setattr(lifecycle, "heartbeat", failing_heartbeat)
    logger = logging.getLogger("gradlab.worker")
    grab, level = Grab(), logger.level
    logger.addHandler(grab)
    logger.setLevel(logging.INFO)
    try:
        assert run_experiment(exp_id, settings) == "succeeded"
    finally:
        logger.removeHandler(grab)
        logger.setLevel(level)
    assert {msg for _, msg, _ in seen} >= {"experiment started", "experiment ended"}
    assert any(thread == "heartbeat" for thread, _, _ in seen)
    assert {rid for _, _, rid in seen} == {"req-run-1"}
    assert request_id.get() is None
