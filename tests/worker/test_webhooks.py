"""worker.webhooks against the real databases and a real loopback receiver: the outbox rows
the runner writes, signing, retries with backoff, giving up, and claiming without doubles."""

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from core.tables import Experiment, WebhookDelivery, utcnow
from tests.checks import gaps_s
from tests.factories import EXPLODING, SMALL, add_experiment
from tests.serving import Receiver, free_port, verify

# relu with gain 2 over 20 steps: a finite global gradient norm near 1e8 at step 0, past the
# diagnosis's 1e4, and clipping keeps the run from diverging.
LOUD = {
    "model": {"activation": "relu", "hidden_size": 8, "init": {"gain": 2.0}},
    "task": {"seq_len": 20},
    "train": {"steps": 20, "batch_size": 8},
    "instrument": {"every": 5, "val_every": 10},
}


def pump(sessions, until: Callable[[], bool], timeout: float = 20.0) -> None:
    """Dispatch rounds until `until()` holds."""
    from worker.webhooks import dispatch_due

    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "deliveries did not settle"
        if not dispatch_due(sessions):
            time.sleep(0.01)


def deliveries(sessions, exp_id: str) -> list[WebhookDelivery]:
    with sessions() as s:
        return list(
            s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.experiment_id == exp_id)
                .order_by(WebhookDelivery.created_at)
            )
        )


def settled(sessions, exp_id: str) -> Callable[[], bool]:
    return lambda: all(d.status != "pending" for d in deliveries(sessions, exp_id))


def with_notify(spec: dict, url: str, *events: str) -> dict:
    return {**spec, "notify": {"url": url, "events": list(events) or ["finished"]}}


def stale_running(sessions, hooks, attempt: int) -> str:
    """A running experiment, subscribed to `finished`, whose worker stopped beating during
    `attempt`: on the last one the reconciler gives up on it, before that it requeues it."""
    exp_id = add_experiment(sessions, with_notify(SMALL, "http://x/"))
    old = utcnow() - timedelta(seconds=hooks.stale_after_s + 5)
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        row.status, row.attempt, row.heartbeat_at = "running", attempt, old
        s.commit()
    return exp_id


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    from worker.webhooks import sign

    body = b'{"event":"finished"}'
    signed = sign(b"k" * 16, "1700000000", body)
    assert verify(
        {"X-Gradlab-Timestamp": "1700000000", "X-Gradlab-Signature": signed}, body, "k" * 16
    )
    assert not verify(
        {"X-Gradlab-Timestamp": "1700000001", "X-Gradlab-Signature": signed}, body, "k" * 16
    )


def test_backoff_doubles_then_caps(settings, monkeypatch) -> None:
    from worker.webhooks import backoff_s

    monkeypatch.setattr(settings, "webhook_backoff_s", 1.0)
    monkeypatch.setattr(settings, "webhook_backoff_max_s", 10.0)
    assert [backoff_s(settings, n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_secret_is_made_once_and_kept(settings, monkeypatch, tmp_path) -> None:
    from worker.webhooks import signing_secret

    path = tmp_path / "sub" / "webhook_secret"
    monkeypatch.setattr(settings, "webhook_secret", None)
    monkeypatch.setattr(settings, "webhook_secret_file", path)
    first = signing_secret(settings)
    assert len(first) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert signing_secret(settings) == first
    monkeypatch.setattr(settings, "webhook_secret", "s" * 20)
    assert signing_secret(settings) == b"s" * 20


def test_a_finished_run_is_delivered_signed(sessions, hooks) -> None:
    from worker.runner import run_experiment

    with Receiver(200) as rx:
        exp_id = add_experiment(sessions, with_notify(SMALL, rx.url))
        assert run_experiment(exp_id) == "succeeded"
        (pending,) = deliveries(sessions, exp_id)
        assert pending.status == "pending" and pending.event == "finished"
        pump(sessions, settled(sessions, exp_id))
    (headers, body) = rx.received[0]
    assert len(rx.received) == 1 and verify(headers, body)
    assert not verify(headers, body.replace(b"succeeded", b"diverged!"))
    assert headers["X-Gradlab-Event"] == "finished"
    assert headers["X-Gradlab-Delivery"] == pending.id
    assert headers["Content-Type"] == "application/json"
    sent = rx.bodies()[0]
    assert sent["event"] == "finished" and sent["experiment_id"] == exp_id
    assert sent["status"] == "succeeded" and sent["summary"]["steps_run"] == 30
    assert sent["diagnosis"]["verdict"] and sent["error"] is None and sent["finished_at"]
    (done,) = deliveries(sessions, exp_id)
    assert done.status == "delivered" and done.attempts == 1 and done.last_status_code == 200
    assert done.delivered_at is not None and done.log[0]["status_code"] == 200


def test_retried_with_backoff_until_a_2xx(sessions, hooks, monkeypatch) -> None:
    from worker.runner import run_experiment

    monkeypatch.setattr(hooks, "webhook_backoff_s", 0.2)
    monkeypatch.setattr(hooks, "webhook_backoff_max_s", 1.0)
    with Receiver(500, 503, 204) as rx:
        exp_id = add_experiment(sessions, with_notify(SMALL, rx.url))
        run_experiment(exp_id)
        pump(sessions, settled(sessions, exp_id))
    (d,) = deliveries(sessions, exp_id)
    assert d.status == "delivered" and d.attempts == 3 and len(rx.received) == 3
    assert [a["status_code"] for a in d.log] == [500, 503, 204]
    assert [a["error"] for a in d.log] == ["HTTP 500", "HTTP 503", None]
    # each retry waited its backoff at least: 0.2 s, then 0.4 s
    first, second = gaps_s(d.log)
    assert first >= 0.2 and second >= 0.4
    # the same delivery each time: one id, the same body
    assert len({h["X-Gradlab-Delivery"] for h, _ in rx.received}) == 1
    assert len({b for _, b in rx.received}) == 1


def test_gives_up_after_max_attempts(sessions, hooks) -> None:
    from worker.runner import run_experiment
    from worker.webhooks import dispatch_due

    with Receiver(500) as rx:
        exp_id = add_experiment(sessions, with_notify(SMALL, rx.url))
        run_experiment(exp_id)
        pump(sessions, settled(sessions, exp_id))
        time.sleep(0.1)
        assert dispatch_due(sessions) == 0  # nothing left to send
    (d,) = deliveries(sessions, exp_id)
    assert d.status == "failed" and d.attempts == 4 == len(rx.received) == len(d.log)
    assert d.last_status_code == 500 and d.delivered_at is None


def test_connection_errors_are_recorded_and_retried(sessions, hooks) -> None:
    from worker.runner import run_experiment

    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    exp_id = add_experiment(sessions, with_notify(SMALL, url))
    run_experiment(exp_id)
    pump(sessions, settled(sessions, exp_id))
    (d,) = deliveries(sessions, exp_id)
    assert d.status == "failed" and d.attempts == 4
    assert d.last_status_code is None and "ConnectError" in d.last_error


def test_private_address_refused_again_at_delivery(sessions, hooks, monkeypatch) -> None:
    from worker.runner import run_experiment

    with Receiver(200) as rx:
        exp_id = add_experiment(sessions, with_notify(SMALL, rx.url))
        run_experiment(exp_id)
        monkeypatch.setattr(hooks, "webhook_allow_private", False)
        pump(sessions, settled(sessions, exp_id))
    (d,) = deliveries(sessions, exp_id)
    assert rx.received == [] and d.status == "failed"
    assert d.last_error.startswith("refused: ") and "loopback" in d.last_error


def test_first_nan_is_an_event_with_its_step(sessions, hooks) -> None:
    from worker.runner import run_experiment

    spec = {**EXPLODING, "train": {**EXPLODING["train"], "steps": 20}}
    with Receiver(200) as rx:
        exp_id = add_experiment(sessions, with_notify(spec, rx.url, "nan", "finished"))
        assert run_experiment(exp_id) == "diverged"
        pump(sessions, settled(sessions, exp_id))
    with sessions() as s:
        halted = s.get(Experiment, exp_id).summary["halted_at_step"]
    assert [d.event for d in deliveries(sessions, exp_id)] == ["nan", "finished"]
    nan, finished = rx.bodies()
    assert nan["event"] == "nan" and nan["step"] == halted and nan["attempt"] == 1
    assert nan["detail"]["origin"]["where"] and nan["detail"]["action"] == "halt"
    assert nan["detail"]["grad_norm"] in ("nan", "inf") or nan["detail"]["loss"] in ("nan", "inf")
    assert finished["status"] == "diverged"
    assert finished["diagnosis"]["verdict"] == "diverged"


def test_skip_step_nans_notify_once(sessions, hooks, monkeypatch) -> None:
    from worker.runner import run_experiment

    monkeypatch.setattr(hooks, "flush_every_steps", 1)  # a batch per step: dedupe across them

    train = {**EXPLODING["train"], "steps": 6, "nan_policy": "skip_step"}
    exp_id = add_experiment(
        sessions, with_notify({**EXPLODING, "train": train}, "http://x/", "nan")
    )
    run_experiment(exp_id)
    with sessions() as s:
        assert s.get(Experiment, exp_id).summary["nan_events"] > 1
    assert [d.event for d in deliveries(sessions, exp_id)] == ["nan"]


def test_exploding_norm_is_an_event_while_the_run_goes(sessions, hooks) -> None:
    from core.diagnosis import EXPLODING_GRAD_NORM
    from worker.runner import run_experiment

    with Receiver(200) as rx:
        exp_id = add_experiment(sessions, with_notify(LOUD, rx.url, "exploding"))
        assert run_experiment(exp_id) == "succeeded"
        pump(sessions, settled(sessions, exp_id))
    (sent,) = rx.bodies()  # once, and no `finished`: not subscribed
    assert sent["event"] == "exploding" and sent["step"] == 0
    assert sent["detail"]["grad_norm"] > EXPLODING_GRAD_NORM == sent["detail"]["threshold"]


def test_vanishing_profile_is_an_event_with_its_ratio(sessions, hooks) -> None:
    from core.diagnosis import VANISHING_RATIO
    from worker.runner import run_experiment

    # tanh, gain 0.5, T=50: the profile falls by ~1e-15 over the sequence from the first step.
    quiet = {**SMALL, "task": {"seq_len": 50}, "model": {"hidden_size": 8, "init": {"gain": 0.5}}}
    healthy = add_experiment(sessions, with_notify(SMALL, "http://x/", "vanishing"))
    run_experiment(healthy)
    assert deliveries(sessions, healthy) == []  # T=10, gain 1: no event
    with Receiver(200) as rx:
        exp_id = add_experiment(sessions, with_notify(quiet, rx.url, "vanishing", "finished"))
        run_experiment(exp_id)
        pump(sessions, settled(sessions, exp_id))
    vanishing, finished = rx.bodies()
    assert vanishing["event"] == "vanishing" and vanishing["step"] == 0
    d = vanishing["detail"]
    assert d["ratio_first_last"] < VANISHING_RATIO == d["threshold"] and d["seq_len"] == 50
    assert d["ratio_first_last"] == pytest.approx(d["first"] / d["last"])
    assert finished["diagnosis"]["verdict"] == "vanishing"


def test_nothing_is_written_for_what_is_not_subscribed(sessions, hooks) -> None:
    from worker.runner import run_experiment

    plain = add_experiment(sessions, LOUD)
    only_nan = add_experiment(sessions, with_notify(LOUD, "http://x/", "nan"))
    for exp_id in (plain, only_nan):
        run_experiment(exp_id)
        assert deliveries(sessions, exp_id) == []


def test_each_due_row_is_claimed_once(sessions, hooks, monkeypatch) -> None:
    from worker import webhooks
    from worker.webhooks import claim_due

    monkeypatch.setattr(webhooks, "BATCH", 2)  # small rounds, so the claimers interleave

    exp_id = add_experiment(sessions, SMALL)
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        s.add_all(
            [
                WebhookDelivery(
                    experiment_id=exp_id,
                    attempt=i,  # one delivery per (experiment, attempt, event)
                    event="finished",
                    url="http://x/",
                    payload={"i": i},
                    status="pending",
                    attempts=0,
                    log=[],
                    next_attempt_at=utcnow(),
                )
                for i in range(15)
            ]
        )
        s.commit()
        assert row is not None
    got: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        for _ in range(10):
            ids = [c.id for c in claim_due(sessions, hooks)]
            with lock:
                got.extend(ids)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 15
    with sessions() as s:
        attempts = s.scalars(select(WebhookDelivery.attempts)).all()
    assert set(attempts) == {1}


def test_a_lost_worker_given_up_on_notifies_finished(sessions, hooks) -> None:
    from worker.reconciler import reconcile

    exp_id = stale_running(sessions, hooks, hooks.max_attempts)
    reconcile(sessions, hooks, send=lambda _: None)
    (d,) = deliveries(sessions, exp_id)
    assert d.event == "finished" and d.payload["status"] == "failed"
    assert d.payload["error"]["type"] == "worker_lost" and d.attempt == hooks.max_attempts
    # requeued (attempts left) is not terminal: nothing to tell
    again = stale_running(sessions, hooks, 1)
    reconcile(sessions, hooks, send=lambda _: None)
    assert deliveries(sessions, again) == []


def add_delivery(sessions, url: str, **values) -> str:
    """An outbox row written directly (as an older release, or another writer, could)."""
    exp_id = add_experiment(sessions, SMALL)
    with sessions() as s:
        fields = {
            "experiment_id": exp_id,
            "attempt": 1,
            "event": "finished",
            "url": url,
            "payload": {"event": "finished", "experiment_id": exp_id},
            "status": "pending",
            "attempts": 0,
            "log": [],
            "next_attempt_at": utcnow(),
        }
        d = WebhookDelivery(**{**fields, **values})
        s.add(d)
        s.commit()
        return d.id


def row(sessions, delivery_id: str) -> WebhookDelivery:
    with sessions() as s:
        return s.get(WebhookDelivery, delivery_id)


@pytest.fixture
def one_try(hooks, monkeypatch):
    """Retries far in the future, so a round makes exactly one attempt per row however long
    the machine takes between an attempt's outcome and the next claim (with the hooks
    fixture's 10 ms backoff a slow round could claim the same row twice)."""
    monkeypatch.setattr(hooks, "webhook_backoff_s", 60.0)
    monkeypatch.setattr(hooks, "webhook_backoff_max_s", 60.0)
    return hooks


@pytest.mark.parametrize("bad", ["http://93.184.216.34/\x7f", "http://0135.0270.0330.042/h"])
def test_a_url_httpx_rejects_is_a_failed_attempt_not_a_jam(
    sessions, one_try, monkeypatch, bad
) -> None:
    """Such a URL no longer passes submit (tests/api); a row holding one is still recorded as
    a failed attempt, and the rows after it in the round go out."""
    from worker.webhooks import dispatch_due

    with Receiver(200) as rx:
        broken = add_delivery(sessions, bad)
        fine = add_delivery(sessions, rx.url)
        assert dispatch_due(sessions) == 2
    assert row(sessions, fine).status == "delivered" and len(rx.received) == 1
    b = row(sessions, broken)
    assert b.attempts == 1 and b.status == "pending" and b.log[0]["status_code"] is None
    assert b.last_error.startswith("refused: ")


def test_any_exception_in_send_is_recorded(sessions, hooks, one_try) -> None:
    from worker.webhooks import dispatch_due

    def broken_resolver(host, port):
        raise RuntimeError("resolver bug")

    d = add_delivery(sessions, "http://hooks.test/h")
    assert dispatch_due(sessions, resolve=broken_resolver) == 1
    assert row(sessions, d).last_error == "RuntimeError: resolver bug"


def test_rows_at_max_attempts_are_failed_not_claimed(sessions, hooks) -> None:
    from worker.webhooks import claim_due, fail_spent

    # its last attempt was claimed, then its dispatcher died: the lease has run out
    spent = add_delivery(sessions, "http://x/", attempts=hooks.webhook_max_attempts)
    in_flight = add_delivery(
        sessions,
        "http://x/",
        attempts=hooks.webhook_max_attempts,
        next_attempt_at=utcnow() + timedelta(seconds=60),
    )
    fail_spent(sessions, hooks)
    assert claim_due(sessions, hooks) == []
    assert (
        row(sessions, spent).status == "failed" and "no outcome" in row(sessions, spent).last_error
    )
    assert row(sessions, in_flight).status == "pending"  # its lease still runs


def test_an_unusable_secret_claims_nothing(sessions, hooks, monkeypatch, tmp_path) -> None:
    from worker.webhooks import SecretError, dispatch_due

    path = tmp_path / "webhook_secret"
    path.write_text("\n")  # left empty by a crash
    monkeypatch.setattr(hooks, "webhook_secret", None)
    monkeypatch.setattr(hooks, "webhook_secret_file", path)
    d = add_delivery(sessions, "http://x/")
    with pytest.raises(SecretError, match="0 bytes"):
        dispatch_due(sessions)
    assert row(sessions, d).attempts == 0


def test_secret_race_gives_every_worker_the_same_secret(settings, monkeypatch, tmp_path) -> None:
    from worker.webhooks import signing_secret

    monkeypatch.setattr(settings, "webhook_secret", None)
    for n in range(5):  # several rounds: the threads interleave differently each time
        monkeypatch.setattr(settings, "webhook_secret_file", tmp_path / f"s{n}" / "secret")
        barrier = threading.Barrier(8)
        got: list[bytes] = []

        def make(barrier: threading.Barrier = barrier, got: list[bytes] = got) -> None:
            barrier.wait()
            got.append(signing_secret(settings))

        threads = [threading.Thread(target=make) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 8 and len(set(got)) == 1 and len(got[0]) >= 32


def test_secret_lost_race_reads_the_winners(settings, monkeypatch, tmp_path) -> None:
    """The FileExistsError branch, deterministically: another worker links its file between
    this one's check and its own link."""
    from core import keyfile
    from worker import webhooks

    path = tmp_path / "secret"
    monkeypatch.setattr(settings, "webhook_secret", None)
    monkeypatch.setattr(settings, "webhook_secret_file", path)

    def token(n: int) -> str:
        path.write_text("the-other-workers-secret\n")
        return "mine-" + "x" * 40

    monkeypatch.setattr(keyfile.secrets, "token_urlsafe", token)  # where the secret is made
    assert webhooks.signing_secret(settings) == b"the-other-workers-secret"
    assert path.read_text() == "the-other-workers-secret\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def test_a_short_secret_file_is_refused(settings, monkeypatch, tmp_path) -> None:
    from worker.webhooks import SecretError, signing_secret

    path = tmp_path / "secret"
    monkeypatch.setattr(settings, "webhook_secret", None)
    monkeypatch.setattr(settings, "webhook_secret_file", path)
    for text in ("", "\n", "short"):
        path.write_text(text)
        with pytest.raises(SecretError):
            signing_secret(settings)


def fake_dns(monkeypatch, answers: dict[str, Callable[[], str]]) -> None:
    """socket.getaddrinfo with some names answered by `answers` (called at each lookup); every
    other host (IP literals included) goes to the real resolver."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host](), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_dns_rebinding_cannot_reach_the_private_address(
    sessions, hooks, one_try, monkeypatch
) -> None:
    """The name answers public for the check and loopback for any later lookup: the connection
    goes to the checked public address, never to the receiver on loopback."""
    import socket

    from worker.webhooks import dispatch_due

    monkeypatch.setattr(hooks, "webhook_allow_private", False)
    monkeypatch.setattr(hooks, "webhook_timeout_s", 1.0)
    lookups: list[str] = []

    def flip() -> str:
        lookups.append("rebind.test")
        return "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"

    fake_dns(monkeypatch, {"rebind.test": flip})
    real_connect = socket.create_connection
    connected: list[tuple[str, int]] = []

    def create_connection(address, *args, **kwargs):
        connected.append(address)
        if address[0] == "93.184.216.34":  # no network here: as if unreachable
            raise ConnectionRefusedError("unreachable (test)")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with Receiver(200) as rx:
        port = rx.server.server_address[1]
        d = add_delivery(sessions, f"http://rebind.test:{port}/hook")
        assert dispatch_due(sessions) == 1
    assert rx.received == [] and lookups == ["rebind.test"]
    # (connections to other ports are other threads' of this process, not the delivery's)
    assert [a for a in connected if a[1] == port] == [("93.184.216.34", port)]
    assert "ConnectError" in row(sessions, d).last_error


def test_a_name_is_delivered_over_the_pinned_ip(sessions, hooks, monkeypatch) -> None:
    """WEBHOOK_ALLOW_PRIVATE and a name resolving to loopback: sent to the IP, with the name
    in the Host header."""
    from worker.webhooks import dispatch_due

    fake_dns(monkeypatch, {"hooks.test": lambda: "127.0.0.1"})
    with Receiver(200) as rx:
        port = rx.server.server_address[1]
        d = add_delivery(sessions, f"http://hooks.test:{port}/hook?token=abc")
        assert dispatch_due(sessions) == 1
    assert row(sessions, d).status == "delivered"
    ((headers, body),) = rx.received
    assert headers["Host"] == f"hooks.test:{port}" and verify(headers, body)


class Trickler:
    """A receiver that accepts, then sends `head` and trickles `tail` a byte every 0.1 s."""

    def __init__(self, head: bytes, tail: bytes) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.head, self.tail = head, tail
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(self.head)
                for b in self.tail:
                    if self.stop.wait(0.1):
                        return
                    conn.sendall(bytes([b]))
            except OSError:
                return

    def __enter__(self) -> "Trickler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


def test_a_trickled_status_line_ends_at_the_deadline(sessions, hooks, one_try, monkeypatch) -> None:
    from worker.webhooks import dispatch_due

    monkeypatch.setattr(hooks, "webhook_timeout_s", 1.0)  # each byte comes within it
    with Trickler(b"", b"HTTP/1.1 200 OK\r\n" * 100) as rx:
        d = add_delivery(sessions, rx.url)
        t0 = time.monotonic()
        assert dispatch_due(sessions) == 1
        took = time.monotonic() - t0
    assert took < 2.5
    r = row(sessions, d)
    assert r.attempts == 1 and r.last_error == "timed out: no answer within 1 s"


def test_a_trickled_body_is_never_read(sessions, hooks, monkeypatch) -> None:
    from worker.webhooks import dispatch_due

    monkeypatch.setattr(hooks, "webhook_timeout_s", 1.0)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"
    with Trickler(head, b"x" * 1000) as rx:
        d = add_delivery(sessions, rx.url)
        t0 = time.monotonic()
        assert dispatch_due(sessions) == 1
        took = time.monotonic() - t0
    assert took < 1.0 and row(sessions, d).status == "delivered"


def test_an_outcome_after_a_takeover_is_dropped(sessions, hooks) -> None:
    from sqlalchemy import update

    from worker.webhooks import claim_due, record

    d = add_delivery(sessions, "http://x/")
    (mine,) = claim_due(sessions, hooks)
    with sessions() as s:  # my lease ran out and another dispatcher claimed attempt 2
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == d).values(attempts=2))
        s.commit()
    record(sessions, hooks, mine, 200, None, 0.1)
    r = row(sessions, d)
    assert r.status == "pending" and r.log == [] and r.last_status_code is None


def test_two_reconcilers_racing_write_one_finished(sessions, hooks) -> None:
    """Reconciler B runs whole between reconciler A's read of the stale row and A's update
    (on SQLite FOR UPDATE locks nothing; on PostgreSQL B skips the locked row): one verdict,
    one `finished` delivery, one worker_lost event."""
    from core.tables import Event
    from worker.reconciler import reconcile

    exp_id = stale_running(sessions, hooks, hooks.max_attempts)
    raced: list[dict] = []

    def racing_sessions():
        s = sessions()
        scalars = s.scalars

        def first_read_then_b(stmt, *args, **kwargs):
            rows = scalars(stmt, *args, **kwargs).all()
            if not raced:
                raced.append(reconcile(sessions, hooks, send=lambda _: None))
            return type("Rows", (), {"all": lambda self: rows})()

        s.scalars = first_read_then_b
        return s

    a = reconcile(racing_sessions, hooks, send=lambda _: None)
    assert raced[0]["failed"] + a["failed"] == 1
    (d,) = deliveries(sessions, exp_id)
    assert d.event == "finished" and d.payload["status"] == "failed"
    with sessions() as s:
        kinds = s.scalars(select(Event.kind).where(Event.experiment_id == exp_id)).all()
    assert kinds == ["worker_lost"]


def test_a_second_delivery_for_one_attempt_and_event_is_refused(sessions, hooks) -> None:
    from sqlalchemy.exc import IntegrityError

    d = add_delivery(sessions, "http://x/")
    exp_id = row(sessions, d).experiment_id
    with sessions() as s, pytest.raises(IntegrityError):
        s.add(
            WebhookDelivery(
                experiment_id=exp_id,
                attempt=1,
                event="finished",
                url="http://x/",
                payload={},
                status="pending",
                attempts=0,
                log=[],
                next_attempt_at=utcnow(),
            )
        )
        s.commit()


def test_https_to_the_pinned_ip_names_the_host_in_tls(sessions, hooks, monkeypatch) -> None:
    """The connection goes to the checked IP, and the TLS ClientHello carries the name as its
    server name (SNI; the certificate is checked against it too): read off the wire here."""
    import socket

    from worker.webhooks import dispatch_due

    fake_dns(monkeypatch, {"hooks.test": lambda: "127.0.0.1"})
    hello: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                hello.append(conn.recv(65536))  # the ClientHello; then hang up

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        d = add_delivery(sessions, f"https://hooks.test:{port}/hook")
        assert dispatch_due(sessions) >= 1
        t.join(5)
    assert hello and hello[0][:1] == b"\x16"  # a TLS handshake record
    assert b"hooks.test" in hello[0] and b"127.0.0.1" not in hello[0]
    assert row(sessions, d).log[0]["status_code"] is None  # no TLS server: the attempt failed
