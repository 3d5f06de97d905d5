"""Demo traffic for S7: one row of each class, all of iris, then virginica slowed and killed."""

from __future__ import annotations

from typing import Any

from patternkit.client import IRIS_ROWS, Client
from patternkit.models import load_dataset
from patternkit.topology import Stack

NAMES = ("setosa", "versicolor", "virginica")
VIRGINICA = IRIS_ROWS[2][0]


def observe(proxy: Client, what: str, data: list[list[float]]) -> dict[str, Any]:
    """One call, summarised: the label, who answered how fast, who is missing and why."""
    resp, ms = proxy.timed("POST", "/predict", json={"data": data})
    body = resp.json()
    return {
        "request": what,
        "status": resp.status_code,
        "label": body["labels"][0],
        "answered": ", ".join(f"{n} {m['ms']:.0f} ms" for n, m in body["models"].items()),
        "missing": ", ".join(f"{n} ({e['error']})" for n, e in body["errors"].items()),
        "ms": round(ms, 1),
        "prediction": body["prediction"],
    }


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    delays = ", ".join(f"{n} {stack.proc(n).env['DELAY_MS']} ms" for n in NAMES)
    with Client(stack.url()) as proxy:
        for features, expected in IRIS_ROWS:
            rows.append(observe(proxy, f"one {NAMES[expected]} row", [features]))

        X, y, _, _ = load_dataset("iris")
        batch = observe(proxy, f"all {len(X)} iris rows", X.tolist())
        correct = sum(int(p == t) for p, t in zip(batch["prediction"], y.tolist(), strict=True))
        rows.append({**batch, "label": f"{correct}/{len(X)} correct"})

        timeout = stack.proc("proxy").env["BACKEND_TIMEOUT_MS"]
        stack.restart("virginica", env={"DELAY_MS": "3000"})
        rows.append(observe(proxy, f"virginica at 3000 ms, timeout {timeout} ms", [VIRGINICA]))
        stack.kill("virginica")
        rows.append(observe(proxy, "virginica killed", [VIRGINICA]))
    for row in rows:
        row.pop("prediction")
    rows.append({"request": f"(model delays: {delays})"})
    return rows
