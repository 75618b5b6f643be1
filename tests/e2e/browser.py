"""Headless Debian Chromium driven over the DevTools protocol (CDP), for the dashboard test.

Collects every console error and uncaught exception of the page, evaluates expressions in
it and captures screenshots; nothing but the browser and a WebSocket is involved.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from streams.broker import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    def __init__(self) -> None:
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="lattice-chromium-")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # tests run as root in containers
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={self.profile}",
                f"--remote-debugging-port={self.port}",
                "--window-size=1400,1000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        page = self._page_socket()
        self.socket = connect(page, max_size=50 * 2**20)
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def _page_socket(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as reply:
                    pages = [t for t in json.loads(reply.read()) if t["type"] == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("chromium did not open its DevTools port")

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})  # type: ignore[no-any-return]
            self._note(message)

    def drain(self, seconds: float) -> None:
        """Take in the page's events for a while (console errors arrive as events)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._note(
                    json.loads(self.socket.recv(timeout=max(0.01, deadline - time.monotonic())))
                )
            except TimeoutError:
                break

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self, element_id: str) -> str:
        """The element's text, or "" while the page does not have it (yet)."""
        element = f"document.getElementById({json.dumps(element_id)})"
        result = self.call(
            "Runtime.evaluate",
            expression=f"{element} ? {element}.textContent : ''",
            returnByValue=True,
        )
        return str(result["result"].get("value") or "")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            self.process.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)
