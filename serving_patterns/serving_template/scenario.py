"""Demo traffic for S12: one call per server through the proxy, then what the template refuses.

Each server takes its own named features yet answers in the same envelope with the same
template version; a missing key, an out-of-range feature and an iris body sent to the wine
server are refused by the shared layers with a message naming the problem.
"""

from __future__ import annotations

from typing import Any

import httpx

from patternkit.client import Client
from patternkit.topology import Stack
from serving_patterns.serving_template.config import load_config

IRIS = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
WINE = {"alcohol": 14.23, "malic_acid": 1.71, "ash": 2.43, "alcalinity_of_ash": 15.6,
        "magnesium": 127.0, "total_phenols": 2.8, "flavanoids": 3.06,
        "nonflavanoid_phenols": 0.28, "proanthocyanins": 2.29, "color_intensity": 5.64,
        "hue": 1.04, "od280_od315": 3.92, "proline": 1065.0}


def api_key(stack: Stack, service: str) -> str:
    env = stack.proc(service).env
    return env[load_config(env["SERVING_CONFIG"]).config.auth.api_key_env]


def row(call: str, route: str, resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    if resp.status_code == 200:
        p = body["predictions"][0]
        confidence = p["probabilities"][p["label"]]
        answer = f"{body['model']} {body['version']}: {p['label']} ({confidence:.2f})"
        template = body["template_version"]
    else:
        answer, template = body["message"], ""
    return {"call": call, "route": route, "status": resp.status_code, "answer": answer,
            "template": template}


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Client(stack.url()) as proxy:
        calls = [("iris_lr", IRIS, "4 named iris features"),
                 ("iris_rf", IRIS, "the same row, other model"),
                 ("wine", WINE, "13 named wine features")]
        for name, instance, what in calls:
            route = f"/models/{name}/predict"
            resp = proxy.post(route, json={"instances": [instance]},
                              headers={"X-API-Key": api_key(stack, name)})
            rows.append(row(what, route, resp))
        key = {"X-API-Key": api_key(stack, "iris_lr")}
        refused = [
            ("no X-API-Key", "iris_lr", IRIS, {}),
            ("petal_length 60 cm", "iris_lr", {**IRIS, "petal_length": 60.0}, key),
            ("iris row to wine", "wine", IRIS, {"X-API-Key": api_key(stack, "wine")}),
        ]
        for what, name, instance, headers in refused:
            route = f"/models/{name}/predict"
            resp = proxy.post(route, json={"instances": [instance]}, headers=headers)
            rows.append(row(what, route, resp))
    return rows
