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


class FieldRefusal(ValueError):
    """A check across fields (in a model validator) that names the field it refuses: `field`
    is the dotted path relative to the model that raised it, so the problem's `errors` point at
    what the client wrote (`model.activation`), not at the enclosing object (`model`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic errors as {field, message, type}: `field` is the dotted path in the body as
    the client wrote it (a tagged union's tag, which pydantic puts in the location, is left
    out; a `FieldRefusal` adds the field it names); an unknown field gets a "did you mean"."""
    from core.spec import suggestion, user_path

    out = []
    for e in errors:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        refusal = (e.get("ctx") or {}).get("error")
        if isinstance(refusal, FieldRefusal):
            loc += refusal.field.split(".")
        # A query parameter is named as written (`query.status`), not by the repeat that failed.
        path = user_path(loc[:2] if loc[:1] == ["query"] else loc)
        message = e.get("msg")
        if e.get("type") == "extra_forbidden" and (hint := suggestion(path)):
            message = f"{message}; did you mean {hint!r}?"
        out.append(field_error(".".join(str(p) for p in path) or None, message, e.get("type")))
    return out
