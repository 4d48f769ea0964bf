"""A small Python client for the gradlab API, on httpx.

    from gradlab import Client
    with Client("http://127.0.0.1:8000", key) as gl:
        exp = gl.submit({"task": {"seq_len": 50}})
        exp = gl.wait(exp["id"])
        print(exp["diagnosis"]["verdict"])
        data = gl.upload_dataset("data.npz", name="sensors")  # your own sequences
        gl.submit({"task": {"name": "dataset", "id": data["id"]}})

Errors come back as `ApiError` carrying the RFC 9457 problem; 429 and 503 are retried after
their Retry-After (a few times, capped), so polling rides out a rate limit or a database
restart."""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_FILE = Path("data/api_key")  # the embedded default's own key (`make run` writes it)
TERMINAL = frozenset({"succeeded", "diverged", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 503})
NPZ = "application/x-npz"  # the trace routes' binary answer (api/binary.py)


class ApiError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        title = problem.get("title") or "error"
        detail = problem.get("detail") or ""
        super().__init__(f"{status} {title}: {detail}".rstrip(": "))


class UnsafeArchive(ValueError):
    """An archive member that would land outside the target folder, or is not a plain file."""


def extract_archive(archive: bytes, dest: Path) -> list[Path]:
    """Extracts a .tar.gz into `dest` (made if missing) and returns the files written. Only
    regular files and folders, at relative paths without `..`, that stay inside `dest` once
    resolved (a symlink already in `dest` cannot lead out): anything else raises UnsafeArchive
    before a byte is written. Checked here rather than by tarfile's extraction filters, which
    Python 3.11 has only from 3.11.4."""
    root = dest.resolve()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
        targets = []
        for m in members:
            path = PurePosixPath(m.name)
            if not (m.isfile() or m.isdir()) or path.is_absolute() or ".." in path.parts:
                raise UnsafeArchive(f"refusing archive member {m.name!r}")
            target = (root / path).resolve()
            if not target.is_relative_to(root):
                raise UnsafeArchive(f"archive member {m.name!r} would land outside {dest}")
            targets.append(target)
        written = []
        for m, target in zip(members, targets, strict=True):
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(m)
            assert source is not None  # a regular file always has a body
            target.write_bytes(source.read())
            written.append(target)
    return written


def default_url() -> str:
    """GRADLAB_URL, else the local service on PORT (as `make run` reads it), else :8000."""
    if os.environ.get("GRADLAB_URL"):
        return os.environ["GRADLAB_URL"]
    port = os.environ.get("PORT")
    return f"http://127.0.0.1:{port}" if port else DEFAULT_URL


def key_file() -> Path | None:
    """The embedded service's key file: GRADLAB_KEY_FILE, else data/api_key in the working
    directory or the nearest folder above it that has one (so the CLI works from anywhere in
    the checkout `make run` was started in)."""
    if os.environ.get("GRADLAB_KEY_FILE"):
        return Path(os.environ["GRADLAB_KEY_FILE"])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / KEY_FILE).is_file():
            return folder / KEY_FILE
    return None


def default_key() -> str | None:
    """GRADLAB_KEY, else the key in key_file() when there is one."""
    if os.environ.get("GRADLAB_KEY"):
        return os.environ["GRADLAB_KEY"]
    path = key_file()
    if path is not None and path.is_file():
        return path.read_text().strip() or None
    return None


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class Client:
    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout: float = 60.0,
        retries: int = 5,
    ) -> None:
        """`http`: an httpx.Client to send through (a test's in-process client, say); its base
        URL, and its Authorization header when it has one and no `key` is given, are used as
        they are."""
        self._own = http is None
        self.http = http or httpx.Client(base_url=url or default_url(), timeout=timeout)
        if key is None and "authorization" in self.http.headers:
            self.key = self.http.headers["authorization"].removeprefix("Bearer ")
        else:
            self.key = key if key is not None else default_key()
            if self.key:
                self.http.headers["Authorization"] = f"Bearer {self.key}"
        self.retries = retries

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    # -- plumbing --

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            for _, fileobj in (kwargs.get("files") or {}).values():
                fileobj.seek(0)  # a retried upload sends the file again from its start
            resp = self.http.request(method, path, **kwargs)
            if resp.status_code not in RETRY_STATUSES or attempt == self.retries:
                break
            wait = resp.headers.get("retry-after", "1")
            time.sleep(min(float(wait) if wait.replace(".", "", 1).isdigit() else 1.0, 30.0))
        if resp.status_code >= 400:
            try:
                problem = resp.json()
            except ValueError:
                problem = {"title": resp.reason_phrase, "detail": resp.text[:500]}
            raise ApiError(resp.status_code, problem if isinstance(problem, dict) else {})
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- experiments --

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/experiments", json=spec, headers=headers)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/experiments/{experiment_id}")

    def experiments(
        self,
        *,
        status: str | list[str] | None = None,
        tag: str | None = None,
        name: str | None = None,
        sweep_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The owner's experiments, newest first, filtered as the list route filters; every
        page is fetched (at most `limit` experiments, when given)."""
        params: list[tuple[str, str]] = [("status", s) for s in _as_list(status)]
        params += [(k, v) for k, v in (("tag", tag), ("name", name), ("sweep_id", sweep_id)) if v]
        out: list[dict[str, Any]] = []
        cursor = None
        while limit is None or len(out) < limit:
            page_size = 200 if limit is None else min(200, limit - len(out))
            page = [*params, ("limit", str(page_size))] + ([("cursor", cursor)] if cursor else [])
            body = self.request("GET", "/v1/experiments", params=page).json()
            out += body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                break
        return out

    def cancel(self, experiment_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/experiments/{experiment_id}/cancel")

    def wait(
        self,
        experiment_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Polls until the experiment reaches a terminal status; returns it. TimeoutError past
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            exp = self.experiment(experiment_id)
            if on_update:
                on_update(exp)
            if exp["status"] in TERMINAL:
                return exp
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{experiment_id} still {exp['status']} after {timeout} s")
            time.sleep(poll)

    def traces(
        self, experiment_id: str, max_points: int | None = None, arrays: bool | None = False
    ) -> dict[str, Any]:
        """Everything recorded: the experiment, metrics, gradients (temporal profiles
        included), the other instruments and the events, in one document. `arrays=True`
        (or None: when numpy is installed) fetches the three trace routes as NumPy arrays
        (see `arrays`) instead of JSON."""
        if arrays is None:
            arrays = importlib.util.find_spec("numpy") is not None
        params = {"max_points": max_points} if max_points else {}
        base = f"/v1/experiments/{experiment_id}"
        routes = ("metrics", "gradients", "instruments")
        got = {
            r: self.arrays(experiment_id, r, max_points=max_points)
            if arrays
            else self._json("GET", f"{base}/{r}", params=params)
            for r in routes
        }
        return {
            "experiment": self.experiment(experiment_id),
            **got,
            "events": self._json("GET", f"{base}/events")["items"],
        }

    def arrays(
        self, experiment_id: str, route: str = "gradients", **thinning: int | None
    ) -> dict[str, Any]:
        """A trace route (`metrics`, `gradients`, `instruments`) as NumPy arrays, fetched as
        .npz (10x smaller and faster than JSON at volume): `{series}/steps` (int64) and
        `{series}/values` (float64; (n, T) for `temporal/{layer}`), NaN/Inf as themselves.
        `thinning`: from_step, to_step, every, max_points. Needs numpy (ImportError else)."""
        import numpy as np  # only here: importing gradlab loads httpx alone

        params = {k: v for k, v in thinning.items() if v is not None}
        resp = self.request(
            "GET",
            f"/v1/experiments/{experiment_id}/{route}",
            params=params,
            headers={"Accept": NPZ},
        )
        with np.load(io.BytesIO(resp.content)) as archive:
            return {name: archive[name] for name in archive.files}

    def export_csv(self, experiment_id: str, prefix: str | None = None) -> str:
        """Every scalar series as `step,name,value` rows; `prefix` picks series by name."""
        params = {"prefix": prefix} if prefix else {}
        return self.request(
            "GET", f"/v1/experiments/{experiment_id}/export.csv", params=params
        ).text

    def export_vectors_csv(self, experiment_id: str, prefix: str | None = None) -> str:
        """Every vector series (temporal profiles, credit, exponents, ...) as
        `step,name,index,value` rows, one a value; `prefix` picks series by name."""
        params = {"prefix": prefix} if prefix else {}
        path = f"/v1/experiments/{experiment_id}/export/vectors.csv"
        return self.request("GET", path, params=params).text

    def export_tensorboard(
        self, experiment_id: str, logdir: str | Path, prefix: str | None = None
    ) -> list[Path]:
        """Downloads the experiment's TensorBoard run and extracts it into `logdir` (one folder
        per run, so several experiments can share a logdir); returns the files written. Look
        with `tensorboard --logdir LOGDIR`."""
        params = {"prefix": prefix} if prefix else {}
        path = f"/v1/experiments/{experiment_id}/export/tensorboard"
        return extract_archive(self.request("GET", path, params=params).content, Path(logdir))

    def plot(self, experiment_id: str, name: str, fmt: str = "png") -> bytes:
        return self.request("GET", f"/v1/experiments/{experiment_id}/plots/{name}.{fmt}").content

    def report(self, experiment_id: str) -> str:
        return self.request("GET", f"/v1/experiments/{experiment_id}/report").text

    # -- sweeps --

    def submit_sweep(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/sweeps", json=request)

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/sweeps/{sweep_id}")

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        poll: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sweep = self.sweep(sweep_id)
            if on_update:
                on_update(sweep)
            if sweep["status"] == "finished":
                return sweep
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still {sweep['status']} after {timeout} s")
            time.sleep(poll)

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/sweeps/{sweep_id}/cancel").json()

    def sweep_report(self, sweep_id: str) -> str:
        return self.request("GET", f"/v1/sweeps/{sweep_id}/report").text

    # -- datasets --

    def upload_dataset(
        self, path: str | Path, name: str | None = None, kind: str | None = None
    ) -> dict[str, Any]:
        """Uploads an .npz (`x` (N, T, F), `y`, optionally `lengths`) as multipart field
        `file`, streamed from disk; returns the dataset (id, shapes, kind, classes, sha256)."""
        path = Path(path)
        form = {k: v for k, v in {"name": name or path.stem, "kind": kind}.items() if v}
        with path.open("rb") as f:
            return self._json(
                "POST", "/v1/datasets", files={"file": (path.name, f)}, data=form, timeout=None
            )

    def datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/datasets")["items"]

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Refused (ApiError 409) while a queued or running experiment uses it."""
        self.request("DELETE", f"/v1/datasets/{dataset_id}")
