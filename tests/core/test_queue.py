"""The API's bell: the Redis fast path writes what Celery's own send_task writes, and a real
worker runs what it sends (tests/integration/test_worker_process.py submits through it)."""

import base64
import json

import pytest
import redis

from core.queue import RUN_EXPERIMENT, RedisBell, enqueue, get_bell, get_celery
from tests.conftest import Backend, clear_caches, empty_tables, make_backend


def pop_all(url: str, queue: str) -> list[dict]:
    r = redis.Redis.from_url(url)
    raw = r.lrange(queue, 0, -1)
    r.delete(queue)
    return [json.loads(m) for m in reversed(raw)]  # LPUSH: the newest is first


def shape(value: object) -> object:
    """Keys all the way down, and the type of every leaf."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shape(v) for v in value]
    return type(value).__name__


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Backend:
    """PostgreSQL + Redis only: the fast path is the Redis broker's."""
    backend = make_backend("postgres", request, tmp_path)
    for key, value in backend.env().items():
        monkeypatch.setenv(key, value)
    clear_caches()
    yield backend
    clear_caches()


def test_redis_bell_writes_the_envelope_celery_writes(redis_backend: Backend) -> None:
    backend = redis_backend
    assert isinstance(get_bell(), RedisBell)
    enqueue("exp-1")
    get_celery().send_task(RUN_EXPERIMENT, args=["exp-1"])
    ours, celerys = pop_all(backend.broker_url, backend.queue_name)
    volatile = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to"}
    for msg in (ours, celerys):
        for part in (msg["headers"], msg["properties"]):
            for key in volatile & part.keys():
                part[key] = "-" if part[key] is not None else None
    assert shape(ours) == shape(celerys)
    body = {k: v for k, v in ours.items() if k != "body"}
    assert body == {k: v for k, v in celerys.items() if k != "body"}
    decode = lambda m: json.loads(base64.b64decode(m["body"]))  # noqa: E731
    assert decode(ours) == decode(celerys) == [["exp-1"], {}, decode(celerys)[2]]
    assert ours["headers"]["task"] == RUN_EXPERIMENT


def test_each_message_has_its_own_ids(redis_backend: Backend) -> None:
    backend = redis_backend
    for _ in range(3):
        enqueue("exp-2")
    msgs = pop_all(backend.broker_url, backend.queue_name)
    assert len({m["headers"]["id"] for m in msgs}) == 3
    assert len({m["properties"]["delivery_tag"] for m in msgs}) == 3
    assert all(m["headers"]["id"] == m["headers"]["root_id"] for m in msgs)


def test_the_embedded_broker_goes_through_celery(request, tmp_path, monkeypatch) -> None:
    backend = make_backend("sqlite", request, tmp_path)
    for key, value in backend.env().items():
        monkeypatch.setenv(key, value)
    clear_caches()
    assert not isinstance(get_bell(), RedisBell)
    enqueue("exp-3")
    assert backend.queue_depth() == 1


def test_a_post_with_redis_hung_is_stored_and_answered_within_seconds(
    request, tmp_path, monkeypatch
) -> None:
    """The bell fails fast when Redis hangs (a partition: the connection opens, nothing
    answers): the POST answers 202 within seconds with the row stored as queued (the
    reconciler sends it once Redis is back)."""
    import socket
    import time

    from fastapi.testclient import TestClient

    from api.main import create_app
    from core.db import get_sessionmaker
    from core.keys import create_key

    backend = make_backend("postgres", request, tmp_path)
    hung = socket.socket()  # the kernel completes connections to it; nothing ever answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    request.addfinalizer(hung.close)
    env = {**backend.env(), "BROKER_URL": f"redis://127.0.0.1:{hung.getsockname()[1]}/0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clear_caches()
    try:
        with TestClient(create_app()) as client:
            with get_sessionmaker()() as session:
                key = create_key(session, "down", "tester")[1]
            client.headers["Authorization"] = f"Bearer {key}"
            t0 = time.perf_counter()
            resp = client.post("/v1/experiments", json={"train": {"steps": 1}})
            elapsed = time.perf_counter() - t0
            assert resp.status_code == 202, resp.text
            assert client.get(resp.headers["location"]).json()["status"] == "queued"
        assert elapsed < 4.0  # redis-py's defaults wait 5 s a try, and retry
    finally:
        clear_caches()
        empty_tables(backend.database_url)
