"""Webhooks through the API: the spec's `notify` (validated, private addresses refused unless
allowed), GET /v1/experiments/{id}/webhooks, and a real run delivered to a loopback receiver
by the worker's dispatcher thread, on both backends."""

import socket
import time

import pytest

from core.webhooks import url_refused
from tests.checks import assert_problem, gaps_s
from tests.serving import Receiver, verify, worker_thread

TINY = {
    "task": {"seq_len": 10},
    "model": {"hidden_size": 8},
    "train": {"steps": 20, "batch_size": 8},
    "instrument": {"every": 5, "val_every": 10},
}


def notify(url: str, *events: str) -> dict:
    return {**TINY, "notify": {"url": url, **({"events": list(events)} if events else {})}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"notify": {"url": "ftp://example.com/x"}}, "notify.url"),
        ({"notify": {"url": "example.com/hook"}}, "notify.url"),
        ({"notify": {"url": "http:///no-host"}}, "notify.url"),
        ({"notify": {"url": "https://user:pw@example.com/"}}, "notify.url"),
        ({"notify": {"url": "http://example.com:99999/"}}, "notify.url"),
        ({"notify": {"url": "http://example.com/a b"}}, "notify.url"),
        # httpx refuses to send these: so does submit
        ({"notify": {"url": "http://93.184.216.34/\u007f"}}, "notify.url"),
        ({"notify": {"url": "http://93.184.216.34/\u0085"}}, "notify.url"),
        ({"notify": {"url": "http://0135.0270.0330.042/h"}}, "notify.url"),
        # number forms that are an IPv4 address to a resolver, only not dotted-quad
        ({"notify": {"url": "http://2130706433/h"}}, "notify.url"),
        ({"notify": {"url": "http://127.1/h"}}, "notify.url"),
        ({"notify": {"url": "http://0x7f.0.0.1/h"}}, "notify.url"),
        ({"notify": {"url": "https://example.com/" + "a" * 2000}}, "notify.url"),
        ({"notify": {}}, "notify.url"),
        ({"notify": {"url": "http://93.184.216.34/", "events": ["done"]}}, "notify.events.0"),
        ({"notify": {"url": "http://93.184.216.34/", "events": []}}, "notify.events"),
        ({"notify": {"url": "http://93.184.216.34/", "secret": "x"}}, "notify.secret"),
        (
            {
                "notify": {"url": "http://93.184.216.34/", "events": ["vanishing"]},
                "instrument": {"on": ["spectrum"]},
            },
            "notify.events",
        ),
    ],
)
def test_invalid_notify_is_422_naming_the_field(client, body, field) -> None:
    assert_problem(client.post("/v1/experiments", json=body), 422, field)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",  # a name: resolved, and it resolves to loopback
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data",  # the cloud metadata service
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[fe80::1]/",
        "http://no-such-host.invalid/hook",  # does not resolve
    ],
)
def test_private_loopback_and_unresolvable_hosts_are_refused(client, url) -> None:
    body = assert_problem(client.post("/v1/experiments", json=notify(url)), 422, "notify.url")
    assert client.get("/v1/experiments").json()["items"] == []  # nothing stored
    assert body["errors"][0]["type"] == "url"


def test_a_public_address_is_accepted_with_defaults(client) -> None:
    resp = client.post("/v1/experiments", json=notify("https://93.184.216.34/hook"))
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["spec"]["notify"] == {"url": "https://93.184.216.34/hook", "events": ["finished"]}
    assert body["links"]["webhooks"] == f"/v1/experiments/{body['id']}/webhooks"
    assert client.get(body["links"]["webhooks"]).json() == {"items": []}
    plain = client.post("/v1/experiments", json=TINY).json()
    assert plain["spec"]["notify"] is None


def test_private_addresses_allowed_by_the_setting(client, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "webhook_allow_private", True)
    resp = client.post("/v1/experiments", json=notify("http://127.0.0.1:9/h", "nan", "nan"))
    assert resp.status_code == 202, resp.text
    assert resp.json()["spec"]["notify"]["events"] == ["nan"]  # duplicates dropped
    # the scheme rule stands whatever the setting
    assert_problem(
        client.post("/v1/experiments", json=notify("file:///etc/passwd")), 422, "notify.url"
    )


def test_env_setting_allows_private(client, monkeypatch) -> None:
    from tests.conftest import clear_caches

    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE", "true")
    clear_caches()
    resp = client.post("/v1/experiments", json=notify("http://10.0.0.7/hook"))
    assert resp.status_code == 202, resp.text


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    def resolver(*addresses: str):
        return lambda host, port: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    public = resolver("93.184.216.34")
    assert url_refused("https://hooks.example.org/x", False, public) is None
    mixed = resolver("93.184.216.34", "10.0.0.1")
    assert "10.0.0.1" in url_refused("https://hooks.example.org/x", False, mixed)
    assert url_refused("https://hooks.example.org/x", True, mixed) is None


def test_a_hanging_lookup_is_refused_within_the_timeout() -> None:
    import threading

    release = threading.Event()

    def hangs(host, port):
        release.wait(10)
        return []

    t0 = time.monotonic()
    try:
        reason = url_refused("https://slow.example.org/x", False, hangs, timeout=0.5)
    finally:
        release.set()
    assert time.monotonic() - t0 < 1.5
    assert reason == "the host 'slow.example.org' did not resolve within 0.5 s"


def test_a_number_host_is_judged_as_what_it_connects_to() -> None:
    """inet_aton reads 0x7f.1 as 127.0.0.1: refused as a number form whatever it would be."""
    assert "dotted-quad" in url_refused("http://0x7f.1/", False)
    assert "dotted-quad" in url_refused("http://1.2.3.4.5/", True)
    assert url_refused("http://93.184.216.34/", False) is None


def test_sweep_with_a_private_notify_url_is_422(client) -> None:
    body = {"base": notify("http://192.168.1.1/h"), "grid": {"model.hidden_size": [4, 8]}}
    assert_problem(client.post("/v1/sweeps", json=body), 422, "notify.url")
    assert client.get("/v1/experiments").json()["items"] == []


def test_webhooks_of_another_owners_experiment_is_404(client, api_key) -> None:
    exp_id = client.post("/v1/experiments", json=TINY).json()["id"]
    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    assert_problem(client.get(f"/v1/experiments/{exp_id}/webhooks", headers=other), 404)
    assert_problem(client.get("/v1/experiments/missing/webhooks"), 404)


def test_cancelling_a_queued_experiment_notifies(client, hooks) -> None:
    exp_id = client.post("/v1/experiments", json=notify("http://127.0.0.1:9/h")).json()["id"]
    assert client.post(f"/v1/experiments/{exp_id}/cancel").status_code == 202
    (d,) = client.get(f"/v1/experiments/{exp_id}/webhooks").json()["items"]
    assert d["event"] == "finished" and d["status"] == "pending"
    assert d["payload"]["status"] == "cancelled" and d["payload"]["experiment_id"] == exp_id


def wait_settled(client, exp_id: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        exp = client.get(f"/v1/experiments/{exp_id}").json()
        items = client.get(f"/v1/experiments/{exp_id}/webhooks").json()["items"]
        if exp["status"] not in ("queued", "running") and all(
            d["status"] != "pending" for d in items
        ):
            return items
        assert time.monotonic() < deadline, (exp["status"], items)
        time.sleep(0.05)


def test_a_real_run_is_delivered_to_a_receiver(client, sessions, hooks) -> None:
    from worker.webhooks import Dispatcher

    dispatcher = Dispatcher(poll_s=0.02)
    dispatcher.start()
    try:
        with Receiver(200) as rx, worker_thread(sessions):
            exp_id = client.post("/v1/experiments", json=notify(rx.url)).json()["id"]
            (d,) = wait_settled(client, exp_id)
    finally:
        dispatcher.stop()
    assert d["status"] == "delivered" and d["attempts"] == 1 and d["delivered_at"]
    assert d["log"][0]["status_code"] == 200 and d["next_attempt_at"] is None
    (headers, raw) = rx.received[0]
    assert verify(headers, raw) and headers["X-Gradlab-Delivery"] == d["id"]
    sent = rx.bodies()[0]
    exp = client.get(f"/v1/experiments/{exp_id}").json()
    assert sent == d["payload"]
    assert sent["status"] == exp["status"] == "succeeded"
    assert sent["summary"] == exp["summary"] and sent["diagnosis"] == exp["diagnosis"]
    assert sent["finished_at"] == exp["finished_at"]  # rendered alike


def test_500_twice_then_200_shows_three_attempts(client, sessions, hooks, monkeypatch) -> None:
    from worker.webhooks import Dispatcher

    monkeypatch.setattr(hooks, "webhook_backoff_s", 0.2)
    monkeypatch.setattr(hooks, "webhook_backoff_max_s", 1.0)

    dispatcher = Dispatcher(poll_s=0.02)
    dispatcher.start()
    try:
        with Receiver(500, 500, 200) as rx, worker_thread(sessions):
            exp_id = client.post("/v1/experiments", json=notify(rx.url)).json()["id"]
            (d,) = wait_settled(client, exp_id)
    finally:
        dispatcher.stop()
    assert d["status"] == "delivered" and d["attempts"] == 3 == len(rx.received)
    assert [a["status_code"] for a in d["log"]] == [500, 500, 200]
    assert d["last_status_code"] == 200 and d["last_error"] is None
    # backoff: each retry waited at least its delay (0.2 s, then 0.4 s)
    first, second = gaps_s(d["log"])
    assert first >= 0.2 and second >= 0.4
