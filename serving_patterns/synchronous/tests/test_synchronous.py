"""S2 integration tests: the web app waits for a real, deliberately slow predictor."""

from __future__ import annotations

import pytest

from patternkit.client import IRIS_ROWS, Client
from patternkit.topology import Stack

ORDER = {"order_id": "o-1", "features": [7.0, 3.2, 4.7, 1.4]}


def test_reply_embeds_the_class_and_calls_the_predictor_once(stack: Stack) -> None:
    predictor = Client(stack.url("predictor"))
    before = predictor.stats()["hits"]
    for features, expected in IRIS_ROWS:
        resp = Client(stack.url()).post("/checkout", json={"order_id": "o", "features": features})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predicted_class"] == expected
    assert predictor.stats()["hits"] == before + len(IRIS_ROWS)
    body = Client(stack.url()).post("/checkout", json=ORDER).json()
    assert body["next_step"] == "manual_review"
    assert body["model_version"] == "1.0.0"


def test_the_caller_waits_at_least_the_prediction_time(stack: Stack) -> None:
    delay_ms = int(stack.proc("predictor").env["DELAY_MS"])
    _, waited_ms = Client(stack.url()).timed("POST", "/checkout", json=ORDER)
    assert waited_ms >= delay_ms


def test_request_id_reaches_the_predictor(stack: Stack) -> None:
    resp = Client(stack.url()).post("/checkout", json=ORDER, headers={"X-Request-ID": "chk-42"})
    assert resp.headers["x-request-id"] == "chk-42"
    assert resp.headers["x-served-by"] == "webapp"


@pytest.mark.parametrize(
    "order",
    [
        {"order_id": "o", "features": [1.0, 2.0, 3.0]},
        {"order_id": "o", "features": [1.0, 2.0, 3.0, "x"]},
        {"order_id": "o", "features": [True, False, True, False]},
        {"order_id": "o", "features": [1.0, 2.0, "3.0", 4.0]},
        {"features": [1.0, 2.0, 3.0, 4.0]},
    ],
)
def test_bad_orders_get_422_and_never_reach_the_predictor(stack: Stack, order: dict) -> None:
    predictor = Client(stack.url("predictor"))
    before = predictor.stats()["hits"]
    resp = Client(stack.url()).post("/checkout", json=order)
    assert resp.status_code == 422
    assert resp.json()["message"].startswith("body.")
    assert predictor.stats()["hits"] == before


def test_a_slow_predictor_gives_504_at_about_the_timeout(fresh_stack) -> None:
    timeout_ms = 300
    stack = fresh_stack(env={"predictor": {"DELAY_MS": "3000"},
                             "webapp": {"PRED_TIMEOUT_MS": str(timeout_ms)}})
    resp, waited_ms = Client(stack.url()).timed("POST", "/checkout", json=ORDER)
    assert resp.status_code == 504
    assert resp.json()["error"] == "backend_timeout"
    assert "within 300 ms" in resp.json()["message"]
    assert timeout_ms <= waited_ms < timeout_ms + 1500  # far below the predictor's 3 s
    # a failing predictor is a 502 naming it, never a 500 from the web app
    stack.restart("predictor", env={"DELAY_MS": "0", "FAIL_MODE": "always"})
    resp = Client(stack.url()).post("/checkout", json=ORDER)
    assert resp.status_code == 502
    assert resp.json()["message"].startswith("predictor answered 500: injected failure")
