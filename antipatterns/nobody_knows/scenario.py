"""Demo traffic for OA2: the 150 iris flowers in centimetres, then the same flowers in inches,
to the legacy and the documented predictor (the same model file behind both).

Legacy answers 200 every time and changes its mind on a share of the flowers; nobody can ask
it why (no /metadata). Documented converts declared inches and predicts the same classes,
refuses a unit it does not know, and when inches arrive labelled as centimetres (a sensor
swapped, its config not), it flags every row and keeps an alert record.
"""

from __future__ import annotations

from typing import Any

from patternkit.client import Client
from patternkit.models import load_dataset
from patternkit.topology import Stack


def run(stack: Stack) -> list[dict[str, Any]]:
    X, _, _, _ = load_dataset("iris")
    cm = [[float(v) for v in row] for row in X]
    inches = [[v / 2.54 for v in row] for row in cm]
    rows: list[dict[str, Any]] = []
    with Client(stack.url("legacy")) as legacy, Client(stack.url("documented")) as documented:
        base = legacy.post("/predict", json={"data": cm}).json()["prediction"]
        for service, client, unit, body in [
            ("legacy", legacy, "cm (bare floats)", {"data": cm}),
            ("legacy", legacy, "in (bare floats)", {"data": inches}),
            ("documented", documented, "cm", {"unit": "cm", "data": cm}),
            ("documented", documented, "in", {"unit": "in", "data": inches}),
            ("documented", documented, "in, labelled cm", {"unit": "cm", "data": inches}),
            ("documented", documented, "yd", {"unit": "yd", "data": cm}),
        ]:
            resp = client.post("/predict", json=body)
            reply = resp.json()
            if resp.status_code == 200:
                changed = sum(a != b for a, b in zip(base, reply["prediction"], strict=True))
                flagged = len({a["row"] for a in reply.get("alerts", [])})
                outcome = f"{changed} of {len(cm)} predictions changed ({changed / len(cm):.0%})"
                alert = (f"{flagged} rows flagged, {len(reply['alerts'])} values out of range"
                         if "alerts" in reply else "none possible")
            else:
                outcome, alert = f"{reply['error']}: {reply['message'][:60]}", "-"
            rows.append({"service": service, "sent": unit, "status": resp.status_code,
                         "against cm": outcome, "alerts": alert})
        stats = documented.stats()
        record = documented.get("/alerts").json()["alerts"][0]
        meta = documented.get("/metadata").json()
        rows.append({"service": "documented", "sent": "GET /stats, /alerts", "status": 200,
                     "against cm": f"rows_flagged {stats['rows_flagged']}, out_of_range "
                                   f"{stats['out_of_range']}",
                     "alerts": f"newest: {record['rows_flagged']} of {record['rows']} rows, "
                               f"e.g. {record['values'][0]['feature']} "
                               f"{record['values'][0]['value']} < {record['values'][0]['low']}"})
        for service, client in (("legacy", legacy), ("documented", documented)):
            resp = client.get("/metadata")
            what = (f"owner {meta['owner']['team']}, dataset {meta['dataset']['version']}, "
                    f"code {meta['code']['sha'][:12]}, unit {meta['input']['unit']}"
                    if resp.status_code == 200 else "nobody knows")
            rows.append({"service": service, "sent": "GET /metadata", "status": resp.status_code,
                         "against cm": what, "alerts": "-"})
    return rows
