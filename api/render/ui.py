"""The web UI's HTML: one shell page for every view (the view's script builds it from the /v1
API) and the sign-in page. Scripts and styles are static files served by the API itself
(api/static/): no CDN, no build step, so the UI works on an air-gapped cluster."""

from __future__ import annotations

import html
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
UPLOT = "/static/vendor/uplot-1.6.32"
PAGES = ("runs", "run", "compare", "sweeps", "sweep")

# Nothing but this server: no inline script, no inline style sheet, no frames, no other origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _head(title: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        '<link rel=icon href="data:,">'
        f'<link rel=stylesheet href="{UPLOT}/uPlot.min.css">'
        '<link rel=stylesheet href="/static/ui/ui.css">'
    )


def shell(page: str) -> str:
    """The page for view `page`; /static/ui/app.js fills <main>."""
    assert page in PAGES
    nav = "".join(
        f'<a href="{href}"{" class=here" if page in here else ""}>{label}</a>'
        for href, label, here in (
            ("/", "Runs", ("runs", "run")),
            ("/ui/sweeps", "Sweeps", ("sweeps", "sweep")),
            ("/ui/compare", "Compare", ("compare",)),
        )
    )
    return (
        _head("gradlab")
        + f'<script src="{UPLOT}/uPlot.iife.min.js"></script>'
        + '<script type=module src="/static/ui/app.js"></script>'
        + f"</head><body data-page={page}><header><a class=brand href='/'>gradlab</a>"
        + f"<nav>{nav}</nav><span class=grow></span>"
        + "<a href='/docs'>API docs</a><button id=signout type=button>Sign out</button>"
        + "</header><main id=main><p class=muted>loading…</p></main></body></html>"
    )


def signin(next_path: str, error: str | None = None) -> str:
    """The sign-in form: a key in, a session cookie out (POST /ui/signin)."""
    message = f"<p class=error id=signin-error>{esc(error)}</p>" if error else ""
    return (
        _head("gradlab: sign in")
        + "</head><body class=signin><main><h1>gradlab</h1>"
        + "<p>Sign in with an API key. Next to <code>make run</code> it is in "
        + "<code>data/api_key</code>; others are made with <code>python -m api.admin create"
        + "</code>. The key is not kept in the browser: it is exchanged for a session cookie "
        + "that expires.</p>"
        + message
        + "<form method=post action='/ui/signin'>"
        + f"<input type=hidden name=next value='{esc(next_path)}'>"
        + "<label>API key <input id=key name=key type=password autocomplete=off required "
        + "autofocus size=48 placeholder='glk_…'></label> "
        + "<button type=submit id=signin>Sign in</button></form></main></body></html>"
    )
