"""Demo traffic for S11: three requests get their light answer at once, then their heavy one.

Each row is one request: how fast the light answer came and what it said, then when the heavy
answer for the same request id arrived (after the light answer) and what it said. The single
heavy worker takes DELAY_MS per job, so later requests wait for earlier heavy jobs.
"""

from __future__ import annotations

import time
from typing import Any

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.topology import Stack


def run(stack: Stack) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = []
    with Client(stack.url()) as proxy:
        for i, (features, expected) in enumerate(IRIS_ROWS):
            sent = time.perf_counter()
            resp, ms = proxy.timed("POST", "/predict", json={"data": [features]},
                                   headers={"X-Request-ID": f"demo-{i}"})
            requests.append({"sent": sent, "light_ms": ms, "expected": expected,
                             "status": resp.status_code, "light": resp.json()})

        def heavy_done() -> bool:
            for req in requests:
                if "heavy" in req:
                    continue
                body = proxy.get(req["light"]["result_url"]).json()
                if body["status"] in ("done", "failed"):
                    req["heavy"], req["heavy_s"] = body, time.perf_counter() - req["sent"]
            return all("heavy" in req for req in requests)

        wait_until(heavy_done, 30, what="every heavy answer")
    delay = stack.proc("heavy").env.get("DELAY_MS", "?")
    rows: list[dict[str, Any]] = [
        {
            "request": req["light"]["request_id"],
            "expected": req["expected"],
            "light (HTTP)": req["status"],
            "light_ms": round(req["light_ms"], 1),
            "light model": req["light"]["model"],
            "light says": f"{req['light']['prediction'][0]} "
                          f"(p={max(req['light']['probabilities'][0]):.2f})",
            "heavy after_s": round(req["heavy_s"], 2),
            "heavy model": req["heavy"].get("model"),
            "heavy says": f"{req['heavy']['prediction'][0]} "
                          f"(p={max(req['heavy']['probabilities'][0]):.2f})"
                          if req["heavy"]["status"] == "done" else req["heavy"].get("error"),
        }
        for req in requests
    ]
    rows.append({"request": f"(one heavy worker, DELAY_MS={delay} per job)"})
    return rows
