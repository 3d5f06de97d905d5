"""The S13 page in headless Chromium: waits for its in-browser prediction, types rows.

The page runs the model with onnxruntime-web and writes its outcome into the DOM only after
`session.run` resolves. `EdgePage` polls the DOM (with a deadline) until the page reports
`done` or `error`, and types rows into the form like a user; `Browser` is patternkit's
headless Chromium (`patternkit.browser`) opening its tabs as `EdgePage`s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from patternkit import browser
from patternkit.browser import Page, chromium_binary
from patternkit.client import wait_until
from serving_patterns.edge_prediction.distribution import STATIC_DIR

__all__ = ["Browser", "EdgePage", "chromium_binary", "missing_vendor_files"]

VENDOR_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

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


def missing_vendor_files(static_dir: Path = STATIC_DIR) -> list[str]:
    return [name for name in VENDOR_FILES if not (static_dir / "vendor" / name).is_file()]


class EdgePage(Page):
    """One tab showing the edge page: read what it shows, or type a row and submit it."""

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


class Browser(browser.Browser):
    """Headless Chromium whose tabs are `EdgePage`s."""

    page_class: ClassVar[type[Page]] = EdgePage
