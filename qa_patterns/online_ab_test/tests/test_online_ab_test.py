"""Q2 integration tests: the real A/B proxy in front of two real predictors, over HTTP.

Each test starts its own phase (`PUT /config`), so the tests share one stack without sharing
data. The split is checked against `patternkit.experiment.assign` user by user (the 2,000-
and 5,000-user shares are proven on that function in test_statistics.py); each test stays at
a few hundred requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.experiment import assign
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack
from patternkit.usersim import drive, visit
from qa_patterns.online_ab_test import simulator
from qa_patterns.online_ab_test.scenario import logged, until_rolled_back

ROW = IRIS_ROWS[0][0]


def phase(proxy: Client, weight_b: float, **extra: Any) -> dict[str, Any]:
    resp = proxy.put("/config", json={"weight_b": weight_b, **extra})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def predict_as(proxy: Client, user: str, body: object) -> httpx.Response:
    """POST a body (JSON, or a str sent as is) to /predict as `user`."""
    headers = {"x-user-id": user, "content-type": "application/json"}
    if isinstance(body, str):
        return proxy.post("/predict", content=body, headers=headers)
    return proxy.post("/predict", json=body, headers=headers)


def hits(stack: Stack, name: str) -> int:
    with Client(stack.url(name)) as predictor:
        return int(predictor.stats()["hits"])


def test_a_user_always_lands_on_the_same_variant(entry: Client) -> None:
    config = phase(entry, 50)
    for user in simulator.users(20, start=10_000):
        seen = {visit(entry, user).variant for _ in range(3)}
        assert seen == {assign(user.id, 0.5, config["seed"])}, user.id
    missing = entry.post("/predict", json={"data": [ROW]})
    assert missing.status_code == 422
    assert "X-User-ID" in missing.json()["message"]


def test_the_split_follows_the_weights_and_weight_0_sends_none_to_b(
    stack: Stack, entry: Client
) -> None:
    users = simulator.users(120, start=20_000)
    for weight in (10, 50):
        config = phase(entry, weight)
        visits = drive(stack.url(), users, simulator.converts)
        assert all(v.ok and v.phase == config["phase"] for v in visits)
        expected = [assign(u.id, weight / 100, config["seed"]) for u in users]
        assert [v.variant for v in visits] == expected  # the proxy's split is assign's
        assert {v.body["served_by"] for v in visits} == {"a", "b"}
        assert all(v.body["served_by"] == v.variant for v in visits)
    b_before = hits(stack, "b")
    config = phase(entry, 0)  # the rollback
    visits = drive(stack.url(), users[:60], simulator.converts)
    assert {v.variant for v in visits} == {"a"}
    assert hits(stack, "b") == b_before
    assert (config["weight_b"], config["reason"]) == (0.0, "PUT /config")


def test_the_report_joins_events_to_variants_by_request_id(entry: Client, stack: Stack) -> None:
    config = phase(entry, 50)
    users = simulator.users(150, start=30_000)
    visits = drive(stack.url(), users, lambda u, v: False)
    chosen = visits[::3]  # a conversion for every third request id
    for v in chosen:
        assert entry.post("/events", json={"request_id": v.request_id}).status_code == 201
    # the log writes predictions in batches: an event whose prediction is not written yet
    # counts as unmatched, so the baseline is read once every exposure is in the log
    before = logged(entry, visits, config["phase"])["events"]
    stray = entry.post("/events", json={"request_id": "no-such-request", "value": 9.5})
    assert stray.status_code == 201 and stray.json()["stored"] is True
    other = entry.post("/events", json={"request_id": chosen[0].request_id, "kind": "click"})
    assert other.status_code == 201  # another kind is stored, not counted as a conversion
    found = logged(entry, visits, config["phase"])
    for variant in ("a", "b"):
        mine = [v for v in visits if v.variant == variant]
        row = found["variants"][variant]
        assert row["units"] == row["requests"] == len(mine)
        assert row["conversions"] == sum(v in chosen for v in mine)
        assert row["rate"] == pytest.approx(row["conversions"] / len(mine))
        assert row["errors"] == 0 and row["latency_ms"]["p50"] > 0
    events = found["events"]
    assert events["events"] - before["events"] == 1  # the stray conversion; click not counted
    assert events["unmatched"] - before["unmatched"] == 1  # it joins no prediction
    assert found["experiment"]["phase"] == config["phase"]


def test_the_report_has_srm_the_always_valid_test_power_and_guardrails(
    entry: Client, stack: Stack
) -> None:
    config = phase(entry, 30)
    visits = drive(stack.url(), simulator.users(300, start=40_000), simulator.converts)
    found = logged(entry, visits, config["phase"])
    srm = found["srm"]
    assert srm["expected_share"] == {"a": 0.7, "b": 0.3} and srm["threshold"] == 0.001
    assert srm["flagged"] is (srm["p_value"] < 0.001)
    effect = found["effect"]
    low, high = effect["ci"]
    assert low < effect["diff"] < high and 0 <= effect["p_value"] <= 1
    assert "mSPRT" in effect["method"] and effect["fixed_horizon_p"] <= 1
    assert found["power"]["mde_sequential"] > found["power"]["mde_fixed_horizon"] > 0
    assert set(found["guardrails"]) == {"error_rate", "latency_p99", "kpi"}
    decision = entry.get("/ab/decision").json()
    assert decision["decision"] == found["decision"]["decision"] == "keep-running"
    assert decision["phase"] == config["phase"]
    assert entry.get("/ab/report", params={"phase": 9999}).status_code == 404
    phases = entry.get("/ab/phases").json()
    assert phases["current"] == config["phase"] and len(phases["phases"]) >= config["phase"]


def test_bad_input_is_refused_by_name_and_is_no_exposure(entry: Client) -> None:
    config = phase(entry, 50)
    before = entry.stats()["rejected"]
    for body, status, names in BAD_PREDICT_BODIES:
        resp = predict_as(entry, "user-bad", body)
        assert resp.status_code == status, resp.text
        assert names in resp.json()["message"]
        assert resp.headers["x-ab-variant"] in ("a", "b")
    assert entry.stats()["rejected"] - before == len(BAD_PREDICT_BODIES)
    found = entry.get("/ab/report", params={"phase": config["phase"]}).json()
    assert found["variants"]["a"]["requests"] + found["variants"]["b"]["requests"] == 0
    for bad, field in [({"weight_b": 150}, "weight_b"), ({"weight_b": 10, "mode": "x"}, "mode"),
                       ({}, "weight_b")]:
        resp = entry.put("/config", json=bad)
        assert resp.status_code == 422 and field in resp.json()["message"], resp.text
    for bad, field in [({}, "request_id"), ({"request_id": "r", "kind": "Buy!"}, "kind"),
                       ({"request_id": "r", "extra": 1}, "extra")]:
        resp = entry.post("/events", json=bad)
        assert resp.status_code == 422 and field in resp.json()["message"], resp.text
    assert post_body(entry, "/events", "{not json").status_code == 422


def test_the_guard_rolls_back_a_b_with_twice_the_error_rate(
    fresh_stack: Callable[..., Stack],
) -> None:
    """A errs on every 4th call (25%), B on every 2nd (50%): the guard's checks find B's
    error rate beyond A's + 2 points (on the always-valid interval) and, at the third failed
    check, send every user to A."""
    stack = fresh_stack(env={"a": {"FAIL_MODE": "every:4"}, "b": {"FAIL_MODE": "every:2"},
                             "proxy": {"GUARD_INTERVAL_S": "0.5"}})
    with Client(stack.url()) as entry:
        config = phase(entry, 50)
        visits = until_rolled_back(
            stack.url(), entry, lambda n, i: simulator.users(n, start=50_000 + i),
            simulator.converts, batch=40, most=1500)
        after = entry.get("/config").json()
        assert after["weight_b"] == 0 and after["phase"] == config["phase"] + 1
        assert after["reason"].startswith(f"guard: rolled back phase {config['phase']}: ")
        assert "B errs" in after["reason"]
        guard = entry.get("/ab/guard").json()
        assert guard["last_rollback"]["phase"] == config["phase"]
        assert "3 failed checks" in guard["last_rollback"]["reason"]
        failed = [c for c in guard["history"] if c["outcome"] == "failed"]
        assert len(failed) == 3 and all("error_rate" in c["failed"] for c in failed)
        mine = [v for v in visits if v.phase == config["phase"]]
        errors = {x: [v.status != 200 for v in mine if v.variant == x] for x in ("a", "b")}
        assert sum(errors["b"]) / len(errors["b"]) > 1.5 * sum(errors["a"]) / len(errors["a"])
        later = drive(stack.url(), simulator.users(40, start=60_000), simulator.converts)
        assert {v.variant for v in later} == {"a"}
        decision = wait_until(lambda: (d := entry.get(
            "/ab/decision", params={"phase": config["phase"]}).json())["decision"] == "no-ship"
            and d, timeout=10, what="the decision")
        assert "the guard rolled B back" in decision["reasons"][0]
        assert decision["guardrails"]["error_rate"] == "fail"
        assert entry.stats()["rollbacks"] >= 1
