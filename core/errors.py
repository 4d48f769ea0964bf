"""The errors a request can meet, as data: the API renders a `Problem` as an RFC 9457 problem
document (api/problems.py); core raises it without knowing of HTTP frameworks."""

from typing import Any


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        kind: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.kind = status, title, detail, kind
        self.headers, self.extra = headers, extra


def field_error(field: str | None, message: str, kind: str) -> dict[str, Any]:
    """One entry of a problem's `errors`: the dotted path of the field, what is wrong, a type."""
    return {"field": field, "message": message, "type": kind}


def invalid_field(
    detail: str,
    field: str | None,
    message: str,
    kind: str,
    title: str = "Invalid request",
    **extra: Any,
) -> Problem:
    """The 422 for one field a check outside pydantic refused: the `validation` problem with
    `errors` naming that field, as pydantic's own refusals are reported."""
    return Problem(
        422, title, detail, "validation", errors=[field_error(field, message, kind)], **extra
    )


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic errors as {field, message, type}: `field` is the dotted path in the body."""
    return [
        field_error(
            ".".join(str(p) for p in e.get("loc", ()) if p != "body") or None,
            e.get("msg"),
            e.get("type"),
        )
        for e in errors
    ]
