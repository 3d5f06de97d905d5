"""Demo traffic for S1: known iris rows through the LB, then who answered each call."""

from __future__ import annotations

from collections import Counter
from typing import Any

from patternkit.client import IRIS_ROWS, Client, LatencyStats
from patternkit.topology import Stack


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    served: Counter[str] = Counter()
    latency = LatencyStats()
    with Client(stack.url()) as client:
        for features, expected in IRIS_ROWS:
            resp, ms = client.timed("POST", "/predict", json={"data": [features]})
            body = resp.json()
            rows.append({"input": features, "expected": expected,
                         "predicted": body["prediction"][0],
                         "served_by": resp.headers["x-served-by"], "ms": round(ms, 1)})
        for _ in range(20):
            resp, ms = client.timed("POST", "/predict", json={"data": [IRIS_ROWS[0][0]]})
            served[resp.headers["x-served-by"]] += 1
            latency.add(ms)
    summary = latency.summary()
    rows.append({"input": "20 more calls", "served_by": dict(served),
                 "ms": f"p50 {summary['p50_ms']} / p99 {summary['p99_ms']}"})
    return rows
