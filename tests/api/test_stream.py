"""GET /v1/experiments/{id}/stream (Server-Sent Events) while a real run goes, and after."""

import json
import threading
from typing import Any

import pytest

from tests.checks import assert_problem
from tests.factories import SMALL, add_experiment
from tests.serving import worker_thread


def read_stream(client, exp_id: str, last_id: str | None = None, until=None) -> list[tuple]:
    """The events of one connection as (event, id, data), parsed as an EventSource does
    (fields, then a blank line dispatches); `last_id` sent as Last-Event-ID; `until(event,
    data)` true ends the connection there (a client going away mid-stream)."""
    out: list[tuple] = []
    headers = {} if last_id is None else {"Last-Event-ID": last_id}
    with client.stream("GET", f"/v1/experiments/{exp_id}/stream", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = event_id = data = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("id: "):
                event_id = line.removeprefix("id: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
            elif line == "" and event is not None:
                out.append((event, event_id, data))
                if until is not None and until(event, data):
                    break
                event = event_id = data = None
    return out


def read_events(client, exp_id: str) -> list[tuple[str, dict]]:
    return [(event, data) for event, _, data in read_stream(client, exp_id)]


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
    assert [k for k, _ in events] == ["status", "progress", "batch", "validation", "end"]
    assert events[2][1]["loss"]["steps"] == list(range(30))
    final_val = events[4][1]["summary"]["final_val_loss"]
    assert events[3][1] == {"step": 29, "loss": final_val, "accuracy": None}


def test_stream_of_another_owners_experiment_is_404(client, sessions, api_key) -> None:
    exp_id = add_experiment(sessions, SMALL)  # owner "tester"
    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    assert_problem(client.get(f"/v1/experiments/{exp_id}/stream", headers=other), 404)
    assert_problem(client.get("/v1/experiments/missing/stream"), 404)


@pytest.mark.parametrize(
    "spec",
    [
        SMALL,  # tanh rnn
        {**SMALL, "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2}},
        {**SMALL, "model": {"hidden_size": 8, "init": {"gain": 0.3}}, "task": {"seq_len": 30}},
    ],
    ids=["rnn", "lstm2", "vanishing"],
)
def test_the_verdict_so_far_is_the_diagnosis_of_what_is_stored(sessions, spec) -> None:
    """Read back from the stored series after the run, the provisional verdict's per-layer
    judgement is the worker's own (the same window, the same evidence, the same numbers)."""
    from core.provisional import verdict_so_far
    from core.tables import Experiment
    from tests.factories import run_finished

    exp_id = run_finished(sessions, spec)
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        so_far, final = verdict_so_far(s, row), row.diagnosis
    assert so_far["provisional"] is True and "outcome" not in so_far
    assert so_far["step"] == final["evidence"]["profile_step"] == 29
    assert so_far["verdict"] == final["verdict"] and so_far["reason"] == final["reason"]
    assert so_far["layers"] == final["layers"]
    assert so_far["evidence"]["window_steps"] == final["evidence"]["window_steps"]
    assert so_far["evidence"]["spectrum"] == final["evidence"]["spectrum"]


# -- ids, resuming, and the live validation and verdict --

LIVE = {
    "task": {"seq_len": 10},
    "model": {"hidden_size": 8},
    "train": {"steps": 120, "batch_size": 8},
    # the instruments the verdict reads: the rest only costs time here
    "instrument": {"every": 5, "val_every": 20, "on": ["temporal", "spectrum"]},
}


@pytest.fixture
def live(fast, monkeypatch, one_torch_thread):
    """Fast polls, several flushes, and a verdict budget short enough to see it move; when
    the verdict was read, and how often the stream polled, are kept."""
    import time

    from api.routes import stream

    calls: dict[str, Any] = {"verdict": [], "poll": []}
    verdict, poll = stream._verdict, stream._poll
    seen = calls["seen"] = threading.Event()  # a verdict was read

    def counted_verdict(row):
        calls["verdict"].append(time.monotonic())
        got = verdict(row)
        if got is not None:
            seen.set()
        return got

    def counted_poll(*args):
        calls["poll"].append(time.monotonic())
        return poll(*args)

    monkeypatch.setattr(fast, "stream_verdict_every_s", 0.25)
    monkeypatch.setattr(stream, "_verdict", counted_verdict)
    monkeypatch.setattr(stream, "_poll", counted_poll)
    monkeypatch.setattr(fast, "flush_every_steps", 20)
    return calls


@pytest.fixture
def verdict_while_running(live, monkeypatch):
    """The run waits (at most 10 s) after each flush for the stream's first verdict: on a busy
    machine a 120-step run could otherwise end before the stream polls it running."""
    from worker.trace_writer import Writer

    put = Writer.put

    def waiting_put(self, batch, step):
        put(self, batch, step)
        live["seen"].wait(10)

    monkeypatch.setattr(Writer, "put", waiting_put)
    return live


def check_continuous(events: list[tuple], exp_id: str, client) -> None:
    """What one client saw, over one or more connections: every event with an id of its own,
    nothing twice, every flushed point once and in order, validation and verdicts moving
    forward, the end once."""
    ids = [i for _, i, _ in events]
    assert all(ids) and len(set(ids)) == len(ids)
    kinds = [k for k, _, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and kinds.count("end") == 1
    statuses = [d["status"] for k, _, d in events if k == "status"]
    assert len(statuses) == len(set(statuses)) and statuses[-1] == "succeeded"
    steps = [d["step"] for k, _, d in events if k == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == LIVE["train"]["steps"]
    loss = [s for k, _, d in events if k == "batch" for s in d.get("loss", {}).get("steps", [])]
    assert loss == list(range(LIVE["train"]["steps"]))
    metrics = client.get(f"/v1/experiments/{exp_id}/metrics").json()
    validation = metrics["validation"]
    stored_val = dict(zip(validation["steps"], validation["loss"], strict=True))
    val = [d for k, _, d in events if k == "validation"]
    assert val and [v["step"] for v in val] == sorted({v["step"] for v in val})
    assert all(v["loss"] == stored_val[v["step"]] and v["accuracy"] is None for v in val)
    assert val[-1]["step"] == metrics["validation"]["steps"][-1]
    verdicts = [d for k, _, d in events if k == "verdict"]
    assert [v["step"] for v in verdicts] == sorted({v["step"] for v in verdicts})
    assert all(v["provisional"] is True and "outcome" not in v for v in verdicts)
    end = events[-1][2]
    assert end["diagnosis"]["verdict"] and "provisional" not in end["diagnosis"]


def test_a_live_stream_has_ids_validation_and_the_verdict_so_far(
    client, sessions, verdict_while_running
) -> None:
    exp_id = add_experiment(sessions, LIVE)
    with worker_thread(sessions):
        events = read_stream(client, exp_id)
    check_continuous(events, exp_id, client)
    kinds = [k for k, _, _ in events]
    verdicts = [d for k, _, d in events if k == "verdict"]
    # while it ran: the verdict of what was stored, before the end, on the worker's own terms
    assert verdicts and kinds.index("verdict") < kinds.index("end")
    assert verdicts[-1]["verdict"] in ("healthy", "vanishing", "exploding", "inconclusive")
    assert verdicts[-1]["layers"][0]["lag"] == LIVE["task"]["seq_len"] - 1
    # the budget: read on connect, then only after new instrumented steps, at most every
    # STREAM_VERDICT_EVERY_S
    read = verdict_while_running["verdict"]
    instrumented = [d for k, _, d in events if k == "batch" and "grad_norm_total" in d]
    assert 1 <= len(read) <= 1 + len(instrumented)
    assert all(b - a >= 0.25 for a, b in zip(read, read[1:], strict=False)), read


def test_the_verdict_is_not_read_again_while_nothing_new_is_stored(client, sessions, live) -> None:
    """A running experiment whose worker stores nothing new: the stream keeps polling the row,
    the verdict so far is read once."""
    import threading

    from core.tables import Experiment
    from tests.factories import run_finished

    exp_id = run_finished(sessions, LIVE)
    with sessions() as s:
        s.get(Experiment, exp_id).status = "running"  # as if its worker were still on it
        s.commit()

    def finish() -> None:
        threading.Event().wait(1.5)
        with sessions() as s:
            s.get(Experiment, exp_id).status = "succeeded"
            s.commit()

    ender = threading.Thread(target=finish)
    ender.start()
    events = read_stream(client, exp_id)
    ender.join()
    kinds = [k for k, _, _ in events]
    assert kinds.count("verdict") == 1 and kinds[-1] == "end"
    assert len(live["verdict"]) == 1 and len(live["poll"]) >= 5, live


def test_a_client_that_comes_back_with_last_event_id_misses_nothing_and_gets_nothing_twice(
    client, sessions, live
) -> None:
    exp_id = add_experiment(sessions, LIVE)
    with worker_thread(sessions):
        first = read_stream(client, exp_id, until=lambda k, d: k == "batch" and "loss" in d)
        assert first[-1][0] == "batch" and first[-1][2]["loss"]["steps"][0] == 0
        rest = read_stream(client, exp_id, last_id=first[-1][1])
    assert rest and rest[0][2] != first[-1][2]
    check_continuous(first + rest, exp_id, client)


def test_resuming_a_finished_experiments_stream_goes_on_after_the_id(
    client, sessions, fast, monkeypatch
) -> None:
    from api.routes import stream
    from tests.factories import run_finished

    monkeypatch.setattr(stream, "CHUNKS_PER_POLL", 2)  # the catch-up in several batches
    exp_id = run_finished(sessions, {**SMALL, "train": {**SMALL["train"], "steps": 60}})
    whole = read_stream(client, exp_id)
    batches = [i for i, (k, _, _) in enumerate(whole) if k == "batch"]
    assert len(batches) > 3

    def content(events: list[tuple]) -> list[str]:
        return sorted(json.dumps([k, d], sort_keys=True) for k, _, d in events)

    for cut in (batches[0], batches[2], len(whole) - 2):
        rest = read_stream(client, exp_id, last_id=whole[cut][1])
        # what was not had yet, once each (the latest validation may come a batch earlier or
        # later than on the first connection: it is read on connect)
        assert content(rest) == content(whole[cut + 1 :])
        assert rest[-1][0] == "end" and not {"status", "progress"} & {k for k, _, _ in rest}
    # a cursor of an earlier attempt: this attempt's stream from its start
    again = read_stream(client, exp_id, last_id="0.999999.30.29.29.running")
    assert [k for k, _, _ in again] == [k for k, _, _ in whole]
    # after the end there is nothing more: 204, which tells EventSource not to reconnect
    end_id = whole[-1][1]
    assert whole[-1][0] == "end" and end_id.endswith(".end")
    resp = client.get(f"/v1/experiments/{exp_id}/stream", headers={"Last-Event-ID": end_id})
    assert resp.status_code == 204 and resp.content == b""


@pytest.mark.parametrize(
    "bad", ["", "nonsense", "1.2.3.4.5", "1.2.3.4.5.sleeping", "1.-2.3.4.5.running", "9" * 101]
)
def test_a_last_event_id_the_stream_never_sent_is_a_422_naming_it(client, sessions, bad) -> None:
    exp_id = add_experiment(sessions, SMALL)
    resp = client.get(f"/v1/experiments/{exp_id}/stream", headers={"Last-Event-ID": bad})
    assert_problem(resp, 422, "Last-Event-ID")


def test_the_validation_event_carries_the_accuracy_where_the_task_has_one(
    client, sessions, fast
) -> None:
    from tests.factories import run_finished

    exp_id = run_finished(sessions, {**SMALL, "task": {"name": "digits", "read": "rows"}})
    (val,) = [d for k, _, d in read_stream(client, exp_id) if k == "validation"]
    metrics = client.get(f"/v1/experiments/{exp_id}/metrics").json()["validation"]
    assert val["step"] == metrics["steps"][-1] == 29
    assert (val["loss"], val["accuracy"]) == (metrics["loss"][-1], metrics["accuracy"][-1])
    assert 0 <= val["accuracy"] <= 1
