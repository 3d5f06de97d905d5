"""Demo traffic for S8: the same input twice (a MISS, then a HIT), then a different one."""

from __future__ import annotations

from typing import Any

from patternkit.client import IRIS_ROWS, Client
from patternkit.topology import Stack


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    calls = [
        ("first call", IRIS_ROWS[0][0]),
        ("same input again", IRIS_ROWS[0][0]),
        ("different input", IRIS_ROWS[2][0]),
        ("that one again", IRIS_ROWS[2][0]),
    ]
    with Client(stack.url()) as proxy, Client(stack.url("predictor")) as predictor:
        for what, features in calls:
            before = predictor.stats()["hits"]
            resp, ms = proxy.timed("POST", "/predict", json={"data": [features]})
            rows.append({
                "call": what,
                "input": features,
                "x_cache": resp.headers.get("x-cache"),
                "predicted": resp.json()["prediction"][0],
                "version": resp.headers.get("x-model-version"),
                "predictor_calls": predictor.stats()["hits"] - before,
                "ms": round(ms, 1),
            })
        cache = proxy.stats()["cache"]
    rows.append({"call": "proxy /stats",
                 "x_cache": f"hits {cache['hits']}, misses {cache['misses']}, "
                            f"redis errors {cache['errors']}"})
    return rows
