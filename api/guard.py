"""What every request must pass before a route sees it, in one ASGI middleware, and the one JSON
reader of every route that takes a body. Checked before anything is read whole or stored:

- headers: at most MAX_HEADER_BYTES in all (431), no NUL byte in any (400);
- the path and the query string: no NUL byte, raw or percent-encoded (400 naming the field;
  PostgreSQL cannot store one, and a NUL cut a CSV export short);
- the body: a Content-Length over MAX_BODY_BYTES is a 413 before a byte is read, and a body
  sent without one stops being read at the limit (413); a dataset upload and an external
  run's batch have larger limits of their own (body_limit);
- JSON bodies (`read_json`): no NaN or Infinity literals, no nesting deeper than
  MAX_JSON_DEPTH, no NUL in any string or key (422 naming the field)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response
from core.errors import Problem, field_error, invalid_field
from core.external import MAX_BATCH_BYTES
from core.settings import get_settings


class BodyTooLarge(Exception):
    pass


def _query_nul(query: bytes) -> str | None:
    """The name of the first query parameter whose name or value holds a NUL, else None."""
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        raw_name = unquote_to_bytes(name.replace(b"+", b" "))
        if b"\x00" in raw_name or b"\x00" in unquote_to_bytes(value.replace(b"+", b" ")):
            return raw_name.replace(b"\x00", b"").decode("latin-1") or "(name)"
    return None


def _refusal(scope: Scope) -> Any:
    """The problem response for a request refused on its head, or None."""
    s = get_settings()
    headers = scope.get("headers", [])
    if sum(len(k) + len(v) for k, v in headers) > s.max_header_bytes:
        return problem_response(
            431,
            "Headers too large",
            f"the headers are over {s.max_header_bytes} bytes in all",
            "headers-too-large",
        )
    for k, v in headers:
        if b"\x00" in v:
            name = k.decode("latin-1")
            return _nul(f"the {name} header holds a NUL byte", f"header.{name}")
    raw_path = scope.get("raw_path") or scope.get("path", "").encode()
    if b"\x00" in unquote_to_bytes(raw_path) or "\x00" in scope.get("path", ""):
        return _nul("the path holds a NUL byte", "path")
    name = _query_nul(scope.get("query_string", b""))
    if name is not None:
        return _nul(f"the query parameter {name!r} holds a NUL byte", f"query.{name}")
    for k, v in headers:
        if k == b"content-length":
            try:
                length = int(v)
            except ValueError:
                return problem_response(400, "Bad Content-Length", "not a number", "header")
            if length > (limit := body_limit(scope)):
                return _too_large(limit)
    return None


def _nul(detail: str, field: str) -> Any:
    return problem_response(
        400,
        "NUL byte refused",
        detail,
        "nul-byte",
        errors=[field_error(field, "holds a NUL byte", "nul")],
    )


UPLOAD_MARGIN = 1024 * 1024  # multipart framing around the file


def body_limit(scope: Scope) -> int:
    """The most body bytes a request may send: MAX_BODY_BYTES, except the routes that take
    more by design (a dataset upload, an external run's batch), which check their own exact
    limits as they read."""
    s = get_settings()
    path, method = scope.get("path", ""), scope.get("method")
    if method == "POST" and path == "/v1/datasets":
        return s.max_dataset_bytes + UPLOAD_MARGIN
    if method == "POST" and path.startswith("/v1/experiments/") and path.endswith("/batches"):
        return max(s.max_body_bytes, MAX_BATCH_BYTES)
    return s.max_body_bytes


def _too_large(limit: int) -> Any:
    return problem_response(413, "Body too large", f"the body is over {limit} bytes", "too-large")


class RequestGuard:
    """Pure ASGI: refuses a request on its head before the app runs, and counts the body as it
    is received, stopping at MAX_BODY_BYTES."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = body_limit(scope)
        seen = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(limit)(scope, receive, send)


def _check_tree(value: Any, most: int) -> None:
    """Depth, then NUL bytes, without recursion (a deep document cannot exhaust the stack)."""
    stack: list[tuple[Any, int, tuple]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list):
            if depth > most:
                raise invalid_field(
                    f"the body nests deeper than {most} levels",
                    ".".join(map(str, path)) or None,
                    f"nested over {most} levels",
                    "depth",
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(k, str) and "\x00" in k:
                    raise _nul_field(path + (k.replace("\x00", ""),))
                stack.append((v, depth + 1, path + (k,)))
        elif isinstance(node, str) and "\x00" in node:
            raise _nul_field(path)


def _nul_field(path: tuple) -> Problem:
    field = ".".join(map(str, path)) or None
    return invalid_field(f"{field or 'the body'} holds a NUL character", field, "NUL", "nul")


async def read_json(request: Request, empty: Any = None) -> Any:
    """The body as JSON, whatever its Content-Type (`curl -d '{}'` sends a form type): 400 when
    it is not JSON (NaN and Infinity are not), 422 naming the field past MAX_JSON_DEPTH or
    holding a NUL; `empty` for an empty body. Its size is bounded by the middleware."""
    raw = await request.body()
    if not raw.strip():
        return empty
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {exc}", "json") from exc
    _check_tree(data, get_settings().max_json_depth)
    return data


async def read_object(request: Request) -> dict[str, Any]:
    """`read_json`, and the body must be an object ({} when empty)."""
    data = await read_json(request, empty={})
    if not isinstance(data, dict):
        raise invalid_field("the body must be a JSON object", None, "expected an object", "type")
    return data
