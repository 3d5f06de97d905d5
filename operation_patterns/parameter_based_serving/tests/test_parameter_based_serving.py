"""O6 integration tests: the real proxy and two real predictors, steered by their parameters.

Every change goes through the proxy's own API (`PUT /config`) or its config file while it
runs; the proxy's process id stays the same throughout, so nothing here is a restart. Tests
on the shared stack put the parameters back as they found them (`changed`). Timing claims
lean on the predictor's injected DELAY_MS: a timeout answer comes before the model would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from patternkit.client import Client, wait_until
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack

SETOSA, VERSICOLOR, BORDERLINE = [5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [5.9, 3.2, 4.8, 1.8]
VIRGINICA = [6.3, 3.3, 6.0, 2.5]
ROWS = [SETOSA, VERSICOLOR, BORDERLINE, VIRGINICA]


@pytest.fixture
def proxy(entry: Client) -> Client:
    return entry


def put(proxy: Client, **changes: Any) -> httpx.Response:
    return proxy.request("PUT", "/config", json=changes)


def values(proxy: Client) -> dict[str, Any]:
    config: dict[str, Any] = proxy.get("/config").json()["values"]
    return config


@contextmanager
def changed(proxy: Client, **changes: Any) -> Iterator[httpx.Response]:
    """Change parameters for a block and put the old values back after it."""
    before = values(proxy)
    resp = put(proxy, **changes)
    assert resp.status_code == 200, resp.text
    try:
        yield resp
    finally:
        assert put(proxy, **{k: before[k.lower()] for k in changes}).status_code == 200


def predict(proxy: Client, rows: list[list[float]] | None = None) -> httpx.Response:
    return proxy.post("/predict", json={"data": rows or [SETOSA]})


def hits(stack: Stack, name: str) -> int:
    with Client(stack.url(name)) as backend:
        return int(backend.stats()["hits"])


def proxy_pid(stack: Stack) -> int | None:
    return stack.status("proxy")[0].pid


# -- (1) the master switch ------------------------------------------------------------------------


def test_activate_false_answers_the_disabled_default_and_calls_no_model(
    stack: Stack, proxy: Client
) -> None:
    pid = proxy_pid(stack)
    assert predict(proxy).json()["labels"] == ["setosa"]
    before = {name: hits(stack, name) for name in ("model_a", "model_b")}
    with changed(proxy, activate=False) as resp:
        assert resp.json()["values"]["activate"] is False
        assert [(c["field"], c["old"], c["new"]) for c in resp.json()["changed"]] == [
            ("activate", True, False)]
        for _ in range(5):
            resp = predict(proxy, [SETOSA, VIRGINICA])
            assert resp.status_code == 200
            body = resp.json()
            assert body["disabled"] is True
            assert body["prediction"] == [None, None]
            assert body["labels"] == ["disabled", "disabled"]
            assert "activate=false" in body["message"]
            assert resp.headers["x-served-by"] == "proxy"  # nobody else was asked
        assert {name: hits(stack, name) for name in before} == before
        assert proxy.stats()["disabled"] >= 5
    resp = predict(proxy)  # switched back on: the model answers again
    assert (resp.status_code, resp.headers["x-served-by"]) == (200, "model_a")
    assert hits(stack, "model_a") == before["model_a"] + 1
    assert proxy_pid(stack) == pid


# -- (2) the active model -------------------------------------------------------------------------


def test_active_model_b_is_served_by_model_b(stack: Stack, proxy: Client) -> None:
    assert predict(proxy).headers["x-served-by"] == "model_a"
    a_before, b_before = hits(stack, "model_a"), hits(stack, "model_b")
    with changed(proxy, active_model="model_b"):
        for _ in range(3):
            resp = predict(proxy)
            assert resp.status_code == 200
            assert resp.headers["x-served-by"] == "model_b"
            body = resp.json()
            assert (body["backend"], body["model"], body["served_by"]) == (
                "model_b", "iris_rf", "model_b")
            assert body["labels"] == ["setosa"]
        assert (hits(stack, "model_a"), hits(stack, "model_b")) == (a_before, b_before + 3)
        assert proxy.get("/metadata").json()["config"]["values"]["active_model"] == "model_b"
    assert predict(proxy).headers["x-served-by"] == "model_a"


# -- (3) retries and the time budget (a private stack with injected faults) -----------------------


def test_retry_rides_over_failures_and_a_slow_model_times_out_at_the_budget(
    fresh_stack: Callable[..., Stack],
) -> None:
    delay_ms = 800
    stack = fresh_stack(env={
        "model_a": {"FAIL_MODE": "first_n:2"},  # its first 2 calls fail
        "model_b": {"FAIL_MODE": "first_n:2", "DELAY_MS": str(delay_ms)},
        "proxy": {"RETRY": "3"},
    })
    with Client(stack.url()) as proxy:
        # RETRY=3 (from the environment at start): 2 failures, then an answer
        assert values(proxy)["retry"] == 3
        resp = predict(proxy)
        assert resp.status_code == 200, resp.text
        assert (resp.json()["attempts"], resp.headers["x-attempts"]) == (3, "3")
        assert resp.json()["labels"] == ["setosa"]
        assert hits(stack, "model_a") == 3
        assert proxy.stats()["retries"]["model_a"] == 2

        # RETRY=1 on a model that fails its first 2 calls: both fail, then it answers
        assert put(proxy, active_model="model_b", retry=1).status_code == 200
        for call in (1, 2):
            resp = predict(proxy)
            assert resp.status_code == 502, resp.text
            body = resp.json()
            assert body["error"] == "backend_error"
            assert body["message"] == (
                f"model_b: answered 500: injected failure (first_n, call {call}) "
                "(attempt 1 of 1)")
            assert [d["attempt"] for d in body["details"]] == [1]
        resp = predict(proxy)
        assert (resp.status_code, resp.json()["attempts"]) == (200, 1)
        assert proxy.stats()["failed"] == {"model_a": 0, "model_b": 2}

        # a model slower than TIMEOUT_SECOND: the answer is a 504 at about the budget
        assert put(proxy, timeout_second=0.2, retry=3).status_code == 200
        resp, ms = proxy.timed("POST", "/predict", json={"data": [SETOSA]})
        assert resp.status_code == 504, resp.text
        body = resp.json()
        assert body["error"] == "backend_timeout"
        assert body["message"] == "model_b: no answer within 200 ms (attempt 1 of 3)"
        assert 200 <= ms < delay_ms, ms  # the time spent, no retry, and before the model
        assert put(proxy, timeout_second=2).status_code == 200
        resp = predict(proxy)
        assert (resp.status_code, resp.headers["x-served-by"]) == (200, "model_b")


# -- (4) the threshold and the allow-list ---------------------------------------------------------


def unknown_rows(body: dict[str, Any], threshold: float) -> list[int]:
    """Rows the answer calls unknown, checked against its own probabilities."""
    found = []
    for i, probs in enumerate(body["probabilities"]):
        below = max(probs) < threshold
        assert (body["labels"][i] == "unknown") == below, (i, probs, body["labels"])
        assert (body["prediction"][i] is None) == below
        assert body["unknown_reason"][i] == ("below_threshold" if below else None)
        if below:
            found.append(i)
    return found


def test_a_threshold_of_0_99_turns_borderline_rows_into_unknown(proxy: Client) -> None:
    body = predict(proxy, ROWS).json()
    assert body["threshold"] == 0.6  # THRESHOLDS from the environment
    assert body["labels"] == ["setosa", "versicolor", "unknown", "virginica"]
    assert unknown_rows(body, 0.6) == [2]
    before = proxy.stats()["unknown_rows"]["below_threshold"]
    with changed(proxy, thresholds={"model_a": 0.99}) as resp:
        # one key of the mapping changed; model_b's threshold stayed
        assert resp.json()["values"]["thresholds"] == {"model_a": 0.99, "model_b": 0.8}
        assert [c["field"] for c in resp.json()["changed"]] == ["thresholds.model_a"]
        body = predict(proxy, ROWS).json()
        assert body["threshold"] == 0.99
        unknown = unknown_rows(body, 0.99)
        assert set(unknown) > {2}  # the borderline rows (top probability 0.6-0.99) too
        assert body["labels"][1] == "unknown"  # versicolor at 0.78
        assert proxy.stats()["unknown_rows"]["below_threshold"] == before + len(unknown)
    assert predict(proxy, ROWS).json()["labels"][1] == "versicolor"


def test_the_allow_list_turns_other_labels_into_unknown(proxy: Client) -> None:
    with changed(proxy, allow_labels=["setosa", "virginica"]):
        body = predict(proxy, [SETOSA, VERSICOLOR, VIRGINICA]).json()
        assert body["labels"] == ["setosa", "unknown", "virginica"]
        assert body["unknown_reason"] == [None, "not_allowed", None]
        assert body["prediction"] == [0, None, 2]
    assert predict(proxy, [VERSICOLOR]).json()["labels"] == ["versicolor"]


# -- a bad value: refused by name, the old value kept ---------------------------------------------


BAD_CHANGES: list[tuple[object, str]] = [
    ({"retry": 0}, "retry: Input should be greater than or equal to 1 (got 0)"),
    ({"retry": "three"}, "retry: Input should be a valid integer"),
    ({"timeout_second": -1}, "timeout_second: Input should be greater than 0"),
    ({"active_model": "model_c"},
     "active_model: no backend named 'model_c'; backends: model_a, model_b"),
    ({"activate": "maybe"}, "activate: Input should be a valid boolean"),
    ({"thresholds": {"model_a": 1.5}}, "thresholds.model_a: Input should be less than or equal"),
    ({"thresholds": {"model_z": 0.5}}, "thresholds: no backend named model_z"),
    ({"allow_labels": ["rose"]}, "allow_labels: no model answers rose"),
    ({"retries": 3}, "retries: unknown field (fields: active_model, activate, retry"),
    ({"retry": 5, "timeout_second": 0}, "timeout_second: Input should be greater than 0"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CHANGES, ids=lambda v: str(v)[:40])
def test_a_bad_value_is_refused_by_name_and_the_old_one_kept(
    proxy: Client, change: object, message: str
) -> None:
    before = proxy.get("/config").json()
    resp = proxy.request("PUT", "/config", json=change)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "invalid_config"
    assert body["message"].startswith(message), body["message"]
    after = proxy.get("/config").json()
    assert (after["values"], after["version"]) == (before["values"], before["version"])
    assert after["rejected"] == before["rejected"] + 1
    assert after["last_rejected"]["message"] == body["message"]
    assert predict(proxy).status_code == 200


def test_a_body_that_is_not_an_object_of_fields_is_refused(proxy: Client) -> None:
    for content in ("[1, 2]", "{not json", '"retry"'):
        resp = proxy.request("PUT", "/config", content=content,
                             headers={"content-type": "application/json"})
        assert resp.status_code == 422, resp.text
        assert resp.json()["message"].startswith("body")


# -- every change logged, audited and on /metadata ------------------------------------------------


def test_every_change_is_logged_audited_and_on_metadata(stack: Stack, proxy: Client) -> None:
    total = proxy.get("/config/history").json()["total"]
    with changed(proxy, RETRY=2, timeout_second=1.5):  # names match the env vars' too
        meta = proxy.get("/metadata").json()["config"]
        assert (meta["values"]["retry"], meta["values"]["timeout_second"]) == (2, 1.5)
        version = meta["version"]
        assert predict(proxy).headers["x-config-version"] == str(version)
    history = proxy.get("/config/history").json()
    assert history["total"] == total + 4
    last = history["changes"][-4:]
    assert [(c["field"], c["old"], c["new"], c["source"]) for c in last] == [
        ("retry", 3, 2, "api"), ("timeout_second", 2.0, 1.5, "api"),
        ("retry", 2, 3, "api"), ("timeout_second", 1.5, 2.0, "api"),
    ]
    assert [c["version"] for c in last] == [version, version, version + 1, version + 1]
    assert all(c["at"] and c["request_id"] for c in last)
    only = proxy.get("/config/history", params={"field": "timeout_second", "limit": 2}).json()
    assert [c["new"] for c in only["changes"]] == [1.5, 2.0]
    wait_until(lambda: f"config change #{version} by api: retry 3 -> 2"
               in stack.log_tail("proxy", 400), timeout=5, what="the change's log line")
    metrics = proxy.get("/metrics").text
    assert 'config_changes_total{source="api"}' in metrics
    assert proxy.get("/config/history", params={"limit": 0}).status_code == 422


# -- the config file, watched ---------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_editing_the_config_file_changes_parameters_without_a_restart(
    stack: Stack, proxy: Client
) -> None:
    path = Path(stack.proc("proxy").env["CONFIG_FILE"])
    pid = proxy_pid(stack)
    original = values(proxy)
    try:
        write_atomically(path, yaml.safe_dump({"active_model": "model_b", "retry": 2}))
        wait_until(lambda: values(proxy)["active_model"] == "model_b", timeout=10,
                   what="the proxy picking up the file")
        assert predict(proxy).headers["x-served-by"] == "model_b"
        changes = proxy.get("/config/history").json()["changes"][-2:]
        assert [(c["field"], c["new"], c["source"]) for c in changes] == [
            ("active_model", "model_b", "file"), ("retry", 2, "file")]
        assert proxy.get("/config").json()["file"]["error"] is None

        # an API change to one field survives an edit of another field in the file
        assert put(proxy, activate=False).status_code == 200
        write_atomically(path, yaml.safe_dump({"active_model": "model_b", "retry": 1}))
        wait_until(lambda: values(proxy)["retry"] == 1, timeout=10, what="the second edit")
        assert values(proxy)["activate"] is False
        assert put(proxy, activate=True).status_code == 200

        # a bad file: refused by field, shown on /config, the old values kept
        version = proxy.get("/config").json()["version"]
        write_atomically(path, yaml.safe_dump({"active_model": "model_a", "retry": 0}))
        error = wait_until(lambda: proxy.get("/config").json()["file"]["error"], timeout=10,
                           what="the bad file being refused")
        assert error["message"].startswith(f"{path.name}: retry: Input should be greater")
        config = proxy.get("/config").json()
        assert (config["version"], config["values"]["active_model"]) == (version, "model_b")
        resp = proxy.post("/config/reload")
        assert resp.status_code == 422
        assert resp.json()["message"].startswith(f"{path.name}: retry:")
        write_atomically(path, "retry: [unclosed\n")
        wait_until(lambda: "cannot read it" in (
            proxy.get("/config").json()["file"]["error"] or {}).get("message", ""),
            timeout=10, what="the unparsable file being refused")
        assert values(proxy)["active_model"] == "model_b"

        # POST /config/reload applies every field the file holds, now
        write_atomically(path, yaml.safe_dump({"active_model": "model_b", "retry": 1}))
        assert put(proxy, retry=3).status_code == 200
        resp = proxy.post("/config/reload")
        assert resp.status_code == 200, resp.text
        assert resp.json()["values"]["retry"] == 1
    finally:
        write_atomically(path, yaml.safe_dump({k: original[k] for k in ("active_model",
                                                                        "retry")}))
        proxy.post("/config/reload")
        put(proxy, **original)
    assert values(proxy) == original
    assert proxy_pid(stack) == pid


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "text"), BAD_PREDICT_BODIES,
                         ids=[str(i) for i in range(len(BAD_PREDICT_BODIES))])
def test_bad_input_is_refused_by_the_proxy(
    stack: Stack, proxy: Client, body: object, status: int, text: str
) -> None:
    before = hits(stack, "model_a")
    resp = post_body(proxy, "/predict", body)
    assert resp.status_code == status, resp.text
    assert text in resp.json()["message"]
    assert resp.headers["x-served-by"] == "proxy"
    assert hits(stack, "model_a") == before
