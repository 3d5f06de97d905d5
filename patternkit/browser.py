"""Headless Chromium for tests and demos: open a page, read its DOM, see what it loaded.

`Browser` starts Debian's `chromium` with a fresh profile and the DevTools protocol on a free
port; `browser.open(url)` gives a `Page` (a new tab) that evaluates JavaScript with
`Runtime.evaluate`, waits for a condition with a deadline (`wait_for`), and records every
request the page made (`requested_urls`, from the protocol's Network events).
`Browser(offline=True)` resolves no host name but 127.0.0.1 and localhost, as on a machine
without internet. It needs only `websockets` (which uvicorn[standard] brings) and httpx.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from itertools import count
from pathlib import Path
from typing import Any, ClassVar

import httpx
from websockets.sync.client import ClientConnection, connect

from patternkit.client import wait_until

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--remote-debugging-port=0",
]
# every host name fails to resolve but the loopback ones: no request leaves the machine
OFFLINE_FLAGS = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]


def chromium_binary() -> str | None:
    """`CHROMIUM` if set, else Debian's chromium on PATH (None when there is none)."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class Page:
    """One tab: evaluate JavaScript, wait for what it shows, list what it requested."""

    def __init__(self, ws: ClientConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []  # protocol events seen so far (method, params)
        self._ids = count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are kept)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=self.timeout))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return out.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float | None = None) -> Any:
        """Evaluate `expression` until it is truthy and return its value, with a deadline."""
        return wait_until(lambda: self.evaluate(expression) or None, timeout or self.timeout,
                          0.1, what)

    def requested_urls(self) -> list[str]:
        """Every URL the page requested so far (documents, scripts, styles, fetches...)."""
        self.evaluate("0")  # a round trip: the events sent before its answer are in
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]


class Browser:
    """One headless Chromium; use as a context manager, then `with browser.open(url) as page`."""

    page_class: ClassVar[type[Page]] = Page

    def __init__(
        self, binary: str | None = None, timeout: float = 30.0, *, offline: bool = False
    ) -> None:
        found = binary or chromium_binary()
        if not found:
            raise RuntimeError("no chromium binary (apt-get install chromium, or set CHROMIUM)")
        self.binary = found
        self.timeout = timeout
        self.flags = [*FLAGS, *(OFFLINE_FLAGS if offline else [])]
        self.profile = Path(tempfile.mkdtemp(prefix="patternkit-chromium-"))
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Browser:
        log = (self.profile / "chromium.log").open("wb")
        self.popen = subprocess.Popen(
            [self.binary, *self.flags, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            self.port = wait_until(self._devtools_port, self.timeout, 0.05,
                                   "chromium opening its DevTools port")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _devtools_port(self) -> int | None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise RuntimeError(f"chromium exited with {self.popen.returncode}: {self.log_tail()}")
        try:
            first = (self.profile / "DevToolsActivePort").read_text().splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.profile / "chromium.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @contextmanager
    def open(self, url: str) -> Iterator[Any]:
        """A new tab on `url` (a `page_class`, its requests recorded), closed afterwards."""
        base = f"http://127.0.0.1:{self.port}"
        tab = httpx.put(f"{base}/json/new?about:blank", timeout=5).raise_for_status().json()
        try:
            with connect(tab["webSocketDebuggerUrl"], max_size=None) as ws:
                page = self.page_class(ws, self.timeout)
                page.call("Network.enable")  # requests, responses, blocked loads
                page.call("Runtime.enable")  # console messages and uncaught exceptions
                page.call("Page.navigate", url=url)
                yield page
        finally:
            with suppress(httpx.HTTPError):
                httpx.get(f"{base}/json/close/{tab['id']}", timeout=5)

    def close(self) -> None:
        popen = self.popen
        if popen is not None:
            if popen.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=5)
            # renderer and zygote processes share the group and may outlive the browser
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
        shutil.rmtree(self.profile, ignore_errors=True)
