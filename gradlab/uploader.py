"""The upload side of `gradlab.watch`: a background thread that creates the external run,
sends its batches and heartbeats, and finishes it, so the training loop never waits on the
network. The loop hands over a batch with `put` (never blocks: a full queue drops the batch
and counts it). When the service does not answer, batches go to a spool file on local disk
(JSON lines in the wire format) and are sent, in order, once it answers again; past
`spool_max_bytes` new batches are dropped and counted. Every batch carries its sequence
number, and the service stores a number once, so a batch resent after an unclear failure is
harmless."""

from __future__ import annotations

import base64
import json
import logging
import math
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("gradlab.watch")

# Answers after which a batch is not retried: the run is gone or finished, or the batch is
# refused as it is (a retry would be refused the same way).
FINAL_STATUSES = frozenset({400, 401, 403, 404, 409, 413, 422})


def pack_series(name: str, steps: list[int], values: list[Any]) -> dict[str, Any]:
    """One series in the stored trace format: int64 steps and float64 values, `width` a step,
    little-endian, base64 for JSON. `values`: floats, or tensors (anything with `.tolist`)
    of one fixed size, converted here on the upload thread, off the training loop."""
    rows = [np.asarray(_plain(v), dtype="<f8").reshape(-1) for v in values]
    block = np.stack(rows) if rows else np.zeros((0, 1))
    return {
        "name": name,
        "width": int(block.shape[1]),
        "steps": base64.b64encode(np.asarray(steps, dtype="<i8").tobytes()).decode(),
        "values": base64.b64encode(np.ascontiguousarray(block, dtype="<f8").tobytes()).decode(),
    }


def finite_json(value: Any) -> Any:
    """JSON has no NaN or Infinity (httpx refuses them): they go as "nan", "inf", "-inf", as
    the service stores them."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if hasattr(value, "detach"):  # a torch tensor, on any device
        return value.detach().double().cpu().numpy()
    return value


class Uploader(threading.Thread):
    def __init__(
        self,
        http: httpx.Client,
        create_body: dict[str, Any],
        spool_path: Path,
        *,
        max_queue: int = 64,
        spool_max_bytes: int = 256 * 1024 * 1024,
        heartbeat_s: float = 10.0,
        retry_s: float = 1.0,
        retry_max_s: float = 15.0,
        request_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(name="gradlab-upload", daemon=True)
        self.http, self.create_body, self.spool_path = http, create_body, spool_path
        self.spool_max_bytes, self.heartbeat_s = spool_max_bytes, heartbeat_s
        self.retry_s, self.retry_max_s, self.timeout = retry_s, retry_max_s, request_timeout_s
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
        self.pending: deque[dict[str, Any]] = deque()  # wire batches, in seq order
        self.run_id: str | None = None
        self.experiment: dict[str, Any] | None = None  # as the service last answered
        self.cancel_requested = False
        self.finish_body: dict[str, Any] | None = None
        self.finished = threading.Event()
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.seq = 0
        self.sent = self.dropped = self.refused = self.spooled = 0
        self.down_since: float | None = None
        self._next_try = 0.0
        self._backoff = retry_s
        self._last_beat = time.monotonic()
        self._spool_lines = 0  # batches in the spool file not yet sent
        self._warned: set[str] = set()

    # --- the training thread's side -------------------------------------------------------

    def put(self, series: dict[str, tuple[list[int], list[Any]]], events: list[dict], step: int):
        """Hand over one batch; never blocks. Dropped (and counted) when the queue is full."""
        try:
            self.inbox.put_nowait({"series": series, "events": events, "step": step})
        except queue.Full:
            self.dropped += 1
            self._warn_once("queue", "gradlab: upload queue full; dropping batches (counted)")

    def request_finish(self, body: dict[str, Any]) -> None:
        self.finish_body = body
        self.wake.set()

    # --- the upload thread ----------------------------------------------------------------

    def run(self) -> None:
        """The loop, kept alive whatever one round meets: an error is logged once, the batch
        it was packing is counted as dropped, and uploading goes on."""
        while True:
            try:
                if self._round():
                    return
            except Exception:
                self.dropped += 1
                if "round" not in self._warned:
                    self._warned.add("round")
                    log.exception("gradlab: an upload round failed; going on")

    def _round(self) -> bool:
        """One round: True when the thread is done."""
        # take what the loop handed over, packed into wire batches
        try:
            item = self.inbox.get(timeout=0.2)
            self._accept(item)
            while True:
                self._accept(self.inbox.get_nowait())
        except queue.Empty:
            pass
        now = time.monotonic()
        if now >= self._next_try:
            self._send_what_waits(now)
        caught_up = self.inbox.empty() and not self.pending and not self._spool_lines
        if self.finish_body is not None and caught_up and self.run_id and self._post_finish():
            self.finished.set()
            return True
        if self.stop.is_set() and self.inbox.empty():
            self._spill()  # whatever is unsent stays on disk
            return True
        return False

    def _accept(self, item: dict[str, Any]) -> None:
        series = [pack_series(n, s, v) for n, (s, v) in item["series"].items() if s]
        wire = {"seq": self.seq, "step": item["step"], "series": series, "events": item["events"]}
        self.seq += 1
        if self._spool_lines or self.down_since is not None:
            self._to_spool([wire])  # behind what is already spooled: order is kept
        else:
            self.pending.append(wire)

    def _send_what_waits(self, now: float) -> None:
        if self.run_id is None and not self._create():
            return self._failed(now)
        if self._spool_lines and not self._replay_spool():
            return self._failed(now)
        while self.pending:
            ok = self._post_batch(self.pending[0])
            if ok is None:
                self._spill()
                return self._failed(now)
            self.pending.popleft()
        if now - self._last_beat >= self.heartbeat_s:
            self._beat()
        self._recovered()

    def _failed(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
            log.warning("gradlab: the service does not answer; spooling to %s", self.spool_path)
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    def _recovered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "gradlab: the service answers again after %.1f s; caught up",
                time.monotonic() - self.down_since,
            )
        self.down_since, self._backoff = None, self.retry_s

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response | None:
        content = json.dumps(finite_json(body)).encode()
        headers = {"Content-Type": "application/json"}
        try:
            return self.http.post(path, content=content, headers=headers, timeout=self.timeout)
        except httpx.HTTPError:
            return None

    def _create(self) -> bool:
        resp = self._post("/v1/experiments/external", self.create_body)
        if resp is None or resp.status_code >= 500 or resp.status_code == 429:
            return False
        if resp.status_code != 201:
            self._warn_once("create", f"gradlab: the run was refused: {resp.text[:500]}")
            self.stop.set()  # nothing will be accepted: stop trying, training goes on
            return False
        self.experiment = resp.json()
        self.run_id = self.experiment["id"]
        self._last_beat = time.monotonic()
        return True

    def _post_batch(self, wire: dict[str, Any]) -> bool | None:
        """True: stored (or already stored); False: refused for good (counted); None: the
        service did not answer (try again later)."""
        resp = self._post(f"/v1/experiments/{self.run_id}/batches", wire)
        if resp is None or resp.status_code >= 500 or resp.status_code == 429:
            return None
        self._last_beat = time.monotonic()
        if resp.status_code in FINAL_STATUSES:
            self.refused += 1
            self._warn_once("refused", f"gradlab: a batch was refused: {resp.text[:500]}")
            return False
        self.sent += 1
        return True

    def _beat(self) -> None:
        resp = self._post(f"/v1/experiments/{self.run_id}/heartbeat", {})
        if resp is not None and resp.status_code == 200:
            self._last_beat = time.monotonic()
            self.cancel_requested = bool(resp.json().get("cancel_requested"))

    def _post_finish(self) -> bool:
        resp = self._post(f"/v1/experiments/{self.run_id}/finish", self.finish_body or {})
        if resp is None or resp.status_code >= 500 or resp.status_code == 429:
            self._failed(time.monotonic())
            return False
        if resp.status_code == 200:
            self.experiment = resp.json()
        else:
            self._warn_once("finish", f"gradlab: finishing the run was refused: {resp.text[:500]}")
        return True

    # --- the spool file -------------------------------------------------------------------

    def _spill(self) -> None:
        if self.pending:
            self._to_spool(list(self.pending))
            self.pending.clear()

    def _to_spool(self, batches: list[dict[str, Any]]) -> None:
        size = self.spool_path.stat().st_size if self.spool_path.exists() else 0
        lines = [json.dumps(b) + "\n" for b in batches]
        room = self.spool_max_bytes - size
        kept = []
        for line in lines:
            if len(line) > room:
                self.dropped += 1
                self._warn_once("spool", "gradlab: the spool file is full; dropping (counted)")
                continue
            room -= len(line)
            kept.append(line)
        if kept:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spool_path.open("a") as f:
                f.writelines(kept)
            self._spool_lines += len(kept)
            self.spooled += len(kept)

    def _replay_spool(self) -> bool:
        """Send the spooled batches in order; keep the unsent ones. True when all are sent."""
        lines = self.spool_path.read_text().splitlines() if self.spool_path.exists() else []
        for i, line in enumerate(lines):
            if self._post_batch(json.loads(line)) is None:
                self.spool_path.write_text("".join(x + "\n" for x in lines[i:]))
                self._spool_lines = len(lines) - i
                return False
        self.spool_path.unlink(missing_ok=True)
        self._spool_lines = 0
        return True

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message)
