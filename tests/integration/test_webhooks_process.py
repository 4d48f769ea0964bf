"""A real Celery worker process delivers webhooks from its own dispatcher thread (started on
worker_ready beside the reconciler), on both backends."""

import pytest

from core.status import TERMINAL
from tests.factories import EXPLODING
from tests.integration.workers import start_worker, stop, wait_for
from tests.serving import WEBHOOK_SECRET, Receiver, verify

pytestmark = pytest.mark.integration


def test_worker_process_sends_nan_then_finished(client, backend, hooks, tmp_path) -> None:
    env = {
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_POLL_S": "0.1",
    }
    with Receiver(200) as rx:
        worker = start_worker(backend, tmp_path, **env)
        try:
            spec = {
                **EXPLODING,
                "train": {**EXPLODING["train"], "steps": 20},
                "notify": {"url": rx.url, "events": ["nan", "finished"]},
            }
            exp_id = client.post("/v1/experiments", json=spec).json()["id"]
            url = f"/v1/experiments/{exp_id}"
            wait_for(lambda: client.get(url).json()["status"] in TERMINAL, 120, "the run")
            wait_for(lambda: len(rx.received) == 2, 30, "two deliveries")
        finally:
            stop(worker)
    assert all(verify(h, b) for h, b in rx.received)
    nan, finished = rx.bodies()
    # Steps before it may only have overflowed the norm (norm_overflow, clipped, no alarm).
    assert nan["event"] == "nan" and finished["status"] == "diverged"
    assert nan["step"] == finished["summary"]["halted_at_step"]
    items = client.get(f"{url}/webhooks").json()["items"]
    assert [(d["event"], d["status"], d["attempts"]) for d in items] == [
        ("nan", "delivered", 1),
        ("finished", "delivered", 1),
    ]
