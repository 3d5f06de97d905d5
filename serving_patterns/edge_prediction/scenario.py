"""Demo traffic for S13: a device downloads, verifies and caches the model, then predicts alone.

It compares the device's answers and latency with the server predictor's, opens the web page
in headless Chromium when it is installed, publishes a new version and a tampered one, and
finally stops the distribution service to show the device predicting offline from its cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from patternkit.client import IRIS_ROWS, Client, LatencyStats
from patternkit.models import load_dataset, train_model
from patternkit.topology import Stack
from serving_patterns.edge_prediction.browser import Browser, chromium_binary, missing_vendor_files
from serving_patterns.edge_prediction.edge_client import EdgeClient

CLASSES = ["setosa", "versicolor", "virginica"]


def publish(model_dir: Path, version: str, seed: int, tamper: bool = False) -> None:
    """Train into a staging folder, optionally damage the file, then rename it into place."""
    staging = model_dir / f".staging-{version}"
    train_model("iris_lr", staging, version=version, seed=seed)
    if tamper:
        path = staging / "model.onnx"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    staging.rename(model_dir / version)


def browser_row(stack: Stack, server_class: int) -> dict[str, Any]:
    if not chromium_binary() or missing_vendor_files():
        why = "no chromium" if not chromium_binary() else "run `make vendor` first"
        return {"step": "browser page (onnxruntime-web)", "outcome": f"skipped: {why}"}
    row = IRIS_ROWS[1][0]
    url = f"{stack.url()}/?row={','.join(map(str, row))}"
    with Browser() as browser, browser.open(url) as page:
        shown = page.shown()
    return {"step": "browser page (onnxruntime-web)", "version": shown["version"].split()[-1],
            "outcome": f"shows {shown['result']} for {row}",
            "detail": f"server says {CLASSES[server_class]}; {shown['sha256']}"}


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    model_dir = Path(stack.proc("distribution").env["MODEL_DIR"])
    X = load_dataset("iris")[0]
    with EdgeClient(stack.url(), stack.run_dir / "device-cache", timeout_s=2) as device, \
            Client(stack.url("predictor")) as predictor:
        first = device.refresh()
        rows.append({"step": "device starts, cache empty", "version": first.version,
                     "outcome": first.status,
                     "detail": f"{first.downloaded_bytes} bytes, sha256 {device.sha256[:12]}.. ok"
                     if device.sha256 else first.detail})

        served = predictor.post("/predict", json={"data": X.tolist()}).json()["prediction"]
        local = device.predict(X).labels
        same = sum(a == b for a, b in zip(local, served, strict=True))
        edge_ms, server_ms = LatencyStats(), LatencyStats()
        for _ in range(20):
            started = time.perf_counter()
            device.predict([IRIS_ROWS[0][0]])
            edge_ms.add((time.perf_counter() - started) * 1000)
            server_ms.add(predictor.timed("POST", "/predict", json={"data": [IRIS_ROWS[0][0]]})[1])
        rows.append({"step": "150 iris rows on the device", "version": device.version,
                     "outcome": f"{same}/150 same class as the server",
                     "detail": f"p50 per row: device {edge_ms.percentile(50):.3f} ms, "
                               f"server {server_ms.percentile(50):.2f} ms over HTTP"})

        rows.append(browser_row(stack, served[50]))

        publish(model_dir, "2.0.0", seed=7)
        update = device.refresh()
        rows.append({"step": "2.0.0 published", "version": update.version,
                     "outcome": update.status, "detail": f"{update.detail}, no restart"})

        publish(model_dir, "3.0.0", seed=11, tamper=True)
        refused = device.refresh()
        rows.append({"step": "3.0.0 published, file tampered", "version": refused.version,
                     "outcome": refused.status, "detail": refused.detail[:47] + ".."})

        stack.kill("distribution")
        offline = device.refresh()
        answer = device.predict([row for row, _ in IRIS_ROWS])
        rows.append({"step": "distribution service stopped", "version": offline.version,
                     "outcome": f"{offline.status}; still predicts {answer.classes}",
                     "detail": f"source={answer.source}, from {device.cache_dir.name}/"})
    return rows
