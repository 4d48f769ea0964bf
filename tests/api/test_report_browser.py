"""The report page in a real browser: headless Chromium (Debian's package; .ci/run installs
it) over the DevTools protocol (tests/browser.py), against uvicorn on a loopback port, on the
embedded SQLite default. Signed in with the UI's session cookie, the page loads, all its
images decode (the page's own script writes loaded/total on <body>), and a screenshot is
taken; without a session the browser gets the 401 problem."""

from pathlib import Path

import pytest
from PIL import Image

from tests.browser import CHROMIUM, Browser
from tests.factories import run_finished as run
from tests.serving import uvicorn

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture
def server(settings, backend, tmp_path):
    """uvicorn serving the app on the test's database; yields its base URL."""
    with uvicorn(backend.env(), tmp_path / "uvicorn.log") as base:
        yield base


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_report_page_loads_in_chromium_with_its_images(
    server: str, sessions, api_key, tmp_path: Path
) -> None:
    exp_id = run(sessions)
    url = f"{server}/v1/experiments/{exp_id}/report"
    browser = Browser(tmp_path / "profile", width=1200, height=1600)
    try:
        # without a session: the 401 problem, not the page
        browser.goto(url)
        denied = browser.eval("document.body.innerText")
        assert "unauthorized" in denied and browser.count("img") == 0
        browser.problems.clear()  # the 401 asked for

        browser.goto(f"{server}/ui/signin?next=/v1/experiments/{exp_id}/report")
        browser.fill("#key", api_key("tester"))
        browser.eval("document.forms[0].submit()")
        browser.wait_for("document.body.dataset.imagesLoaded !== undefined")
        assert browser.url() == url
        assert browser.text("#status") == "succeeded"
        # every image decoded in the browser: naturalWidth > 0 for 6 of 6
        assert browser.data("body", "imagesLoaded") == "6/6"
        assert browser.count("img") == 6

        shot = browser.screenshot(tmp_path / "shot.png", max_height=1600)
        img = Image.open(shot)
        assert img.width == 1200
        # a rendered page, not a blank or an error page: many colours (the heatmap alone has many)
        assert len(img.convert("RGB").getcolors(1 << 24)) > 200
        assert browser.problems == []
    finally:
        browser.close()
