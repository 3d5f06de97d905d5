"""Demo traffic for S6: one row of each class through the chain, all of iris, then stage 2 down."""

from __future__ import annotations

from typing import Any

from patternkit.client import IRIS_ROWS, Client
from patternkit.models import load_dataset
from patternkit.topology import Stack

NAMES = ("setosa", "versicolor", "virginica")


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Client(stack.url()) as proxy:
        for features, expected in IRIS_ROWS:
            resp, ms = proxy.timed("POST", "/predict", json={"data": [features]})
            body = resp.json()
            rows.append({
                "request": f"one {NAMES[expected]} row",
                "status": resp.status_code,
                "label": body["labels"][0],
                "stages": " -> ".join(f"{t['name']} ({t['model']}, {t['ms']:.0f} ms)"
                                      for t in body["trace"]),
                "ms": round(ms, 1),
            })

        X, y, _, _ = load_dataset("iris")
        resp, ms = proxy.timed("POST", "/predict", json={"data": X.tolist()})
        body = resp.json()
        correct = sum(int(p == t) for p, t in zip(body["prediction"], y.tolist(), strict=True))
        rows.append({
            "request": f"all {len(X)} iris rows, one batch",
            "status": resp.status_code,
            "label": f"{correct}/{len(X)} correct",
            "stages": " -> ".join(f"{t['name']} ({len(t['rows'])} rows)" for t in body["trace"]),
            "ms": round(ms, 1),
        })

        stack.kill("stage2")
        for features, expected in IRIS_ROWS[:2]:
            resp, ms = proxy.timed("POST", "/predict", json={"data": [features]})
            body = resp.json()
            rows.append({
                "request": f"stage2 killed: one {NAMES[expected]} row",
                "status": resp.status_code,
                "label": body["labels"][0] if resp.status_code == 200 else body["message"],
                "stages": " -> ".join(t["name"] for t in body.get("trace", [])),
                "ms": round(ms, 1),
            })
    return rows
