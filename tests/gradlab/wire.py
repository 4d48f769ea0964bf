"""A stand-in for the ingest API on an httpx.MockTransport: it keeps what `gradlab.watch` sends
(the wire batches, decoded back to arrays) and can be switched off to play an outage."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import httpx
import numpy as np


def decode(series: dict[str, Any]) -> tuple[list[int], np.ndarray]:
    steps = np.frombuffer(base64.b64decode(series["steps"]), dtype="<i8").tolist()
    values = np.frombuffer(base64.b64decode(series["values"]), dtype="<f8")
    return steps, values.reshape(len(steps), series["width"])


class FakeService:
    def __init__(self) -> None:
        self.up = True
        self.batches: dict[int, dict[str, Any]] = {}
        self.posts = 0  # batch uploads received, duplicates included
        self.finish: dict[str, Any] | None = None
        self.create: dict[str, Any] | None = None
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("service down", request=request)
        body = json.loads(request.content or b"{}")
        path = request.url.path
        with self.lock:
            if path == "/v1/experiments/external":
                self.create = body
                return httpx.Response(201, json={"id": "run-1", "status": "running"})
            if path.endswith("/batches"):
                self.posts += 1
                stored = body["seq"] not in self.batches
                self.batches.setdefault(body["seq"], body)
                return httpx.Response(200, json={"seq": body["seq"], "stored": stored})
            if path.endswith("/heartbeat"):
                return httpx.Response(200, json={"status": "running", "cancel_requested": False})
            if path.endswith("/finish"):
                self.finish = body
                return httpx.Response(200, json={"id": "run-1", "status": body["status"]})
        return httpx.Response(404, json={"title": "no route"})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler), base_url="http://fake")

    def series(self, name: str) -> tuple[list[int], np.ndarray]:
        """Every point of `name` over the stored batches, in step order."""
        steps: list[int] = []
        rows: list[np.ndarray] = []
        for seq in sorted(self.batches):
            for s in self.batches[seq]["series"]:
                if s["name"] == name:
                    st, v = decode(s)
                    steps += st
                    rows.append(v)
        if not rows:
            return [], np.zeros((0, 0))
        values = np.concatenate(rows)
        order = np.argsort(steps, kind="stable")
        return [steps[i] for i in order], values[order]

    def names(self) -> set[str]:
        return {s["name"] for b in self.batches.values() for s in b["series"]}
