"""Demo traffic for S5: rows by id through all three stages, a raw row, a skipped prep, a dead prep.

Each row shows the stages that ran with their round-trip times, as the proxy reports them.
The same versicolor row sent straight to pred (no scaling) shows why the stages must be
chained, and the last calls show what a user sees when a stage is missing.
"""

from __future__ import annotations

from typing import Any

import httpx

from patternkit.client import IRIS_ROWS, Client
from patternkit.topology import Stack

CLASSES = ("setosa", "versicolor", "virginica")


def observe(what: str, resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    row: dict[str, Any] = {"request": what, "status": resp.status_code}
    if resp.status_code != 200:
        return {**row, "result": f"{body['error']}: {body['message']}"}
    stages = body.get("stages") or [{"stage": body["served_by"], "ms": None}]
    label = body["prediction"][0]
    return {
        **row,
        "stages (ms)": " > ".join(
            s["stage"] if s["ms"] is None else f"{s['stage']} {s['ms']:.1f}" for s in stages
        ),
        "result": f"{CLASSES[label]} (p={max(body['probabilities'][0]):.3f})",
    }


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    versicolor = IRIS_ROWS[1][0]
    with Client(stack.url()) as proxy, Client(stack.url("pred")) as pred:
        for row_id in (0, 50, 100):
            resp = proxy.post("/predict", json={"ids": [row_id]})
            rows.append(observe(f"proxy: ids [{row_id}]", resp))
        resp = proxy.post("/predict", json={"data": [versicolor]})
        rows.append(observe(f"proxy: raw {versicolor}", resp))
        resp = pred.post("/predict", json={"data": [versicolor]})
        rows.append(observe(f"pred alone: raw {versicolor}", resp))
        rows.append(observe("proxy: ids [150]", proxy.post("/predict", json={"ids": [150]})))
        ids = proxy.stats()["train_run_ids"]
        rows.append({"request": "proxy /stats: train_run_ids",
                     "result": f"prep {ids['prep']}, pred {ids['pred']}"})
        stack.kill("prep")
        resp = proxy.post("/predict", json={"ids": [50]})
        rows.append(observe("prep killed; proxy: ids [50]", resp))
    return rows
