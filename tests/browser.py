"""Headless Debian Chromium driven over the Chrome DevTools Protocol, for page tests.

`Chromium` starts ``chromium --headless`` with a new profile and a DevTools port (only on
127.0.0.1), `Chromium.check(url)` loads a page and reports what a person would notice:
console errors, uncaught exceptions, failed resource loads (the browser log), images that
did not load or decode, and in-page links (``href="#id"``) whose target does not exist.
Only the standard library and ``websockets`` (installed with Prefect) are used.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import connect

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

#: evaluated in the page after its load event: images and in-page links
_INSPECT = """
JSON.stringify({
  title: document.title,
  images: Array.from(document.images).map(i => ({
    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
  brokenAnchors: Array.from(document.querySelectorAll('a[href^="#"]'))
    .map(a => a.getAttribute('href').slice(1))
    .filter(id => id && !document.getElementById(id)),
  text: document.body ? document.body.innerText.slice(0, 20000) : ''
})
"""


@dataclass
class PageCheck:
    """What loading one page showed."""

    title: str = ""
    images: list[dict] = field(default_factory=list)
    broken_anchors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def broken_images(self) -> list[dict]:
        """Images not complete or with no decoded pixels."""
        return [i for i in self.images if not (i["complete"] and i["width"] > 0)]


def executable() -> str | None:
    """Path of Debian's chromium, None when it is not installed."""
    return shutil.which("chromium")


class Chromium:
    """A headless Chromium for the duration of a ``with`` block."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.profile = Path(tempfile.mkdtemp(prefix="tess-ffi-chromium-"))
        self.port: int | None = None

    def __enter__(self) -> Chromium:
        exe = executable()
        if exe is None:
            raise RuntimeError("chromium is not installed (make test installs it)")
        self.proc = subprocess.Popen(
            [
                exe,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1600",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if marker.exists():
                lines = marker.read_text().split()
                if lines and lines[0].isdigit():
                    self.port = int(lines[0])
                    break
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
            time.sleep(0.1)
        if self.port is None:
            self.__exit__(None, None, None)
            raise RuntimeError("chromium did not open its DevTools port")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _page_ws(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            targets = json.loads(r.read())
        for t in targets:
            if t.get("type") == "page":
                return t["webSocketDebuggerUrl"]
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["webSocketDebuggerUrl"]

    def check(self, url: str, settle: float = 0.5) -> PageCheck:
        """Load ``url`` in the page and inspect it (see module docstring)."""
        out = PageCheck()
        with connect(self._page_ws(), max_size=None, open_timeout=20) as ws:
            ids = iter(range(1, 10**6))

            def send(method: str, params: dict | None = None) -> int:
                k = next(ids)
                ws.send(json.dumps({"id": k, "method": method, "params": params or {}}))
                return k

            def pump(until, deadline: float):
                while time.monotonic() < deadline:
                    try:
                        msg = json.loads(ws.recv(timeout=max(0.05, deadline - time.monotonic())))
                    except TimeoutError:
                        return None
                    _collect(msg, out)
                    if until(msg):
                        return msg
                return None

            for method in ("Runtime.enable", "Log.enable", "Page.enable"):
                k = send(method)
                pump(lambda m, k=k: m.get("id") == k, time.monotonic() + self.timeout)
            send("Page.navigate", {"url": url})
            loaded = pump(
                lambda m: m.get("method") == "Page.loadEventFired",
                time.monotonic() + self.timeout,
            )
            if loaded is None:
                raise TimeoutError(f"{url} did not finish loading in {self.timeout} s")
            pump(lambda m: False, time.monotonic() + settle)  # late errors
            k = send("Runtime.evaluate", {"expression": _INSPECT, "returnByValue": True})
            reply = pump(lambda m: m.get("id") == k, time.monotonic() + self.timeout)
            if reply is None:
                raise TimeoutError("no answer to Runtime.evaluate")
            data = json.loads(reply["result"]["result"]["value"])
        out.title = data["title"]
        out.images = data["images"]
        out.broken_anchors = data["brokenAnchors"]
        out.text = data["text"]
        return out

    def screenshot(self, url: str, path: Path, element_id: str | None = None) -> Path:
        """Save a PNG of the viewport after loading ``url`` (scrolled to ``element_id``)."""
        import base64

        with connect(self._page_ws(), max_size=None, open_timeout=20) as ws:
            ids = iter(range(1, 10**6))

            def call(method: str, params: dict | None = None, event: str | None = None):
                k = next(ids)
                ws.send(json.dumps({"id": k, "method": method, "params": params or {}}))
                deadline = time.monotonic() + self.timeout
                reply = None
                while time.monotonic() < deadline:
                    msg = json.loads(ws.recv(timeout=self.timeout))
                    if msg.get("id") == k:
                        reply = msg
                    if reply is not None and (event is None or msg.get("method") == event):
                        return reply
                    if event is not None and msg.get("method") == event and reply is None:
                        event = None
                raise TimeoutError(method)

            call("Page.enable")
            call("Page.navigate", {"url": url}, event="Page.loadEventFired")
            if element_id:
                call(
                    "Runtime.evaluate",
                    {"expression": f"document.getElementById('{element_id}').scrollIntoView()"},
                )
                time.sleep(0.3)
            shot = call("Page.captureScreenshot", {"format": "png"})
        Path(path).write_bytes(base64.b64decode(shot["result"]["data"]))
        return Path(path)


def _collect(msg: dict, out: PageCheck) -> None:
    method = msg.get("method")
    params = msg.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
        out.console_errors.append(f"console.{params['type']}: {args}")
    elif method == "Runtime.exceptionThrown":
        d = params.get("exceptionDetails", {})
        text = d.get("exception", {}).get("description") or d.get("text", "")
        out.console_errors.append(f"exception: {text}")
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        e = params["entry"]
        out.console_errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
