"""Query parameters that would do nothing are refused, not ignored: an unknown name (with a
"did you mean" from the route's own parameters), or a single-valued parameter given twice (the
framework would keep the last and drop the rest). A key in the URL (`?key=`) is refused with a
401 on every route, before anything else: it would land in browser history, proxy logs and
Referer headers. Only requests with a query string pay for the check: a poll of
`GET /v1/experiments/{id}` has none."""

import difflib
from collections.abc import Iterable
from typing import Any, get_args, get_origin
from urllib.parse import parse_qsl

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import UNAUTHORIZED
from api.problems import problem_response
from core.errors import field_error

KEY_PARAM = "key"


def _query_params(dependant: Dependant) -> Iterable[Any]:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_params(sub)


def _api_routes(routes: Iterable[Any]) -> Iterable[APIRoute]:
    """The app's routes in matching order, included routers opened up."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (inner := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(inner.routes)


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return any(_is_list(a) for a in get_args(annotation))


class QueryCheckMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Built on the first request with a query (the routes are all there by then): each
        # route with its parameter names and whether each takes several values.
        self._routes: list[tuple[APIRoute, dict[str, bool]]] | None = None

    def _params_of(self, scope: Scope) -> dict[str, bool] | None:
        if self._routes is None:
            self._routes = [
                (
                    r,
                    {
                        p.alias: _is_list(p.field_info.annotation)
                        for p in _query_params(r.dependant)
                    },
                )
                for r in _api_routes(scope["app"].router.routes)
            ]
        for route, known in self._routes:
            if route.matches(scope)[0] == Match.FULL:
                return known
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The API's routes; the UI's pages read their query in the browser.
        if (
            scope["type"] == "http"
            and scope.get("query_string")
            and scope["path"].startswith("/v1")
        ):
            known = self._params_of(scope)
            if known is not None and (refusal := refused(scope["query_string"], known)):
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def refused(query_string: bytes, known: dict[str, bool]) -> Any:
    """The 422 for a query that would do nothing, or None."""
    names = [k for k, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)]
    if KEY_PARAM in names:
        return problem_response(
            401,
            "Unauthorized",
            "a key in the URL (?key=) is not accepted: send Authorization: Bearer <key>, or sign "
            "in at /ui/signin in a browser; save a report with `gradlab report ID --out FILE`",
            "key-in-url",
            headers=UNAUTHORIZED,
        )
    errors = []
    for name in dict.fromkeys(names):
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(sorted(known)) or "none"
            message = f"unknown query parameter (this route takes: {allowed}){hint}"
            errors.append(field_error(f"query.{name}", message, "unknown_parameter"))
        elif not known[name] and names.count(name) > 1:
            message = "given more than once; it takes one value"
            errors.append(field_error(f"query.{name}", message, "repeated_parameter"))
    if not errors:
        return None
    named = ", ".join(e["field"] for e in errors)
    return problem_response(
        422,
        "Invalid request",
        f"query parameters that do nothing: {named}",
        "validation",
        errors=errors,
    )
