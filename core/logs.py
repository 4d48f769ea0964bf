"""Structured logs shared by the API and the worker (no web framework imported here, so the
worker can use it): JSON lines carrying the request id of the request that caused them.

The API sets `request_id` per request (api.observability); the worker sets it to the id stored
on the experiment row when it runs that experiment, so one id follows an experiment from its
POST into the worker's log lines."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@contextlib.contextmanager
def bound_request_id(rid: str | None) -> Iterator[None]:
    """Every log line written inside carries `rid` (none when it is None)."""
    token = request_id.set(rid)
    try:
        yield
    finally:
        request_id.reset(token)


class RequestIdThread(threading.Thread):
    """A thread whose log lines carry the request id of the thread that made it (a new thread
    starts with an empty context): subclasses put their loop in `work`."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.request_id = request_id.get()

    def run(self) -> None:
        with bound_request_id(self.request_id):
            self.work()

    def work(self) -> None:
        raise NotImplementedError


_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, and any `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class NoQueryString(logging.Filter):
    """uvicorn's access log writes the path with its query string; a query may carry a secret
    (a key pasted into a URL), so the line keeps the path only."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def quiet_query_strings() -> None:
    """Install `NoQueryString` on uvicorn's access logger (whether or not uvicorn runs);
    idempotent."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, NoQueryString) for f in access.filters):
        access.addFilter(NoQueryString())


def configure_logging() -> None:
    """The `gradlab` loggers write JSON lines (or text, LOG_FORMAT=text) to stderr at INFO;
    idempotent. uvicorn's access log, where one is on, loses its query strings."""
    quiet_query_strings()
    logger = logging.getLogger("gradlab")
    if any(getattr(h, "_gradlab", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._gradlab = True  # type: ignore[attr-defined]
    if os.environ.get("LOG_FORMAT", "json").lower() == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False  # one line per record, whatever the root logger has
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
