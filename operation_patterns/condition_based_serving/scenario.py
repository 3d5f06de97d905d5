"""Demo traffic for O7: the same row sent under different conditions, then under edited rules.

First the shipped rules: the hour (in the body, or the client's local time in
`X-Client-Time`) picks the morning, noon or night model, a region its regional model, and a
request that says nothing goes to the default. Then the rules file is edited while the proxy
runs (mornings start at 5, no default), and the same requests route the new way; last, an
invalid file is refused by name and the rules before it keep routing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from patternkit.client import Client, wait_until
from patternkit.topology import Stack

ROW = [5.1, 3.5, 1.4, 0.2]

REQUESTS: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({"hour": 8}, {}),
    ({"hour": 13}, {}),
    ({"hour": 22}, {}),
    ({"hour": 6}, {}),
    ({}, {"X-Client-Time": "2026-05-01T03:10:00+09:00"}),
    ({"region": "europe", "hour": 8}, {}),
    ({"region": "asia"}, {}),
    ({}, {}),
]

EDITED = """\
clock: none
rules:
  europe: {region: [europe], backend: europe}
  asia: {region: [asia], backend: asia}
  morning: {hours: [5, 10], backend: morning}
  noon: {hours: [10, 19], backend: noon}
  night: {hours: [19, 5], backend: night}
"""


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rules_file = Path(stack.proc("proxy").env["RULES_FILE"])
    with Client(stack.url()) as proxy:

        def send(step: str) -> None:
            for context, headers in REQUESTS:
                resp = proxy.post("/predict", json={"data": [ROW], "context": context},
                                  headers=headers)
                body = resp.json()
                said = {**context, **{k.lower(): v for k, v in headers.items()}}
                rows.append({
                    "rules": step,
                    "condition": ", ".join(f"{k}={v}" for k, v in said.items()) or "(none)",
                    "status": resp.status_code,
                    "rule": body.get("rule", "-"),
                    "served_by": resp.headers.get("x-served-by"),
                    "answer": f"{body['model']} {body['prediction']}"
                    if resp.status_code == 200 else body["message"][:80],
                    "rules_version": body.get("rules_version", "-"),
                })

        send("shipped rules.yaml")
        version = proxy.get("/rules").json()["version"]
        write_atomically(rules_file, EDITED)
        wait_until(lambda: proxy.get("/rules").json()["version"] > version, timeout=10,
                   what="the proxy reloading rules.yaml")
        send("edited: mornings 5-10, no default")
        version = proxy.get("/rules").json()["version"]
        write_atomically(rules_file, EDITED.replace("backend: morning", "backend: breakfast"))
        error = wait_until(lambda: proxy.get("/rules").json()["file"]["error"], timeout=10,
                           what="the proxy refusing the bad rules")
        rows.append({"rules": "invalid edit", "condition": "-", "status": "-", "rule": "-",
                     "served_by": "-", "answer": error["message"][:80],
                     "rules_version": proxy.get("/rules").json()["version"]})
        resp = proxy.post("/predict", json={"data": [ROW], "context": {"hour": 6}})
        rows.append({"rules": "after the invalid edit", "condition": "hour=6",
                     "status": resp.status_code, "rule": resp.json().get("rule"),
                     "served_by": resp.headers.get("x-served-by"),
                     "answer": f"{resp.json().get('model')} {resp.json().get('prediction')}",
                     "rules_version": resp.json().get("rules_version")})
        assert resp.json().get("rules_version") == version
    return rows
