"""OA2 integration tests: the legacy and the documented predictor side by side, same model file.

The 150 iris flowers are sent in centimetres, then the same flowers in inches. The legacy
predictor cannot tell and answers other classes for a share of them; the documented one
converts (identical predictions), refuses a unit it does not know and alerts on values outside
its model card's ranges, which is what inches sent as centimetres look like.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from patternkit.client import Client, wait_until
from patternkit.models import load_dataset
from patternkit.testing import bad_predict_bodies, extra_instance, post_body
from patternkit.topology import Stack

X, _, _, _ = load_dataset("iris")
CM = [[float(v) for v in row] for row in X]
INCHES = [[v / 2.54 for v in row] for row in CM]
IN_UNIT = {"cm": CM, "in": INCHES, "mm": [[v * 10 for v in r] for r in CM],
           "m": [[v / 100 for v in r] for r in CM]}


@pytest.fixture
def legacy(stack: Stack) -> Any:
    with Client(stack.url("legacy")) as client:
        yield client


@pytest.fixture
def documented(entry: Client) -> Client:
    return entry


def labels(client: Client, body: dict[str, Any]) -> list[int]:
    resp = client.post("/predict", json=body)
    assert resp.status_code == 200, resp.text
    found: list[int] = resp.json()["prediction"]
    return found


def test_legacy_silently_changes_its_predictions_on_inches(legacy: Client) -> None:
    in_cm = labels(legacy, {"data": CM})
    resp = legacy.post("/predict", json={"data": INCHES})
    assert resp.status_code == 200  # no error, no warning, no header: silent
    assert "x-input-alerts" not in resp.headers and "alerts" not in resp.json()
    changed = sum(a != b for a, b in zip(in_cm, resp.json()["prediction"], strict=True))
    share = changed / len(CM)
    print(f"legacy: {changed} of {len(CM)} predictions changed ({share:.1%}) when the same "
          "flowers came in inches, every reply 200")
    assert share > 0.5, share  # the model's classes move with the scale (95 of 150 measured)


def test_documented_converts_inches_to_identical_predictions(documented: Client) -> None:
    in_cm = labels(documented, {"unit": "cm", "data": CM})
    for unit in ("in", "mm", "m"):
        resp = documented.post("/predict", json={"unit": unit, "data": IN_UNIT[unit]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["prediction"] == in_cm, unit
        assert (body["unit"], body["converted_to"], body["alerts"]) == (unit, "cm", [])
        assert resp.headers["x-input-alerts"] == "0"


@pytest.mark.parametrize("unit", ["yd", "inch", "CM", ""])
def test_documented_refuses_an_unknown_unit_with_a_422(documented: Client, unit: str) -> None:
    resp = documented.post("/predict", json={"unit": unit, "data": CM[:2]})
    assert resp.status_code == 422
    assert resp.json()["error"] == "unknown_unit"
    assert f"unit {unit!r} is not one of cm, mm, m, in" in resp.json()["message"]


def test_documented_requires_the_unit(documented: Client) -> None:
    resp = documented.post("/predict", json={"data": CM[:2]})
    assert resp.status_code == 422 and "body.unit: Field required" in resp.json()["message"]


@pytest.mark.parametrize(("body", "status", "says"), bad_predict_bodies(4, 1000))
def test_documented_refuses_bad_bodies(documented: Client, body: dict[str, Any] | str,
                                       status: int, says: str) -> None:
    if isinstance(body, dict):
        body = {"unit": "cm", **body}
    elif body.startswith('{"data"'):  # NaN and 1e999, sent as raw text
        body = '{"unit": "cm", ' + body[1:]
    resp = post_body(documented, "/predict", body)
    assert resp.status_code == status, resp.text
    assert says in resp.json()["message"]


def test_inches_sent_as_centimetres_raise_an_alert(documented: Client) -> None:
    before = documented.stats()
    ok = documented.post("/predict", json={"unit": "cm", "data": CM})
    assert ok.headers["x-input-alerts"] == "0"
    wrong = documented.post("/predict", json={"unit": "cm", "data": INCHES})
    assert wrong.status_code == 200  # still predicted, but flagged
    alerts = wrong.json()["alerts"]
    flagged_rows = {a["row"] for a in alerts}
    assert int(wrong.headers["x-input-alerts"]) == len(alerts) > 0
    print(f"documented: {len(flagged_rows)} of {len(INCHES)} rows flagged, {len(alerts)} values "
          "out of the card's range when inches were labelled cm")
    assert len(flagged_rows) == len(INCHES)  # every flower's sepal length is under 3.94 "cm"
    first = alerts[0]
    assert first["feature"] == "sepal_length" and first["value"] < first["low"]
    after = documented.stats()
    assert after["rows_flagged"] - before.get("rows_flagged", 0) == len(INCHES)
    sepal = after["out_of_range"]["sepal_length"] - before.get("out_of_range", {}).get(
        "sepal_length", 0)
    assert sepal == len(INCHES)
    record = documented.get("/alerts").json()["alerts"][0]
    assert record["request_id"] == wrong.headers["x-request-id"]
    assert (record["rows"], record["rows_flagged"], record["unit"]) == (150, 150, "cm")
    metrics = documented.get("/metrics").text
    assert re.search(r'nobody_knows_out_of_range_total\{feature="sepal_length"\} \d+', metrics)


def test_metadata_is_200_on_documented_and_404_on_legacy(
    documented: Client, legacy: Client
) -> None:
    meta = documented.get("/metadata")
    assert meta.status_code == 200
    body = meta.json()
    assert body["owner"]["team"] == "iris-ml" and "@" in body["owner"]["contact"]
    assert "iris" in body["purpose"]
    assert re.fullmatch(r"iris@[0-9a-f]{12}", body["dataset"]["version"])
    assert body["dataset"]["version"] == f"iris@{body['model']['data_hash'][:12]}"
    assert re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", body["code"]["sha"])
    assert body["input"]["unit"] == "cm"
    assert [f["name"] for f in body["input"]["features"]] == [
        "sepal_length", "sepal_width", "petal_length", "petal_width"]
    missing = legacy.get("/metadata")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    # the same model file behind both
    assert legacy.post("/predict", json={"data": CM[:1]}).json()["version"] == \
        body["model"]["version"]


def test_documented_will_not_start_without_its_model_card(stack: Stack) -> None:
    with extra_instance(stack, "documented", {"MODEL_CARD": "/nonexistent/model_card.json"}) \
            as extra:
        code = wait_until(lambda: extra.popen.poll(), 30, what="the process to exit")
        assert code != 0
        assert "no readable model card at /nonexistent/model_card.json" in extra.log()
