"""A headless Chromium driven over the DevTools protocol (a websocket; the `websockets` package
comes with uvicorn[standard]), for the browser tests. Debian's `chromium` package, no browser
download. Every JavaScript exception, console error and CSP violation a page causes is kept in
`problems`, so a test can require there are none."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        assert CHROMIUM is not None
        profile.mkdir(parents=True, exist_ok=True)
        self.width, self.height = width, height
        self.log = (profile / "chromium.log").open("w")
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.time() > deadline:
                raise BrowserError(
                    f"chromium did not start: {(profile / 'chromium.log').read_text()}"
                )
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = []
        while not pages:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            pages = [t for t in targets if t["type"] == "page"]
            time.sleep(0.05)
        self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.ws = self._connection.__enter__()
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    # --- the protocol -------------------------------------------------------------------------

    def _event(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        method, params = message["method"], message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.problems.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.problems.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.problems.append(f"log: {entry['text']} ({entry.get('url', '')})")

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise BrowserError(f"{method}: no answer in {timeout} s")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") == mine:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._event(message)

    def pump(self, seconds: float) -> None:
        """Read events for a while (the page runs meanwhile either way)."""
        deadline = time.time() + seconds
        while (left := deadline - time.time()) > 0:
            try:
                message = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                return
            if "method" in message:
                self._event(message)

    # --- what tests do ------------------------------------------------------------------------

    def goto(self, url: str, timeout: float = 30) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        deadline = time.time() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.time() > deadline:
                raise BrowserError(f"{url} did not load in {timeout} s")
            self.pump(0.1)

    def eval(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll until `expression` is truthy; one that throws (an element not drawn yet) is
        false."""
        deadline = time.time() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while True:
            value = self.eval(guarded)
            if value:
                return value
            if time.time() > deadline:
                raise BrowserError(f"not true within {timeout} s: {expression}; {self.problems}")
            self.pump(0.1)

    def fill(self, selector: str, value: str, event: str = "change") -> None:
        """Set a form field's value as a user would, and fire `event` on it."""
        self.eval(
            f"(e => {{ e.value = {json.dumps(value)}; e.dispatchEvent(new Event('{event}')) }})"
            f"(document.querySelector({json.dumps(selector)}))"
        )

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def text(self, selector: str) -> str:
        return self.eval(f"document.querySelector({json.dumps(selector)}).textContent")

    def data(self, selector: str, key: str) -> str | None:
        """A data-* attribute: the pages mark their state there (ready, batches, points)."""
        return self.eval(f"document.querySelector({json.dumps(selector)}).dataset.{key}")

    def count(self, selector: str) -> int:
        return self.eval(f"document.querySelectorAll({json.dumps(selector)}).length")

    def url(self) -> str:
        return self.eval("location.href")

    def screenshot(self, path: Path, max_height: int = 2400) -> Path:
        """The page from the top, as tall as its content (at most `max_height`)."""
        height = min(max_height, int(self.eval("document.documentElement.scrollHeight")))
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()
