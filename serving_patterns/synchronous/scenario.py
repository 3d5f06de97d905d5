"""Demo traffic for S2: three checkouts that each wait for their class, then one that times out."""

from __future__ import annotations

from typing import Any

from patternkit.client import IRIS_ROWS, Client
from patternkit.topology import Stack


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Client(stack.url()) as client:
        for i, (features, _) in enumerate(IRIS_ROWS):
            resp, ms = client.timed("POST", "/checkout",
                                    json={"order_id": f"order-{i}", "features": features})
            body = resp.json()
            rows.append({"order": body["order_id"], "status": resp.status_code,
                         "class": body["predicted_class"], "next_step": body["next_step"],
                         "waited_ms": round(ms, 1)})
        predictor = stack.proc("predictor").env.get("DELAY_MS", "0")
        rows.append({"order": f"(each waited for the predictor's DELAY_MS={predictor})"})
    return rows
