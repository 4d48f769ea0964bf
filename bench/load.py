"""Load: many concurrent clients against the service on PostgreSQL + Redis, loopback only,
bounded in time. GET /v1/experiments/{id} with wrk, then POST /v1/experiments with wrk, then
every accepted POST is looked up in the database and run to the end by real workers.

    .venv/bin/python bench/load.py [--clients 32] [--seconds 15] [--api-workers 2]

Needs wrk (Debian's package `wrk`). PostgreSQL and Redis from BENCH_PG / BENCH_REDIS, default
the local servers."""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = '{"task": {"seq_len": 2}, "model": {"hidden_size": 2}, "train": {"steps": 1, "batch_size": 1}, "instrument": {"every": 1}}'  # noqa: E501


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url: str, key: str, clients: int, seconds: int, script: Path | None = None) -> dict:
    cmd = [
        "wrk",
        "-t2",
        f"-c{clients}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
        "-H",
        f"Authorization: Bearer {key}",
        url,
    ]
    if script:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {
        "total": total,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": ms("50"),
        "p99": ms("99"),
        "errors": non2xx + sock,
    }


def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--post-seconds", type=int, default=5)
    ap.add_argument("--api-workers", type=int, default=2)
    args = ap.parse_args()

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.engine import make_url

    pg = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
    name = f"gradlab_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(pg).set(database=name).render_as_string(hide_password=False)
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "BROKER_URL": redis_url,
        "QUEUE_NAME": f"load-{uuid.uuid4().hex[:6]}",
        "RATE_LIMIT_PER_S": "1e9",
        "RATE_LIMIT_BURST": "1e9",
        "MAX_ACTIVE_PER_OWNER": "1000000",
        "TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    os.environ.update(env)
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = db_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    from api.auth import create_key
    from api.db import get_sessionmaker
    from api.tables import Experiment

    with get_sessionmaker()() as s:
        key = create_key(s, "load", "load")[1]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--port",
            str(port),
            "--workers",
            str(args.api_workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    workers: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="gradlab-load-"))
    try:
        auth = {"Authorization": f"Bearer {key}"}
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        exp_id = httpx.post(f"{base}/v1/experiments", content=TINY, headers=auth).json()["id"]
        httpx.get(f"{base}/v1/experiments/{exp_id}", headers=auth).raise_for_status()
        get = wrk(f"{base}/v1/experiments/{exp_id}", key, args.clients, args.seconds)

        script = tmp / "post.lua"
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = [[{TINY}]]\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        post = wrk(f"{base}/v1/experiments", key, args.clients, args.post_seconds, script)
        accepted = post["total"] - post["errors"]

        t0 = time.perf_counter()
        for i in range(2):
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "worker.celery_app",
                        "worker",
                        "--pool",
                        "solo",
                        "-Q",
                        env["QUEUE_NAME"],
                        "-n",
                        f"load{i}@%h",
                        "--loglevel",
                        "WARNING",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with get_sessionmaker()() as s:
            stored = s.scalar(select(func.count()).select_from(Experiment))
            while True:
                s.expire_all()
                done = s.scalar(
                    select(func.count())
                    .select_from(Experiment)
                    .where(Experiment.status == "succeeded")
                )
                if done >= stored or time.perf_counter() - t0 > 900:
                    break
                time.sleep(1)
        drained = time.perf_counter() - t0
    finally:
        for p in [api, *workers]:
            p.terminate()
        for p in [api, *workers]:
            p.wait(30)
        from api.db import get_engine

        get_engine().dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    print(
        f"PostgreSQL + Redis, uvicorn --workers {args.api_workers}, wrk -t2 -c{args.clients}, "
        f"on {os.cpu_count()} cores (load generator included)"
    )
    print(
        f"GET  /v1/experiments/{{id}}: {get['rps']:8.0f} req/s  p50 {get['p50']:6.1f} ms  "
        f"p99 {get['p99']:6.1f} ms  errors {get['errors']}  ({get['total']} in {args.seconds} s)"
    )
    print(
        f"POST /v1/experiments     : {post['rps']:8.0f} req/s  p50 {post['p50']:6.1f} ms  "
        f"p99 {post['p99']:6.1f} ms  errors {post['errors']}  ({accepted} accepted)"
    )
    print(
        f"in the database: {stored} experiments (1 seed + {accepted} accepted); "
        f"succeeded: {done}; all run by 2 workers in {drained:.0f} s"
    )


if __name__ == "__main__":
    main()
