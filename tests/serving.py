"""Test helpers: the app served by uvicorn on a free loopback port, and a worker thread that
runs whatever is queued (worker.runner, no Celery), for tests that talk real HTTP."""

import contextlib
import hashlib
import hmac
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
WEBHOOK_SECRET = "test-webhook-secret-0123"  # the `hooks` fixture's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn(
    env: dict[str, str], log_path: Path, port: int | None = None, access_log: bool = False
) -> Iterator[str]:
    """Serves api.main:app with `env` added; yields the base URL once /healthz answers.
    `port`: a given one (to serve again where a client was talking), else a free one;
    uvicorn's own access log is off unless `access_log`."""
    port = port or free_port()
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1"]
            + ["--port", str(port)]
            + ([] if access_log else ["--no-access-log"]),
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.time() < deadline, "uvicorn did not start"
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def worker_thread(sessions) -> Iterator[list[str]]:
    """Runs every queued experiment, one at a time, until the block ends; yields the ids run."""
    from core.tables import Experiment
    from worker.runner import run_experiment

    stop = threading.Event()
    ran: list[str] = []

    def loop() -> None:
        while not stop.is_set():
            with sessions() as s:
                queued = s.scalars(
                    select(Experiment.id)
                    .where(Experiment.status == "queued")
                    .order_by(Experiment.created_at)
                ).all()
            for exp_id in queued:
                run_experiment(exp_id)
                ran.append(exp_id)
            stop.wait(0.1)

    thread = threading.Thread(target=loop, daemon=True, name="test-worker")
    thread.start()
    try:
        yield ran
    finally:
        stop.set()
        thread.join(60)


class Receiver:
    """A webhook receiver on a free loopback port (http.server in a thread). It answers with
    `codes` in turn (the last one repeats) and keeps every request: (headers, raw body)."""

    def __init__(self, *codes: int) -> None:
        import http.server

        self.codes = list(codes) or [200]
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.received.append((dict(self.headers.items()), body))
                    code = outer.codes[min(len(outer.received), len(outer.codes)) - 1]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        import json

        with self.lock:
            return [json.loads(body) for _, body in self.received]


def verify(headers: dict[str, str], body: bytes, secret: str = WEBHOOK_SECRET) -> bool:
    """What a receiver does (README, "Webhooks"), written here independently of the sender."""
    timestamp = headers["X-Gradlab-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(headers["X-Gradlab-Signature"], "sha256=" + expected.hexdigest())
