"""The embedded default end to end, as `make run` starts it: migrations, one worker and the
API in one command on a SQLite file and the SQLAlchemy broker; driven over real HTTP."""

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from core.status import TERMINAL
from tests.conftest import ROOT
from tests.integration.workers import wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_stack_serves_the_whole_loop(tmp_path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path}/gradlab.sqlite",
        "BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.sqlite",
        "API_KEY_FILE": str(tmp_path / "api_key"),
    }
    log = open(tmp_path / "embedded.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.embedded"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "the API")
        # the embedded default makes a key on first start, and says where to go next: the UI,
        # the docs, the CLI and the key's file, never the key itself
        said = wait_for(
            lambda: b"API docs" in (out := (tmp_path / "embedded.log").read_bytes()) and out,
            10,
            "where to go next",
        ).decode()
        key = (tmp_path / "api_key").read_text().strip()
        assert key.startswith("glk_") and key not in said
        assert f"web UI    {base}/" in said and f"{base}/docs" in said
        assert ".venv/bin/gradlab" in said and str(tmp_path / "api_key") in said
        assert httpx.get(f"{base}/v1/experiments").status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        # as in the README: curl -X POST .../v1/experiments -d '...'
        spec = b'{"task": {"seq_len": 20}, "model": {"hidden_size": 16}, "train": {"steps": 60}}'
        resp = httpx.post(
            f"{base}/v1/experiments",
            content=spec,
            headers={"content-type": "application/x-www-form-urlencoded", **auth},
        )
        assert resp.status_code == 202, resp.text
        location = resp.headers["location"]
        done = wait_for(
            lambda: (
                (b := httpx.get(base + location, headers=auth).json())["status"] in TERMINAL and b
            ),
            120,
            "the run",
        )
        assert done["status"] == "succeeded" and done["summary"]["steps_run"] == 60
        metrics = httpx.get(f"{base}{location}/metrics", headers=auth).json()
        assert len(metrics["loss"]) == 60
        # kill -9 the worker: the launcher starts another, which runs the next experiment
        worker_pid = int(
            subprocess.run(
                ["pgrep", "-P", str(proc.pid), "-f", "celery"], capture_output=True, text=True
            ).stdout.split()[0]
        )
        os.kill(worker_pid, signal.SIGKILL)
        nxt = httpx.post(f"{base}/v1/experiments", content=spec, headers=auth)
        assert nxt.status_code == 202
        again = wait_for(
            lambda: (
                (b := httpx.get(base + nxt.headers["location"], headers=auth).json())["status"]
                in TERMINAL
                and b
            ),
            120,
            "a run on the restarted worker",
        )
        assert again["status"] == "succeeded"
        # kill -9 the API: the launcher starts another on the same port, the worker stays
        api_pid = int(
            subprocess.run(
                ["pgrep", "-P", str(proc.pid), "-f", "uvicorn"], capture_output=True, text=True
            ).stdout.split()[0]
        )
        os.kill(api_pid, signal.SIGKILL)
        wait_for(lambda: not ready(), 10, "the API to go")
        wait_for(ready, 60, "the restarted API")
        assert httpx.get(base + location, headers=auth).json()["status"] == "succeeded"
        assert proc.poll() is None
        bad = httpx.post(
            f"{base}/v1/experiments", content=b'{"train": {"steps": -1}}', headers=auth
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "train.steps"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    out = (tmp_path / "embedded.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    assert key not in out and key.removeprefix("glk_")[:12] not in out
