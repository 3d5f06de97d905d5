"""O5 integration tests: a logging proxy, the monitor over its log, the alert sink; each rule
fired by seeded traffic through the proxy and windows replayed with `POST /evaluate`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from operation_patterns.prediction_monitoring import scenario
from operation_patterns.prediction_monitoring.simulator import Traffic, burst, send
from patternkit.client import Client, wait_until
from patternkit.testing import bad_predict_bodies, check_picture, post_body
from patternkit.topology import Stack

BOOT = datetime.now(UTC)  # taken at collection, before the stack boots: nothing is logged before
DRIFTED = 3  # x3: the model barely uses it, so drifting it leaves the class mix alone
_runs = itertools.count(1)
Spec = dict[str, Any]


@pytest.fixture
def proxy(entry: Client) -> Client:
    return entry


@pytest.fixture
def monitor(stack: Stack) -> Iterator[Client]:
    with Client(stack.url("monitor")) as client:
        yield client


@pytest.fixture
def sink(stack: Stack) -> Iterator[Client]:
    with Client(stack.url("alert_sink")) as client:
        yield client


def phases(proxy: Client, specs: Sequence[Spec], seed: int, requests: int = 10,
           rows: int = 100) -> tuple[list[tuple[datetime, datetime]], list[list[str]]]:
    """Send each phase's batches (10 requests/s), one window per phase, from the marks taken
    between phases; every row is in the log before this returns."""
    traffic, run = Traffic(seed), next(_runs)
    marks, rids = [datetime.now(UTC)], []
    for k, spec in enumerate(specs):
        rids.append(send(proxy, [traffic.batch(rows, **spec) for _ in range(requests)],
                         f"o5-{run}-{k}"))
        marks.append(datetime.now(UTC))
    flushed(proxy, rids[-1][-1])
    return list(itertools.pairwise(marks)), rids


def flushed(proxy: Client, rid: str) -> None:
    """`GET /logs` flushes the proxy's buffer first: the last request's row is then stored."""
    body = proxy.get("/logs", params={"request_id": rid}).json()
    assert body["count"] == 1 and body["rows"][0]["request_id"] == rid, body


def evaluate(monitor: Client, windows: Sequence[tuple[datetime, datetime]]) -> dict[str, Any]:
    resp = monitor.post("/evaluate", json={"windows": [
        {"start": a.isoformat(), "end": b.isoformat()} for a, b in windows]})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def subjects(findings: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(f["rule"], f.get("feature") or f.get("class") or f.get("payload"))
            for f in findings]


def sunk(sink: Client, source: str, count: int) -> list[dict[str, Any]]:
    """The alerts the sink received from one evaluation (posted before /evaluate answered)."""
    body = sink.get("/alerts", params={"source": source}).json()
    assert body["count"] == count, body
    alerts: list[dict[str, Any]] = body["alerts"]
    return alerts


def test_the_live_loop_fires_traffic_low_on_silence_and_posts_it(
    stack: Stack, monitor: Client, sink: Client
) -> None:
    window_s = float(stack.proc("monitor").env["WINDOW_S"])

    def fired() -> dict[str, Any] | None:
        found = sink.get("/alerts", params={"source": "live", "rule": "traffic_low",
                                            "status": "firing"}).json()["alerts"]
        return found[0] if found else None

    # for = 2 windows of silence, evaluated every MONITOR_INTERVAL_S
    alert = wait_until(fired, timeout=6 * window_s + 10, interval=0.5,
                       what="the live traffic_low alert")
    assert alert["value"] == 0.0 and alert["threshold"] == 2.0
    assert alert["window"]["seconds"] == window_s and alert["windows_held"] == 2
    live = monitor.get("/windows").json()
    assert live["count"] >= 2 and all(w["window"]["seconds"] == window_s
                                      for w in live["windows"])
    assert monitor.stats()["evaluations"]["live"] >= 2
    metrics = monitor.get("/metrics").text
    assert 'monitor_alerts_total{rule="traffic_low",status="firing"} 1.0' in metrics
    firing = next(line for line in metrics.splitlines()
                  if line.startswith("monitor_alerts_firing "))
    assert float(firing.split()[1]) >= 1  # still silent: still firing


def test_balanced_traffic_fires_nothing_and_one_drifted_feature_fires_only_its_alert(
    proxy: Client, monitor: Client, sink: Client
) -> None:
    B, D = {}, {"shift": {DRIFTED: 1.0}}  # drift: x3 moved by one training sd
    windows, rids = phases(proxy, [B, B, B, D, B, D, D], seed=1)
    body = evaluate(monitor, windows)
    reports = body["windows"]
    for w in reports:
        assert w["requests"] == 10 and w["rows"] == 1000 and w["unreadable"] == 0
        for feature, drift in w["drift"].items():
            if feature != f"x{DRIFTED}":  # null PSI ~ 9 * (1/1000 + 1/1400) = 0.015
                assert drift["psi"] < 0.1 and drift["level"] == "ok", (feature, drift)
        print(f"window {w['window']['seconds']:.2f} s: {w['requests']} requests, "
              f"PSI x3 {w['drift']['x3']['psi']}, KS p {w['drift']['x3']['ks_p']}, "
              f"findings {subjects(w['findings'])}")
    # three balanced windows: no finding, no alert
    assert [w["findings"] for w in reports[:3]] == [[], [], []]
    drifted = [("feature_drift", "x3")]
    # one drifted window: pending, not firing (for = 2)
    assert subjects(reports[3]["findings"]) == drifted and reports[3]["alerts"] == []
    assert [(s["key"], s["state"]) for s in reports[3]["states"]] == [
        ("feature_drift:x3", "pending")]
    # a clean window after it: the pending alert is dropped without a notification
    assert reports[4]["findings"] == [] and reports[4]["states"] == []
    assert reports[4]["alerts"] == []
    # two drifted windows in a row: fires in the second, nothing else does
    assert subjects(reports[5]["findings"]) == drifted and reports[5]["alerts"] == []
    assert subjects(reports[6]["findings"]) == drifted
    assert reports[6]["alerts"] == [{"status": "firing", "rule": "feature_drift"}]
    (alert,) = body["alerts"]
    assert alert["rule"] == "feature_drift" and alert["feature"] == "x3"
    assert alert["value"] >= alert["threshold"] == 0.25
    assert alert["details"]["ks_p"] < alert["details"]["ks_alpha"] == 0.01
    assert alert["window"] == reports[6]["window"]
    assert alert["since_window"] == reports[5]["window"]
    assert alert["first_request_id"] == rids[5][0]  # where the firing run of windows began
    assert alert["labels"] == {"alertname": "feature_drift", "rule": "feature_drift",
                               "severity": "critical", "source": body["evaluation"],
                               "feature": "x3"}
    (received,) = sunk(sink, body["evaluation"], 1)
    assert {k: received[k] for k in ("rule", "feature", "value", "threshold", "window")} == {
        k: alert[k] for k in ("rule", "feature", "value", "threshold", "window")}


def test_a_flood_of_one_class_fires_class_ratio_above_the_cap(
    proxy: Client, monitor: Client, sink: Client
) -> None:
    windows, _ = phases(proxy, [{"only_class": 2}, {"only_class": 2}], seed=2)
    body = evaluate(monitor, windows)
    first, second = body["windows"]
    assert first["alerts"] == [] and first["class_shares"]["class_2"] > 0.4
    fired = {(a["rule"], a.get("class") or a.get("feature")): a for a in body["alerts"]}
    alert = fired[("class_ratio", "class_2")]
    assert alert["value"] == second["class_shares"]["class_2"] > alert["threshold"] == 0.4
    assert alert["window"] == second["window"] and alert["status"] == "firing"
    # the other classes are nearly gone (under 10%): the expected-class rule fires for each
    assert {("class_missing", "class_0"), ("class_missing", "class_1")} <= set(fired)
    print(f"class shares {second['class_shares']}: fired {sorted(fired)}")
    assert len(sunk(sink, body["evaluation"], len(body["alerts"]))) == len(body["alerts"])


def test_the_same_payload_twenty_times_fires_repeated_input(
    proxy: Client, monitor: Client, sink: Client
) -> None:
    payload = Traffic(3).batch(5)
    start = datetime.now(UTC)
    rids = send(proxy, [payload] * 20, f"repeat-{next(_runs)}", rps=20)
    end = datetime.now(UTC)
    flushed(proxy, rids[-1])
    body = evaluate(monitor, [(start, end)])
    (alert,) = body["alerts"]
    assert (alert["rule"], alert["value"], alert["threshold"]) == ("repeated_input", 20, 10)
    assert alert["window"] == body["windows"][0]["window"] and alert["payload"]
    assert body["windows"][0]["requests"] == 20
    sunk(sink, body["evaluation"], 1)


def test_a_burst_fires_traffic_high_and_silence_traffic_low(
    proxy: Client, monitor: Client, sink: Client
) -> None:
    prefix = f"burst-{next(_runs)}"
    start = datetime.now(UTC)
    statuses = burst(proxy, Traffic(4).batch(300), prefix)
    end = datetime.now(UTC)
    assert statuses == [200] * 300
    flushed(proxy, f"{prefix}-299")
    body = evaluate(monitor, [(start, end)])
    (alert,) = body["alerts"]
    rps = 300 / (end - start).total_seconds()
    print(f"burst: 300 requests in {(end - start).total_seconds():.2f} s = {rps:.0f}/s")
    assert alert["rule"] == "traffic_high" and alert["threshold"] == 50
    assert alert["value"] == pytest.approx(rps, rel=0.01) and alert["value"] > 50
    assert alert["details"]["requests"] == 300
    sunk(sink, body["evaluation"], 1)

    # silence for two whole windows (before the stack started, nothing was logged)
    quiet = [(BOOT - timedelta(seconds=20), BOOT - timedelta(seconds=10)),
             (BOOT - timedelta(seconds=10), BOOT)]
    body = evaluate(monitor, quiet)
    assert [w["requests"] for w in body["windows"]] == [0, 0]
    assert body["windows"][0]["alerts"] == []  # for = 2: pending after one
    (alert,) = body["alerts"]
    assert (alert["rule"], alert["value"], alert["threshold"]) == ("traffic_low", 0.0, 2.0)
    assert alert["window"]["seconds"] == 10.0
    assert alert["since_window"]["start"] == quiet[0][0].isoformat()
    sunk(sink, body["evaluation"], 1)


def test_bad_requests_are_refused_with_the_field_named(
    proxy: Client, monitor: Client, sink: Client
) -> None:
    now = datetime.now(UTC)
    earlier = (now - timedelta(seconds=10)).isoformat()
    cases: list[tuple[Any, str]] = [
        ({"windows": [{"start": now.isoformat(), "end": earlier}]}, "end must be after start"),
        ({"windows": []}, "windows"),
        ({"windows": [{"start": earlier, "end": (now + timedelta(hours=1)).isoformat()}]},
         "in the future"),
        ({"windows": [{"start": earlier, "end": now.isoformat()},
                      {"start": earlier, "end": now.isoformat()}]}, "windows.1 starts before"),
        ({"windows": [{"start": "yesterday", "end": earlier}]}, "start"),
    ]
    for body, named in cases:
        resp = monitor.post("/evaluate", json=body)
        assert resp.status_code == 422 and named in resp.json()["message"], resp.text
    resp = monitor.post("/evaluate")
    assert resp.status_code == 422 and "start and end" in resp.json()["message"]
    for body, status, named in bad_predict_bodies(8):
        resp = post_body(proxy, "/predict", body)
        assert resp.status_code == status and named in resp.json()["message"], resp.text
    resp = sink.post("/webhook", json={"alerts": [{"status": "burning", "labels": {}}]})
    assert resp.status_code == 422 and "status" in resp.json()["message"]
    resp = proxy.get("/logs", params={"since": "last week"})
    assert resp.status_code == 422 and "since" in resp.json()["message"]


def test_one_window_can_be_given_in_the_query(monitor: Client) -> None:
    start, end = BOOT - timedelta(seconds=60), BOOT - timedelta(seconds=50)
    resp = monitor.post("/evaluate", params={"start": start.isoformat(),
                                             "end": end.isoformat()})
    assert resp.status_code == 200, resp.text
    (w,) = resp.json()["windows"]
    assert w["window"] == {"start": start.isoformat(), "end": end.isoformat(), "seconds": 10.0}
    assert [s["key"] for s in w["states"]] == ["traffic_low"]  # pending after one window


def test_alerts_posted_while_the_sink_is_down_are_sent_once_it_is_back(
    stack: Stack, monitor: Client, sink: Client
) -> None:
    quiet = [(BOOT - timedelta(seconds=40), BOOT - timedelta(seconds=30)),
             (BOOT - timedelta(seconds=30), BOOT - timedelta(seconds=20))]
    stack.stop_service("alert_sink")
    try:
        body = evaluate(monitor, quiet)
        assert body["posted"] is False and len(body["alerts"]) == 1
        posts = monitor.get("/alerts/active").json()["posts"]
        assert posts["pending"] >= 1 and posts["failures"] >= 1 and posts["dropped"] == 0
    finally:
        stack.start_service("alert_sink")
    interval = float(stack.proc("monitor").env["MONITOR_INTERVAL_S"])

    def delivered() -> bool:  # the live loop's next post sends what was kept
        return bool(sink.get("/alerts", params={"source": body["evaluation"]}).json()["count"])

    wait_until(delivered, timeout=3 * interval + 10, interval=0.5,
               what="the kept alert delivered")
    (alert,) = sunk(sink, body["evaluation"], 1)
    assert alert["rule"] == "traffic_low" and alert["fingerprint"] == body["alerts"][0][
        "fingerprint"]
    assert monitor.get("/alerts/active").json()["posts"]["pending"] == 0


def test_the_rules_and_thresholds_are_shown(monitor: Client) -> None:
    body = monitor.get("/rules").json()
    drift = body["rules"]["feature_drift"]
    assert (drift["bins"], drift["psi_warn"], drift["psi_alert"], drift["ks_alpha"]) == (
        10, 0.1, 0.25, 0.01)
    assert body["rules"]["class_ratio"]["max_share"] == 0.4
    assert body["reference"]["n_train"] == 1400 and len(body["reference"]["features"]) == 8


def test_the_demo_draws_the_drift_chart(stack: Stack, tmp_path: Path) -> None:
    rows = scenario.run(stack, out=tmp_path)
    assert any("feature_drift" in r["observed"] for r in rows)
    check_picture(tmp_path / scenario.PICTURE)
