"""Faults a queue-and-database system meets, with private servers this test can restart:
Redis restarted without persistence, PostgreSQL restarted mid-run."""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis

from core.status import TERMINAL
from tests.conftest import Backend, clear_caches, empty_tables, migrate
from tests.factories import LONG
from tests.factories import PROCESS_SMALL as SMALL
from tests.integration.workers import start_worker, stop, wait_for

pytestmark = pytest.mark.integration
PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, "redis")

    def ping(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # no persistence: whatever was queued is gone
            self.proc.wait()


class PrivatePostgres:
    """A throwaway cluster, run as the postgres user (initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pg"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    def init(self) -> None:
        self.dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.dir.parent, "postgres", "postgres")
        self._as_postgres("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._as_postgres(
            "pg_ctl",
            "-D",
            str(self.dir),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "stop")


@pytest.fixture
def private_redis():
    r = PrivateRedis()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def private_pg():
    if PG_BIN is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("no PostgreSQL binaries to run a private cluster")
    # Not under pytest's tmp_path: the postgres user must be able to reach the folder.
    root = Path(tempfile.mkdtemp(prefix="gradlab-pg-"))
    pg = PrivatePostgres(root)
    pg.init()
    pg.start()
    migrate(pg.url)
    yield pg
    clear_caches()
    with contextlib.suppress(subprocess.CalledProcessError):
        pg.stop()
    shutil.rmtree(root, ignore_errors=True)


def use(backend: Backend, monkeypatch: pytest.MonkeyPatch):
    """Point the in-process API at `backend`; returns a client with a key."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from core import db
    from core.keys import create_key

    for key, value in backend.env().items():
        monkeypatch.setenv(key, value)
    clear_caches()
    with db.get_sessionmaker()() as s:
        key = create_key(s, "faults", "tester")[1]
    client = TestClient(create_app(), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {key}"
    return client


def test_redis_restarted_without_persistence_every_queued_experiment_runs(
    pg_url, private_redis, monkeypatch, tmp_path
) -> None:
    backend = Backend("postgres", pg_url, private_redis.url, f"faults-{uuid.uuid4().hex[:6]}")
    client = use(backend, monkeypatch)
    try:
        ids = [client.post("/v1/experiments", json=SMALL).json()["id"] for _ in range(3)]
        assert backend.queue_depth() == 3
        private_redis.stop()
        private_redis.start()
        assert backend.queue_depth() == 0  # the bell is gone; the rows are not
        worker = start_worker(backend, tmp_path, REQUEUE_AFTER_S="2")
        try:
            for exp_id in ids:
                wait_for(
                    lambda i=exp_id: (
                        client.get(f"/v1/experiments/{i}").json()["status"] in TERMINAL
                    ),
                    120,
                    "a queued experiment",
                )
        finally:
            stop(worker)
        assert [client.get(f"/v1/experiments/{i}").json()["status"] for i in ids] == [
            "succeeded"
        ] * 3
    finally:
        clear_caches()
        empty_tables(pg_url)


def test_postgres_restarted_mid_run_nothing_is_lost(
    private_pg, redis_url, monkeypatch, tmp_path
) -> None:
    backend = Backend("postgres", private_pg.url, redis_url, f"faults-{uuid.uuid4().hex[:6]}")
    client = use(backend, monkeypatch)
    worker = start_worker(backend, tmp_path, STALE_AFTER_S="60")
    try:
        done = client.post("/v1/experiments", json=SMALL).json()["id"]
        wait_for(
            lambda: client.get(f"/v1/experiments/{done}").json()["status"] == "succeeded",
            120,
            "the first run",
        )
        running = client.post("/v1/experiments", json=LONG).json()["id"]
        wait_for(
            lambda: client.get(f"/v1/experiments/{running}").json()["progress"]["step"] > 0,
            120,
            "progress",
        )
        private_pg.stop()
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json()["checks"]["database"].startswith("down")
        time.sleep(3)  # the worker trains on, its writes wait
        during = client.get(f"/v1/experiments/{done}")
        assert during.status_code == 503 and during.headers["retry-after"]  # not a 500
        private_pg.start()
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, "readiness")
        wait_for(
            lambda: client.get(f"/v1/experiments/{running}").json()["status"] in TERMINAL,
            180,
            "the run through the outage",
        )
        exp = client.get(f"/v1/experiments/{running}").json()
        assert exp["status"] == "succeeded" and exp["attempt"] == 1
        assert client.get(f"/v1/experiments/{running}/metrics").json()["steps"] == list(
            range(LONG["train"]["steps"])
        )
        first = client.get(f"/v1/experiments/{done}").json()
        assert first["status"] == "succeeded" and first["summary"]["steps_run"] == 40
        assert worker.poll() is None
    finally:
        stop(worker)
        redis.Redis.from_url(redis_url).delete(backend.queue_name)
