"""Demo traffic for O6: one proxy steered by its parameters while it runs, never restarted.

Each step changes a parameter (`PUT /config`, or the config file) and sends the same rows:
the answer, who served it and the models' hit counts show the effect. Switched off, no model
is called; model_b takes over on a flip; a higher threshold turns borderline rows into
"unknown"; a bad value is refused by name. Last, injected faults on model_a (restarted with
FAIL_MODE or DELAY_MS; the proxy stays up) show RETRY riding over failures and
TIMEOUT_SECOND bounding the wait.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from patternkit.client import Client, wait_until
from patternkit.topology import Stack

# setosa, versicolor, and two borderline rows (top probabilities of 0.66 and 0.56 from model_a,
# 0.96 and 0.67 from model_b)
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 2.5, 4.9, 1.5], [5.9, 3.2, 4.8, 1.8]]


def hits(stack: Stack) -> tuple[int, int]:
    counts = []
    for name in ("model_a", "model_b"):
        with Client(stack.url(name)) as backend:
            counts.append(int(backend.stats()["hits"]))
    return counts[0], counts[1]


def answer(body: dict[str, Any]) -> str:
    if "labels" in body:
        return ",".join(body["labels"])
    return str(body.get("message", ""))[:90]


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    config_file = Path(stack.proc("proxy").env["CONFIG_FILE"])
    with Client(stack.url()) as proxy:

        def step(what: str, change: dict[str, Any] | None = None) -> None:
            outcome = "-"
            if change is not None:
                resp = proxy.request("PUT", "/config", json=change)
                body = resp.json()
                outcome = (f"applied: version {body['version']}" if resp.status_code == 200
                           else f"{resp.status_code} {body['message']}")
            a, b = hits(stack)
            resp, ms = proxy.timed("POST", "/predict", json={"data": ROWS})
            body = resp.json()
            after_a, after_b = hits(stack)
            rows.append({
                "step": what,
                "change": outcome,
                "status": resp.status_code,
                "served_by": resp.headers.get("x-served-by"),
                "answer": answer(body),
                "attempts": body.get("attempts", "-"),
                "ms": round(ms),
                "model calls a/b": f"{after_a - a}/{after_b - b}",
            })

        step("start: ACTIVE_MODEL=model_a (env)")
        step("PUT activate=false", {"activate": False})
        step("PUT activate=true, active_model=model_b",
             {"activate": True, "active_model": "model_b"})
        step("PUT thresholds.model_b=0.99", {"thresholds": {"model_b": 0.99}})
        step("PUT retry=0 (refused)", {"retry": 0})

        tmp = config_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"active_model": "model_a"}))
        os.replace(tmp, config_file)  # a whole file at once: never seen half-written
        wait_until(lambda: proxy.get("/config").json()["values"]["active_model"] == "model_a",
                   timeout=10, what="the proxy reading params.yaml")
        step("edit params.yaml: active_model: model_a")

        stack.restart("model_a", env={"FAIL_MODE": "first_n:2"})
        step("model_a fails its first 2 calls; PUT retry=1", {"retry": 1})
        stack.restart("model_a", env={"FAIL_MODE": "first_n:2"})
        step("model_a fails its first 2 calls; PUT retry=3", {"retry": 3})
        stack.restart("model_a", env={"FAIL_MODE": "none", "DELAY_MS": "1000"})
        step("model_a takes 1 s; PUT timeout_second=0.3", {"timeout_second": 0.3})
        stack.restart("model_a", env={"DELAY_MS": "0"})
        step("model_a healthy; PUT timeout_second=2", {"timeout_second": 2})
        history = proxy.get("/config/history").json()
        sources = sorted({c["source"] for c in history["changes"]})
        rows.append({"step": "GET /config/history", "change": "-", "status": 200,
                     "served_by": "proxy",
                     "answer": f"{history['total']} field changes from {', '.join(sources)}",
                     "attempts": "-", "ms": "-", "model calls a/b": "-"})
    return rows
