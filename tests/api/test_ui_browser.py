"""The web UI in a real browser: headless Chromium (Debian's package) over the DevTools protocol
(tests/browser.py), against uvicorn on a loopback port and the embedded SQLite default, with
real runs trained in this process. Signing in, the runs table, a run's page updating while it
trains, a tag edit, the compare page, the sweeps pages, signing out; a screenshot of each page.
No page may throw, log a console error or break its Content-Security-Policy.

Screenshots go to the test's temporary folder; with GRADLAB_UI_SCREENSHOTS=docs they replace
docs/ui-*.png, from somewhat longer runs so the pictures show something."""

import os
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.browser import CHROMIUM, Browser
from tests.serving import ROOT, uvicorn

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
DOCS = os.environ.get("GRADLAB_UI_SCREENSHOTS") == "docs"

# Tiny runs for the test; for the docs' pictures, runs whose curves and profiles say something.
if DOCS:
    FINISHED = [
        ("tanh rnn, T=30", {"model": {"cell": "rnn", "hidden_size": 32}}),
        ("lstm, T=30", {"model": {"cell": "lstm", "hidden_size": 32}}),
    ]
    COMMON = {
        "task": {"seq_len": 30},
        "train": {"steps": 400, "batch_size": 32},
        "instrument": {"every": 10, "val_every": 50},
    }
    LIVE = {
        "task": {"seq_len": 40},
        "model": {"cell": "gru", "hidden_size": 32},
        "train": {"steps": 800, "batch_size": 32},
        "instrument": {"every": 20, "val_every": 100},
    }
else:
    FINISHED = [
        ("tanh rnn, T=10", {"model": {"cell": "rnn", "hidden_size": 8}}),
        ("lstm, T=10", {"model": {"cell": "lstm", "hidden_size": 8}}),
    ]
    COMMON = {
        "task": {"seq_len": 10},
        "train": {"steps": 30, "batch_size": 8},
        "instrument": {"every": 5, "val_every": 10},
    }
    LIVE = {
        "task": {"seq_len": 20},
        "model": {"cell": "gru", "hidden_size": 16},
        "train": {"steps": 300, "batch_size": 16},
        "instrument": {"every": 10, "val_every": 50},
    }


@pytest.fixture
def server(settings, backend, tmp_path, monkeypatch):
    """uvicorn on the test's database; the in-process worker flushes often, so a run's page
    sees several batches arrive, and the stream sends a verdict so far every 0.5 s (at the
    default 5 s a live run that trains in a few seconds can end before its second one)."""
    monkeypatch.setattr(settings, "flush_every_s", 0.3)
    monkeypatch.setattr(settings, "flush_every_steps", 25)
    env = {**backend.env(), "STREAM_VERDICT_EVERY_S": "0.5"}
    with uvicorn(env, tmp_path / "uvicorn.log") as base:
        yield base


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


ROWS = "#runs-body tr[data-id]"


def count(selector: str) -> str:
    """JavaScript: how many elements match."""
    return f"document.querySelectorAll('{selector}').length"


def shot(browser: Browser, name: str, tmp_path: Path) -> Path:
    path = (ROOT / "docs" if DOCS else tmp_path) / f"ui-{name}.png"
    browser.screenshot(path)
    img = Image.open(path).convert("RGB")
    assert img.width == browser.width and img.height > 300
    # a drawn page, not a blank one or a bare error
    assert len(img.getcolors(1 << 24)) > 50, name
    return path


def submit(server: str, headers: dict, spec: dict) -> str:
    resp = httpx.post(f"{server}/v1/experiments", json=spec, headers=headers)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_ui_in_chromium(server: str, browser: Browser, api_key, tmp_path: Path) -> None:
    from worker.runner import run_experiment

    key = api_key("tester")
    auth = {"Authorization": f"Bearer {key}"}
    finished = []
    for name, over in FINISHED:
        exp_id = submit(server, auth, {**COMMON, **over, "name": name, "tags": ["demo"]})
        assert run_experiment(exp_id) == "succeeded"
        finished.append(exp_id)
    sweep = httpx.post(
        f"{server}/v1/sweeps",
        json={
            "name": "cell vs clipping",
            "base": {**COMMON, "model": {"hidden_size": 8}},
            "grid": {"model.cell": ["rnn", "gru"], "train.clip.mode": ["none", "norm"]},
        },
        headers=auth,
    ).json()
    for point in sweep["points"]:
        for exp_id in point["experiments"]:
            run_experiment(exp_id)

    # signing in: a page without a session goes to the sign-in form and comes back
    browser.goto(f"{server}/")
    assert browser.url().startswith(f"{server}/ui/signin?next=")
    shot(browser, "signin", tmp_path)
    browser.fill("#key", key)
    browser.eval("document.forms[0].submit()")
    browser.wait_for(f"location.pathname === '/' && {count(ROWS)} >= 6")
    cookies = browser.send("Network.getCookies")["cookies"]
    session = next(c for c in cookies if c["name"] == "gradlab_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and key not in session["value"]
    assert key not in browser.eval("document.cookie + localStorage.length + location.href")

    # the runs table lists the real runs, and filters on the server
    names = browser.eval(f"[...document.querySelectorAll('{ROWS} a:first-child')].map(a => a.text)")
    assert FINISHED[0][0] in names and FINISHED[1][0] in names
    browser.fill("#f-cell", "lstm")
    browser.wait_for(f"{count(ROWS)} === 1")  # the sweep has no lstm
    browser.fill("#f-cell", "")
    browser.wait_for(f"{count(ROWS)} >= 6")
    shot(browser, "runs", tmp_path)

    # a run's page while it trains: the stream's batches arrive and the charts grow
    live_id = submit(server, auth, {**LIVE, "name": "gru, live", "tags": ["live"]})
    browser.goto(f"{server}/ui/runs/{live_id}")
    browser.wait_for("document.getElementById('main').dataset.live === '1'")
    trainer = threading.Thread(target=run_experiment, args=(live_id,))
    trainer.start()
    try:
        browser.wait_for("Number(document.getElementById('main').dataset.batches || 0) >= 1", 60)
        first = int(browser.data("#chart-loss", "points"))
        browser.wait_for(
            f"Number(document.getElementById('chart-loss').dataset.points) > {first}", 60
        )
        assert "step" in browser.text("#progress-text")
        # the stream's verdict so far, shown (provisional) while it trains
        browser.wait_for("document.getElementById('main').dataset.verdictSoFar !== undefined", 60)
        browser.wait_for("document.getElementById('main').dataset.ended === 'succeeded'", 120)
    finally:
        trainer.join(120)
    assert int(browser.data("#heatmap", "rows")) > 1
    verdict = browser.text("#diagnosis .badge")
    assert verdict in ("healthy", "vanishing", "exploding", "inconclusive")
    assert browser.count("#evidence tr") > 3

    # a tag edit is saved
    browser.eval("document.querySelector('#actions details').open = true")
    browser.fill("#edit-tags", "baseline, t50")
    browser.fill("#edit-note", "watch the profile")
    browser.click("#save")
    browser.wait_for("document.getElementById('edit-msg').textContent === 'saved'")
    saved = httpx.get(f"{server}/v1/experiments/{live_id}", headers=auth).json()
    assert saved["tags"] == ["baseline", "t50"] and saved["note"] == "watch the profile"
    browser.eval("document.querySelector('#actions details').open = false")
    shot(browser, "run", tmp_path)

    # compare two runs
    browser.goto(f"{server}/ui/compare?ids={finished[0]},{finished[1]}")
    browser.wait_for("document.getElementById('main').dataset.ready === '1'")
    assert browser.data("#cmp-loss", "series") == "2"
    diff = browser.text("#spec-diff")
    assert "model.cell" in diff and "lstm" in diff and "task.seq_len" not in diff
    assert browser.count("#cmp-verdicts thead th") == 3
    browser.click("#cmp-log")  # log -> linear: still drawn
    assert browser.data("#cmp-loss", "series") == "2"
    browser.click("#cmp-log")
    shot(browser, "compare", tmp_path)

    # the sweeps, and the sweep: points ranked, labels that say the grid values
    browser.goto(f"{server}/ui/sweeps")
    browser.wait_for(f"{count('#sweeps-body tr[data-id]')} === 1")
    shot(browser, "sweeps", tmp_path)
    browser.goto(f"{server}/ui/sweeps/{sweep['id']}")
    browser.wait_for("document.getElementById('sweep-val').dataset.series === '4'", 60)
    assert browser.count("#points tbody tr") == 4
    legend = browser.text("#sweep-val")
    assert "cell=gru, mode=norm" in legend and "cell=rnn, mode=none" in legend
    assert " of " in browser.text("#key-numbers")
    shot(browser, "sweep", tmp_path)

    assert browser.problems == []

    # signing out ends the session
    browser.click("#signout")
    browser.wait_for("location.pathname === '/ui/signin'")
    browser.goto(f"{server}/ui/sweeps")
    assert browser.url().startswith(f"{server}/ui/signin?next=")
