"""L2 integration tests: the real loop (training job, gate, predictors that register with a TTL,
the proxy's canary guard, the drift monitor) over HTTP, on one shared stack.

The cycles are started by API (POST /cycles) where waiting on the monitor's windows would be
slow; one test goes from injected drift to a promotion through the monitor's webhook. Every
test that changes serving keeps traffic on the proxy and asserts no client saw an error.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from lifecycle_patterns.training_to_serving.scenario import alert_cycle, drifted_rows, sample_rows
from patternkit.client import Client, Traffic, wait_until
from patternkit.topology import Stack

BODY = {"data": sample_rows()}


def controller(stack: Stack) -> Client:
    return Client(stack.url("controller"))


def cycle_done(stack: Stack, cycle_id: int, timeout: float = 90.0) -> dict[str, Any]:
    with controller(stack) as c:
        def done() -> dict[str, Any] | None:
            found: dict[str, Any] = c.get(f"/cycles/{cycle_id}").json()
            return found if found["status"] != "running" else None
        return wait_until(done, timeout, 0.3, what=f"cycle {cycle_id} to end")


def start_cycle(stack: Stack, **body: Any) -> dict[str, Any]:
    with controller(stack) as c:
        resp = c.post("/cycles", json=body)
    assert resp.status_code == 202, resp.text
    return cycle_done(stack, resp.json()["id"])


def steps(cycle: dict[str, Any]) -> list[str]:
    return [e["step"] for e in cycle["timeline"]]


def services(entry: Client) -> dict[str, Any]:
    found: dict[str, Any] = entry.get("/services").json()
    return found


def stable(entry: Client) -> str:
    return str(entry.get("/rollout").json()["stable"])


def no_errors(traffic: Traffic) -> None:
    sent = traffic.sent()
    assert len(sent) > 20, "too little traffic to prove anything"
    assert traffic.failures() == [], traffic.failures()[:3]


def test_the_boot_version_serves_through_registered_predictors(stack: Stack,
                                                                 entry: Client) -> None:
    found = services(entry)
    version = stable(entry)
    assert len(found["versions"][version]) == 2
    resp = entry.post("/predict", json=BODY)
    assert resp.status_code == 200
    assert resp.headers["x-model-version"] == version
    from sklearn.datasets import load_iris

    right = sum(int(p == y) for p, y in zip(resp.json()["prediction"], load_iris().target[::2],
                                            strict=True))
    assert right >= 68  # of 75: the gate's bar is 0.9
    assert entry.post("/predict", json={"data": [[1.0, 2.0]]}).status_code == 422


def test_bad_requests_get_clear_errors_and_change_nothing(stack: Stack, entry: Client) -> None:
    before = entry.get("/rollout").json()
    resp = entry.put("/rollout", json={"canary": "9.9.9"})
    assert resp.status_code == 409 and "9.9.9" in resp.json()["message"]
    resp = entry.put("/rollout", json={"weight": 50})
    assert resp.status_code == 422 and "stable or a canary" in resp.json()["message"]
    resp = entry.put("/rollout", json={"canary": before["stable"]})
    assert resp.status_code == 409 and resp.json()["error"] == "already_stable"
    assert entry.get("/rollout").json()["phase"] == before["phase"]
    with controller(stack) as c:
        resp = c.post("/cycles", json={"seed": -1})
        assert resp.status_code == 422 and "seed" in resp.json()["message"]
        resp = c.post("/cycles", json={"canary_faults": {"fail_mode": "sometimes"}})
        assert resp.status_code == 422 and "fail_mode" in resp.json()["message"]
        assert c.get("/cycles/999").status_code == 404
        resp = c.post("/webhook", json={"alerts": [{"status": "firing",
                                                    "labels": {"rule": "traffic_low"}}]})
        assert resp.status_code == 202 and resp.json()["started"] is None  # not a trigger
        assert len(c.get("/cycles").json()["cycles"]) == 1  # only the boot cycle


def test_a_worse_candidate_is_rejected_at_the_gate_and_never_deployed(
        stack: Stack, entry: Client) -> None:
    before = stable(entry)
    with Traffic(entry.base_url + "/predict", BODY, senders=2) as traffic:
        cycle = start_cycle(stack, reason="test: a weak model", params={"C": 0.0005})
    assert cycle["status"] == "rejected", cycle
    assert steps(cycle) == ["triggered", "retrained", "gated"]
    failed = {c["check"] for c in cycle["gate"]["checks"] if not c["passed"]}
    assert "absolute_bar" in failed and "infra" in failed  # infra skipped: not even tried
    assert cycle["version"] not in services(entry)["versions"]
    with controller(stack) as c:
        started = {m["version"] for m in c.get("/deployments").json()["members"]}
    assert cycle["version"] not in started
    assert stable(entry) == before
    no_errors(traffic)


def test_a_candidate_that_errs_in_its_canary_is_rolled_back_with_no_client_error(
        stack: Stack, entry: Client) -> None:
    before = stable(entry)
    with Traffic(entry.base_url + "/predict", BODY, senders=3) as traffic:
        cycle = start_cycle(stack, reason="test: predictors that fail",
                            canary_faults={"fail_mode": "every:3"})
    assert cycle["status"] == "rolled_back", cycle
    assert steps(cycle) == ["triggered", "retrained", "gated", "deployed", "canary",
                            "rolled_back"]
    assert cycle["gate"]["blessed"] is True  # it passed offline and in the infra check
    assert cycle["timeline"][-1]["guardrails"]["error_rate"]["status"] == "fail"
    assert stable(entry) == before
    wait_until(lambda: cycle["version"] not in services(entry)["versions"], 5,
               what="the canary's predictors deregistered")  # stopped: keys deleted
    rollout = entry.get("/rollout").json()
    assert rollout["canary"] is None
    assert rollout["history"][-1]["event"] == "rolled_back"
    assert entry.stats()["retries"] > 0  # the canary's failures were retried elsewhere
    no_errors(traffic)


def test_a_better_candidate_is_promoted_and_the_old_version_retires_by_age(
        stack: Stack, entry: Client) -> None:
    before = stable(entry)
    with Traffic(entry.base_url + "/predict", BODY, senders=3) as traffic:
        cycle = start_cycle(stack, reason="test: a good model", params={"C": 10.0})
        assert cycle["status"] == "promoted", cycle
        assert steps(cycle) == ["triggered", "retrained", "gated", "deployed", "canary",
                                "promoted"]
        version = cycle["version"]
        assert stable(entry) == version
        wait_until(lambda: all(s.version == version for s in traffic.sent()[-10:]), 10,
                   what="replies from the promoted version")
        max_age = stack.topology.services["controller"].env["MAX_AGE_S"]
        with controller(stack) as c:
            def retired() -> list[dict[str, Any]] | None:
                found = [r for r in c.get("/deployments").json()["retired"]
                         if r["version"] == before]
                return found or None
            gone = wait_until(retired, float(max_age) + 10, 0.3, what=f"{before} retired")
        assert all(f"MAX_AGE_S {max_age}" in r["why"] for r in gone)
        wait_until(lambda: before not in services(entry)["versions"], 10,
                   what=f"{before} out of the members")
    assert version in services(entry)["versions"]  # the stable one never retires
    checks = [c["check"] for c in cycle["gate"]["checks"]]
    assert checks == ["absolute_bar", "vs_stable", "slices", "infra"]
    no_errors(traffic)


def test_a_killed_predictor_drops_out_after_the_ttl_with_no_client_error(
        stack: Stack, entry: Client) -> None:
    version = stable(entry)
    victim = services(entry)["services"][0]
    assert victim["version"] == version
    ttl = float(victim["ttl_s"])
    with Traffic(entry.base_url + "/predict", BODY, senders=3) as traffic:
        wait_until(lambda: len(traffic.sent()) > 20, 10, what="traffic")
        killed = time.monotonic()
        os.kill(int(victim["pid"]), signal.SIGKILL)
        wait_until(lambda: victim["id"] not in {s["id"] for s in services(entry)["services"]},
                   ttl + 6, 0.1, what=f"{victim['id']} out of the registry")
        took = time.monotonic() - killed
        after = len(traffic.sent())
        wait_until(lambda: len(traffic.sent()) > after + 20, 10, what="traffic after")
    assert took <= ttl + 4  # TTL plus one refresh of the proxy, and slack
    assert took >= ttl / 3  # not removed by a deregistration: the key expired
    assert services(entry)["versions"][version]  # the other replica serves
    no_errors(traffic)


def test_injected_drift_closes_the_loop_to_a_promotion_with_no_client_error(
        stack: Stack, entry: Client) -> None:
    """End to end: drifted inputs -> the monitor's feature_drift alert -> the webhook ->
    retrained -> gated -> deployed -> canary -> promoted, with traffic all along."""
    before = stable(entry)
    with controller(stack) as c:
        earlier = c.get("/cycles").json()["cycles"]
        assert all(e["timeline"][0]["step"] != "drift_detected" for e in earlier)  # no false
        last = earlier[-1]["id"]                                 # alarm from normal traffic
        with Traffic(entry.base_url + "/predict", {"data": drifted_rows()}, senders=3) as traffic:
            started = alert_cycle(c, last, timeout=40)
            cycle = cycle_done(stack, started["id"])
    assert cycle["status"] == "promoted", cycle
    assert steps(cycle) == ["drift_detected", "retrained", "gated", "deployed", "canary",
                            "promoted"]
    assert "petal_length" in cycle["timeline"][0]["detail"]
    times = [e["at"] for e in cycle["timeline"]]
    assert times == sorted(times)
    assert stable(entry) == cycle["version"] != before
    with Client(stack.url("monitor")) as monitor:
        firing = monitor.get("/alerts/active").json()["alerts"]
    assert any(a["rule"] == "feature_drift" for a in firing), firing
    no_errors(traffic)


def test_the_demo_draws_the_versions_over_time(tmp_path: Path) -> None:
    from lifecycle_patterns.training_to_serving.scenario import draw
    from patternkit.client import Sent
    from patternkit.testing import check_picture

    sent = [Sent(0, t / 10, t / 10 + 0.01, 200, "1.0.0" if t < 50 or t % 3 else "1.0.1",
                 None) for t in range(100)]
    cycles = [{"version": "1.0.1", "timeline": [
        {"step": "drift_detected", "at": 1.0}, {"step": "canary", "at": 5.0},
        {"step": "promoted", "at": 8.0}]}]
    path = draw(sent, cycles, 0.0, tmp_path / "t.png")
    assert path is not None
    check_picture(path)
