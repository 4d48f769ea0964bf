"""Webhook deliveries go out concurrently with a per-owner bound (README, "Security and
reliability"): an owner whose receiver never answers holds at most WEBHOOK_PER_OWNER sends,
and another owner's delivery is not delayed by more than one WEBHOOK_TIMEOUT_S."""

import socket
import threading
import time
from datetime import timedelta

from core.tables import WebhookDelivery, utcnow
from tests.factories import SMALL, add_experiment
from tests.serving import Receiver


class Silent:
    """A loopback server that accepts connections and never answers; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        self.most_at_once = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held = [c for c in self.held if c.fileno() != -1 and _open(c)] + [conn]
            self.most_at_once = max(self.most_at_once, len(self.held))

    def __enter__(self) -> "Silent":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def _open(conn: socket.socket) -> bool:
    """False once the client has closed its end (its attempt timed out)."""
    conn.setblocking(False)
    try:
        data = conn.recv(65536, socket.MSG_PEEK)
        while data:  # the request itself: read it away, the connection is still open
            conn.recv(65536)
            data = conn.recv(65536, socket.MSG_PEEK)
        return False  # b"": closed
    except BlockingIOError:
        return True
    except OSError:
        return False


def add(sessions, owner: str, url: str, n: int, age_s: float) -> list[str]:
    """`n` due deliveries of `owner`, each of its own experiment."""
    exp_ids = [add_experiment(sessions, SMALL, owner=owner) for _ in range(n)]
    ids = []
    with sessions() as s:
        for i, exp_id in enumerate(exp_ids):
            d = WebhookDelivery(
                experiment_id=exp_id,
                attempt=1,
                event="finished",
                url=url,
                payload={"i": i},
                status="pending",
                attempts=0,
                log=[],
                next_attempt_at=utcnow() - timedelta(seconds=age_s - i * 0.001),
            )
            s.add(d)
            s.flush()
            ids.append(d.id)
        s.commit()
    return ids


def test_a_silent_receiver_does_not_delay_another_owner(sessions, hooks, monkeypatch) -> None:
    from worker.webhooks import Dispatcher

    monkeypatch.setattr(hooks, "webhook_timeout_s", 1.0)
    monkeypatch.setattr(hooks, "webhook_max_attempts", 1)
    with Silent() as silent, Receiver(200) as rx:
        add(sessions, "alice", silent.url, 8, age_s=60)  # due first, in the order of the queue
        (bob,) = add(sessions, "bob", rx.url, 1, age_s=30)
        t0 = time.monotonic()
        dispatcher = Dispatcher(poll_s=0.05)
        dispatcher.start()
        try:
            while not rx.received and time.monotonic() - t0 < 20:
                time.sleep(0.01)
            waited = time.monotonic() - t0
        finally:
            dispatcher.stop(join_s=10)
        with sessions() as s:
            delivered = s.get(WebhookDelivery, bob)
    assert delivered.status == "delivered" and len(rx.received) == 1
    assert waited < hooks.webhook_timeout_s + 0.5, waited  # at most one timeout, not eight
    assert silent.most_at_once == hooks.webhook_per_owner  # two of alice's at once, not eight
