"""Demo traffic for S9: an item read twice (DWH, then cache), a pre-warmed item, an unknown one,
then an update in the DWH and the next reads seeing it."""

from __future__ import annotations

from typing import Any

from patternkit.client import IRIS_ROWS, Client
from patternkit.topology import Stack

VIRGINICA = IRIS_ROWS[2][0]


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Client(stack.url()) as proxy, Client(stack.url("dwh")) as dwh:

        def call(what: str, item: int) -> None:
            before = dwh.stats()["queries"]
            resp, ms = proxy.timed("POST", "/predict", json={"item_id": item})
            body = resp.json()
            rows.append({
                "call": what,
                "item": item,
                "status": resp.status_code,
                "x_data_source": resp.headers.get("x-data-source", "-"),
                "features": body.get("features", body.get("message")),
                "predicted": body.get("prediction", ["-"])[0],
                "dwh_queries": dwh.stats()["queries"] - before,
                "ms": round(ms, 1),
            })

        call("first call", 7)
        call("same item again", 7)
        call("warmed at deploy", 145)
        call("unknown item", 9999)
        put = dwh.request("PUT", "/items/7", json={"features": VIRGINICA})
        rows.append({
            "call": "PUT /items/7 (DWH)",
            "item": 7,
            "status": put.status_code,
            "x_data_source": f"invalidated: {put.json()['cache_invalidated']}",
            "features": VIRGINICA,
        })
        call("after the update", 7)
        call("and again", 7)
        cache = proxy.stats()["cache"]
    rows.append({"call": "proxy /stats",
                 "x_data_source": f"hits {cache['hits']}, misses {cache['misses']}, "
                                  f"redis errors {cache['errors']}"})
    return rows
