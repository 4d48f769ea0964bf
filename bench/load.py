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
sys.path.insert(0, str(ROOT / "bench"))
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--post-seconds", type=int, default=5)
    ap.add_argument("--api-workers", type=int, default=2)
    args = ap.parse_args()

    from service import fresh_database, make_key, start_workers, use_environment
    from sqlalchemy import func, select

    pg = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
    tmp = Path(tempfile.mkdtemp(prefix="gradlab-load-"))
    with fresh_database(pg, tmp) as db_url:
        env = {
            "DATABASE_URL": db_url,
            "BROKER_URL": redis_url,
            "QUEUE_NAME": f"load-{uuid.uuid4().hex[:6]}",
            "RATE_LIMIT_PER_S": "1e9",
            "RATE_LIMIT_BURST": "1e9",
            "MAX_ACTIVE_PER_OWNER": "1000000",
            "TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        use_environment(env)
        from core.db import get_sessionmaker
        from core.tables import Experiment

        key = make_key("load")
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
            env={**os.environ, **env},
            # the JSON request log goes to a file, as it would in production
            stdout=(tmp / "api.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        workers: list[subprocess.Popen] = []
        try:
            auth = {"Authorization": f"Bearer {key}"}
            for _ in range(100):
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            first = httpx.post(f"{base}/v1/experiments", content=TINY, headers=auth)
            exp_id = first.json()["id"]
            get = wrk(f"{base}/v1/experiments/{exp_id}", key, args.clients, args.seconds)

            script = tmp / "post.lua"
            script.write_text(
                f'wrk.method = "POST"\nwrk.body = [[{TINY}]]\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
            post = wrk(f"{base}/v1/experiments", key, args.clients, args.post_seconds, script)
            # wrk counts what it saw answered; a request cut off at the end may still be stored
            accepted = post["total"] - post["errors"]

            t0 = time.perf_counter()
            workers = start_workers(2, env, tmp)
            count = select(func.count()).select_from(Experiment)
            with get_sessionmaker()() as s:
                while True:
                    stored = s.scalar(count)
                    done = s.scalar(count.where(Experiment.status == "succeeded"))
                    s.rollback()
                    if done >= stored or time.perf_counter() - t0 > 900:
                        break
                    time.sleep(1)
            drained = time.perf_counter() - t0
        finally:
            for p in [api, *workers]:
                p.terminate()
            for p in [api, *workers]:
                p.wait(30)

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
        f"p99 {post['p99']:6.1f} ms  errors {post['errors']}  ({accepted} answered 202)"
    )
    print(
        f"in the database: {stored} experiments (1 seed + the POSTs); succeeded: {done}; "
        f"all run by 2 workers in {drained:.0f} s"
    )


if __name__ == "__main__":
    main()
