"""The web UI's server side: the pages and their headers, signing in and out, the session cookie
(signed, expiring, HttpOnly, SameSite=Strict) and its CSRF check, the docs served offline, and
no key in any log line (uvicorn run as a process, its access log on)."""

import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.sessions import CSRF_COOKIE, SESSION_COOKIE, new_session, read_session
from core.keys import hash_key, revoke_key
from tests.checks import assert_problem
from tests.factories import SMALL_SUBMIT
from tests.serving import ROOT, uvicorn

PAGES = ["/", "/ui/runs/abc", "/ui/compare?ids=a,b", "/ui/sweeps", "/ui/sweeps/abc"]


@pytest.fixture
def browser(settings):
    """A client like a browser: no Authorization header, cookies kept, same-origin writes."""
    from api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        c.headers["Origin"] = "http://testserver"
        yield c


def sign_in(browser: TestClient, key: str, next_path: str = "/") -> httpx.Response:
    return browser.post(
        "/ui/signin",
        content=f"key={key}&next={next_path}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )


def test_pages_redirect_to_sign_in_and_back(browser, api_key) -> None:
    for page in PAGES:
        resp = browser.get(page, follow_redirects=False)
        assert resp.status_code == 303, page
        assert resp.headers["location"].startswith("/ui/signin?next=%2F")
    form = browser.get("/ui/signin?next=/ui/sweeps")
    assert form.status_code == 200 and "name=key" in form.text and "/ui/sweeps" in form.text
    assert "default-src 'self'" in form.headers["content-security-policy"]

    resp = sign_in(browser, api_key("tester"), "/ui/sweeps")
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/sweeps"
    for page in PAGES:
        got = browser.get(page)
        assert got.status_code == 200 and "/static/ui/app.js" in got.text, page
        csp = got.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "cdn" not in got.text
        assert (
            got.headers["x-frame-options"] == "DENY" and got.headers["cache-control"] == "no-store"
        )
    assert browser.get("/ui", follow_redirects=False).headers["location"] == "/"


def test_the_session_cookie_is_signed_http_only_strict_and_holds_no_key(browser, api_key) -> None:
    key = api_key("tester")
    resp = sign_in(browser, key)
    cookies = resp.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith(f"{SESSION_COOKIE}="))
    csrf = next(c for c in cookies if c.startswith(f"{CSRF_COOKIE}="))
    for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert flag.lower() in session.lower(), session
    assert "httponly" not in csrf.lower() and "samesite=strict" in csrf.lower()
    assert "secure" not in session.lower()  # plain http on loopback; https gets Secure
    value = browser.cookies[SESSION_COOKIE]
    assert key not in value and key.removeprefix("glk_") not in value
    assert read_session(value).key_digest == hash_key(key)
    # a changed byte, another secret's signature, an expired one: all refused
    assert read_session(value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]) is None
    payload, _ = value.split(".")
    assert read_session(f"{payload}.{'x' * 43}") is None
    expired, _ = new_session(hash_key(key), now=time.time() - 13 * 3600)
    assert read_session(expired) is None
    browser.cookies.set(SESSION_COOKIE, expired)
    assert_problem(browser.get("/v1/experiments"), 401)
    assert browser.get("/", follow_redirects=False).status_code == 303


def test_over_https_the_cookies_are_secure(browser, api_key) -> None:
    resp = browser.post(
        "/ui/signin",
        content=f"key={api_key('tester')}&next=/",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Forwarded-Proto": "https",
        },
        follow_redirects=False,
    )
    assert all("secure" in c.lower() for c in resp.headers.get_list("set-cookie"))


def test_the_api_reads_the_session_and_writes_need_the_csrf_token(browser, api_key) -> None:
    sign_in(browser, api_key("tester"))
    token = browser.cookies[CSRF_COOKIE]
    assert browser.get("/v1/experiments").status_code == 200
    exp = browser.post("/v1/experiments", json=SMALL_SUBMIT, headers={"X-CSRF-Token": token})
    assert exp.status_code == 202, exp.text
    url = f"/v1/experiments/{exp.json()['id']}"

    assert_problem(browser.patch(url, json={"tags": ["x"]}), 403)  # no token
    assert_problem(browser.patch(url, json={"tags": ["x"]}, headers={"X-CSRF-Token": "nope"}), 403)
    assert_problem(browser.post("/v1/experiments", json=SMALL_SUBMIT), 403)
    other_site = {"X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert_problem(browser.patch(url, json={"tags": ["x"]}, headers=other_site), 403)
    ok = browser.patch(url, json={"tags": ["x"]}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.json()["tags"] == ["x"]
    # a bearer key still works beside it, and needs no token
    bearer = {"Authorization": f"Bearer {api_key('tester')}"}
    assert browser.patch(url, json={"note": "n"}, headers=bearer).status_code == 200
    # the report page opens with the cookie; a key in its URL is refused
    assert browser.get(f"{url}/report").status_code == 200
    assert_problem(browser.get(f"{url}/report?key={api_key('tester')}"), 401)


def test_a_revoked_key_ends_its_sessions(browser, api_key, sessions, settings) -> None:
    from api.auth import key_cache

    key = api_key("tester")
    sign_in(browser, key)
    assert browser.get("/v1/experiments").status_code == 200
    with sessions() as s:
        assert revoke_key(s, key[:12])
    key_cache.clear()  # else within AUTH_CACHE_S
    assert_problem(browser.get("/v1/experiments"), 401)
    assert browser.get("/", follow_redirects=False).status_code == 303


def test_sign_in_refuses_bad_keys_other_origins_and_far_redirects(browser, api_key) -> None:
    bad = sign_in(browser, "glk_not-a-key")
    assert bad.status_code == 401 and "unknown or revoked" in bad.text
    assert SESSION_COOKIE not in browser.cookies
    assert sign_in(browser, "").status_code == 400
    key = api_key("tester")
    for far in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert sign_in(browser, key, far).headers["location"] == "/"
    other = browser.post(
        "/ui/signin",
        content=f"key={key}",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "http://evil.example",
        },
    )
    assert_problem(other, 403)


def test_sign_out_clears_the_session(browser, api_key) -> None:
    sign_in(browser, api_key("tester"))
    assert_problem(browser.post("/ui/signout"), 403)  # without the token: another site's form
    out = browser.post("/ui/signout", headers={"X-CSRF-Token": browser.cookies[CSRF_COOKIE]})
    assert out.status_code == 204
    assert SESSION_COOKIE not in browser.cookies
    assert browser.get("/", follow_redirects=False).status_code == 303


def test_docs_load_their_assets_from_this_server(anonymous) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = anonymous.get(page).text
        urls = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert urls and all(u.startswith("/static/") for u in urls), urls
        assert "googleapis" not in html and "cdn" not in html
        js = next(u for u in urls if u.endswith(asset))
        assert anonymous.get(js).status_code == 200
    for path in ("/static/ui/app.js", "/static/vendor/uplot-1.6.32/uPlot.iife.min.js"):
        resp = anonymous.get(path)
        assert resp.status_code == 200 and "javascript" in resp.headers["content-type"]


def test_every_static_file_ships_in_the_package() -> None:
    """pyproject's package-data globs cover every file under api/static/ (and so the wheel and
    the API image, which installs the package)."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["api"]
    static = ROOT / "api" / "static"
    files = [p.relative_to(ROOT / "api").as_posix() for p in static.rglob("*") if p.is_file()]
    assert len(files) > 10
    missed = [
        f
        for f in files
        if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)
    ]
    assert missed == []
    assert "COPY api ./api" in (ROOT / "docker" / "api.Dockerfile").read_text()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_no_key_reaches_uvicorns_log(settings, backend, api_key, tmp_path: Path) -> None:
    """uvicorn as a process with its access log on: a key in a query string, a sign-in form and
    a session's requests leave no trace of the key in anything it writes."""
    key = api_key("tester")
    log = tmp_path / "uvicorn.log"
    with uvicorn(backend.env(), log, access_log=True) as base:
        with httpx.Client(base_url=base, headers={"Origin": base}) as c:
            assert c.get(f"/v1/experiments/x/report?key={key}").status_code == 401
            assert c.get(f"/v1/experiments?key={key}&limit=5").status_code == 401
            signed = c.post(
                "/ui/signin",
                content=f"key={key}&next=/",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert signed.status_code == 303 and c.cookies.get(SESSION_COOKIE)
            assert c.get("/v1/experiments", params={"name": "x"}).status_code == 200
            bearer = {"Authorization": f"Bearer {key}"}
            assert c.get("/v1/experiments", headers=bearer).status_code == 200
        time.sleep(0.5)
        text = log.read_text()
    secret = key.removeprefix("glk_")
    assert secret[:12] not in text
    assert c.cookies.get(SESSION_COOKIE)[:20] not in text
    # the access log is there, without its query strings
    assert '"GET /v1/experiments/x/report HTTP/1.1" 401' in text, text[-2000:]
    assert '"path": "/v1/experiments/x/report"' in text  # the service's own request line
