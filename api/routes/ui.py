"""The web UI: `/` (runs), `/ui/runs/{id}`, `/ui/compare?ids=A,B`, `/ui/sweeps`,
`/ui/sweeps/{id}`, and signing in and out. The pages are shells: their scripts read the /v1 API
with the session cookie (api/sessions.py). Without a valid session a page redirects to the
sign-in page, which brings the browser back where it was going."""

from __future__ import annotations

from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.auth import key_cache, limiter, session_digest
from api.render import ui
from api.sessions import (
    SESSION_COOKIE,
    clear_session_cookies,
    new_session,
    read_session,
    same_origin,
    set_session_cookies,
)
from core.errors import Problem
from core.keys import hash_key
from core.settings import get_settings

router = APIRouter(include_in_schema=False)
MAX_FORM_BYTES = 4096


def _signed_in(request: Request) -> bool:
    session = read_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return False
    return key_cache.owner(session.key_digest, get_settings().auth_cache_s) is not None


def safe_next(path: str | None) -> str:
    """Only a path on this server: never `//host` or a URL, so sign-in cannot redirect away."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _page(request: Request, page: str) -> Response:
    if not _signed_in(request):
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/signin?next={quote(here, safe='')}", status_code=303)
    return HTMLResponse(ui.shell(page), headers=ui.HEADERS)


@router.get("/")
def runs_page(request: Request) -> Response:
    return _page(request, "runs")


@router.get("/ui")
@router.get("/ui/")
def ui_root() -> Response:
    return RedirectResponse("/", status_code=307)


@router.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it on every page without an icon (the report pages): no icon, no 404."""
    return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})


@router.get("/ui/runs/{experiment_id}")
def run_page(request: Request, experiment_id: str) -> Response:
    return _page(request, "run")


@router.get("/ui/compare")
def compare_page(request: Request) -> Response:
    return _page(request, "compare")


@router.get("/ui/sweeps")
def sweeps_page(request: Request) -> Response:
    return _page(request, "sweeps")


@router.get("/ui/sweeps/{sweep_id}")
def sweep_page(request: Request, sweep_id: str) -> Response:
    return _page(request, "sweep")


@router.get("/ui/signin")
def signin_page(request: Request, next: str | None = None) -> Response:
    return HTMLResponse(ui.signin(safe_next(next)), headers=ui.HEADERS)


@router.post("/ui/signin")
async def signin(request: Request) -> Response:
    """A form post (`key`, `next`): a valid key sets the session cookies and redirects to
    `next`; another key shows the form again with why."""
    if not same_origin(request):
        raise Problem(403, "Forbidden", "sign-in is taken from this server's own page", "csrf")
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise Problem(
            413, "Body too large", f"the form is over {MAX_FORM_BYTES} bytes", "too-large"
        )
    form = parse_qs(raw.decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    next_path = safe_next((form.get("next") or ["/"])[0])
    s = get_settings()
    client = request.client.host if request.client else "?"
    wait = limiter.take(f"signin:{client}", s.rate_limit_per_s, s.rate_limit_burst)
    if wait > 0:
        return _signin_again(next_path, "too many attempts: wait a second and try again", 429)
    if not key:
        return _signin_again(next_path, "paste an API key", 400)
    digest = hash_key(key)
    if key_cache.owner(digest, s.auth_cache_s) is None:
        return _signin_again(next_path, "unknown or revoked API key", 401)
    value, session = new_session(digest)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookies(response, request, value, session)
    return response


def _signin_again(next_path: str, error: str, status: int) -> Response:
    return HTMLResponse(ui.signin(next_path, error), status_code=status, headers=ui.HEADERS)


@router.post("/ui/signout", status_code=204)
def signout(request: Request) -> Response:
    """Ends the browser session (a write: the session's CSRF token is required)."""
    if SESSION_COOKIE in request.cookies:
        session_digest(request)  # 401 or 403 unless this is the session's own page
    response = Response(status_code=204)
    clear_session_cookies(response, request)
    return response
