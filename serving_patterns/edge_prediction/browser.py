"""Headless Chromium for S13: opens the distribution's web page and reads what it shows.

The page runs the model with onnxruntime-web and writes its outcome into the DOM only after
`session.run` resolves. `Browser` starts Debian's `chromium` with a fresh profile and the
DevTools protocol on a free port; a `Page` polls the DOM through `Runtime.evaluate` until the
page reports `done` or `error` (with a deadline), and types rows into the form like a user.
It needs only `websockets` (which uvicorn[standard] brings) and httpx.
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
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from patternkit.client import wait_until
from serving_patterns.edge_prediction.distribution import STATIC_DIR

VENDOR_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--remote-debugging-port=0",
]
# What the page shows; null until its elements exist.
PAGE_STATE_JS = """(() => {
  const q = (id) => document.getElementById(id);
  if (!q('status') || !q('result')) return null;
  const probabilities = Array.from(q('probabilities').rows, (r) => Number(r.cells[1].textContent));
  return JSON.stringify({state: q('status').dataset.state, status: q('status').textContent,
    result: q('result').textContent, label: q('result').dataset.label,
    version: q('version').textContent, sha256: q('sha256').textContent, probabilities});
})()"""


# Types a row into the form and submits it, as a user would.
SUBMIT_JS = """((row) => {
  const ids = ['sepal_length', 'sepal_width', 'petal_length', 'petal_width'];
  ids.forEach((id, i) => { document.getElementById(id).value = String(row[i]); });
  document.getElementById('status').dataset.state = 'submitted';
  document.getElementById('row').requestSubmit();
  return true;
})(%s)"""


def chromium_binary() -> str | None:
    """`CHROMIUM` if set, else Debian's chromium on PATH (None when there is none)."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


def missing_vendor_files(static_dir: Path = STATIC_DIR) -> list[str]:
    return [name for name in VENDOR_FILES if not (static_dir / "vendor" / name).is_file()]


class Browser:
    """One headless Chromium; use as a context manager, then `with browser.open(url) as page`."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        found = binary or chromium_binary()
        if not found:
            raise RuntimeError("no chromium binary (apt-get install chromium, or set CHROMIUM)")
        self.binary = found
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="edge-chromium-"))
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Browser:
        log = (self.profile / "chromium.log").open("wb")
        self.popen = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
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
    def open(self, url: str) -> Iterator[Page]:
        """A new tab on `url`, closed afterwards."""
        base = f"http://127.0.0.1:{self.port}"
        tab = httpx.put(f"{base}/json/new?about:blank", timeout=5).raise_for_status().json()
        try:
            with connect(tab["webSocketDebuggerUrl"], max_size=None) as ws:
                page = Page(ws, self.timeout)
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


class Page:
    """One tab showing the edge page: read what it shows, or type a row and submit it."""

    def __init__(self, ws: ClientConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self._ids = count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=self.timeout))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return out.get("result", {}).get("value")

    def shown(self, timeout: float | None = None) -> dict[str, Any]:
        """What the page shows once its prediction is done (or it failed), with a deadline."""

        def finished() -> dict[str, Any] | None:
            value = self.evaluate(PAGE_STATE_JS)
            state: dict[str, Any] | None = json.loads(value) if value else None
            return state if state and state["state"] in ("done", "error") else None

        return wait_until(finished, timeout or self.timeout, 0.1,
                          "the page finishing its prediction")

    def predict(self, row: list[float]) -> dict[str, Any]:
        """Type `row` into the form, submit it and return what the page then shows."""
        self.shown()  # the model is loaded and the first prediction is on screen
        self.evaluate(SUBMIT_JS % json.dumps(row))
        return self.shown()
