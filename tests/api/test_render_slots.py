"""Plots and reports draw in at most MAX_CONCURRENT_RENDERS slots (README, "Security and
reliability"): past them a 503 with Retry-After after RENDER_WAIT_S, never a 500, and other
routes answer meanwhile."""

import threading
import time

from api.deps import render_slots
from tests.checks import assert_problem
from tests.factories import run_finished


def test_renders_past_the_slots_are_503_and_other_routes_answer(
    client, sessions, settings, monkeypatch, api_key
) -> None:
    exp_id = run_finished(sessions)
    monkeypatch.setattr(settings, "max_concurrent_renders", 2)
    monkeypatch.setattr(settings, "render_wait_s", 0.2)
    slots = render_slots(2)
    assert slots.acquire(timeout=1) and slots.acquire(timeout=1)  # two renders in progress
    try:
        t0 = time.monotonic()
        resp = client.get(f"/v1/experiments/{exp_id}/plots/loss.png")
        body = assert_problem(resp, 503)
        assert resp.headers["retry-after"] and body["type"].endswith("render-busy")
        assert 0.2 <= time.monotonic() - t0 < 5
        assert_problem(client.get(f"/v1/experiments/{exp_id}/report"), 503)
        # another owner's reads do not wait on the drawing
        other = {"Authorization": f"Bearer {api_key('other')}"}
        t0 = time.monotonic()
        assert client.get("/v1/experiments", headers=other).status_code == 200
        assert client.get(f"/v1/experiments/{exp_id}/metrics").status_code == 200
        assert time.monotonic() - t0 < 2
    finally:
        slots.release()
        slots.release()
    assert client.get(f"/v1/experiments/{exp_id}/plots/loss.png").status_code == 200


def test_concurrent_reports_queue_for_the_slots_without_500(
    client, sessions, settings, monkeypatch
) -> None:
    exp_id = run_finished(sessions)
    monkeypatch.setattr(settings, "max_concurrent_renders", 1)
    monkeypatch.setattr(settings, "render_wait_s", 30)
    codes: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(
                client.get(f"/v1/experiments/{exp_id}/plots/gradients.png").status_code
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [200] * 4
