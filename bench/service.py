"""Run the service for a benchmark: a fresh database, N real worker processes, the API
in-process. PostgreSQL + Redis when BENCH_PG and BENCH_REDIS are set, else the embedded
default (SQLite + the SQLAlchemy broker) in a temporary folder."""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def fresh_database(pg_admin_url: str | None, folder: Path) -> Iterator[str]:
    """A new, migrated database: on PostgreSQL (dropped afterwards) or a SQLite file."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from core.migrate import upgrade

    if pg_admin_url is None:
        url = f"sqlite:///{folder}/gradlab.sqlite"
        upgrade(url)
        yield url
        return
    name = f"gradlab_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        from core import db

        if db.get_engine.cache_info().currsize:
            db.get_engine().dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def use_environment(env: dict[str, str]) -> None:
    """Point this process's settings, engines and Celery client at `env`."""
    from api.auth import key_cache
    from core import db, queue, settings

    os.environ.update(env)
    for cached in (
        settings.get_settings,
        queue.get_celery,
        queue.get_bell,
        db.get_read_engine,
        db.get_sessionmaker,
        db.get_engine,
    ):
        cached.cache_clear()  # this process may have run a service before, on other URLs
    key_cache.clear()


def start_workers(n: int, env: dict[str, str], log_dir: Path) -> list[subprocess.Popen]:
    from worker.embedded import worker_command

    workers = []
    for i in range(n):
        log = open(log_dir / f"worker{i}.log", "wb")  # noqa: SIM115
        workers.append(
            subprocess.Popen(
                worker_command(env["QUEUE_NAME"], f"bench{i}", "INFO"),
                cwd=ROOT,
                env={**os.environ, **env, "WORKER_NAME": f"bench{i}"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.time() + 120
    while time.time() < deadline and not all(
        b"ready." in (log_dir / f"worker{i}.log").read_bytes() for i in range(n)
    ):
        time.sleep(0.2)
    return workers


def make_key(owner: str = "bench") -> str:
    from core.db import get_sessionmaker
    from core.keys import create_key

    with get_sessionmaker()() as session:
        return create_key(session, owner, owner)[1]


@contextlib.contextmanager
def service(n_workers: int, threads_per_worker: int = 1) -> Iterator[tuple[object, str]]:
    """Yields (an httpx-compatible client of the API with a key, a description of the backend)."""
    tmp = Path(tempfile.mkdtemp(prefix="gradlab-bench-"))
    pg, rd = os.environ.get("BENCH_PG"), os.environ.get("BENCH_REDIS")
    use_pg = bool(pg and rd)
    with fresh_database(pg if use_pg else None, tmp) as db_url:
        broker = rd if use_pg else f"sqla+sqlite:///{tmp}/broker.sqlite"
        desc = "PostgreSQL + Redis" if use_pg else "SQLite + SQLAlchemy broker"
        env = {
            "DATABASE_URL": db_url,
            "BROKER_URL": broker,
            "QUEUE_NAME": f"bench-{uuid.uuid4().hex[:6]}",
            "TORCH_THREADS": str(threads_per_worker),
            "OMP_NUM_THREADS": str(threads_per_worker),
            "FLUSH_EVERY_S": "2",
        }
        use_environment(env)
        workers = start_workers(n_workers, env, tmp)
        key = make_key()
        from fastapi.testclient import TestClient

        from api.main import create_app

        try:
            with TestClient(create_app()) as client:
                client.headers["Authorization"] = f"Bearer {key}"
                yield client, desc
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(30)


def wait_sweep(client, sweep_id: str, timeout: float = 3600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/v1/sweeps/{sweep_id}").json()
        if body["status"] == "finished":
            return body
        time.sleep(0.5)
    raise TimeoutError(sweep_id)
