"""The report page in a real browser: headless Chromium (Debian's package; .ci/run installs
it) against uvicorn on a loopback port, on the embedded SQLite default. The page loads, all its
images decode (the page's own script writes loaded/total on <body>), and a screenshot is
taken."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.factories import run_finished as run
from tests.serving import uvicorn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture
def server(settings, backend, tmp_path):
    """uvicorn serving the app on the test's database; yields its base URL."""
    with uvicorn(backend.env(), tmp_path / "uvicorn.log") as base:
        yield base


def chromium(url: str, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            "--virtual-time-budget=10000",
            *mode,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_report_page_loads_in_chromium_with_its_images(
    server: str, sessions, api_key, tmp_path: Path
) -> None:
    exp_id = run(sessions)
    url = f"{server}/v1/experiments/{exp_id}/report?key={api_key('tester')}"

    dom = chromium(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.search(r"<b id=\"?status\"?>succeeded</b>", html), html[:2000]
    # every image decoded in the browser: naturalWidth > 0 for 4 of 4
    assert 'data-images-loaded="6/6"' in html, html[:500]
    assert html.count("<img") == 6

    shot = tmp_path / "shot.png"
    done = chromium(url, tmp_path, f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    img = Image.open(shot)
    assert img.size == (1200, 1600)
    # a rendered page, not a blank or an error page: many colours (the heatmap alone has many)
    assert len(img.convert("RGB").getcolors(1 << 24)) > 200

    # without a key the browser gets the 401 problem, not the page
    denied = chromium(f"{server}/v1/experiments/{exp_id}/report", tmp_path, "--dump-dom")
    assert "unauthorized" in denied.stdout and "data-images-loaded" not in denied.stdout
