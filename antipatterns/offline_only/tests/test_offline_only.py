"""QA1 integration tests: the offline winner loses online, and Q2's report and guard catch it.

One stack: the trainer's offline report, then seeded users through the real A/B proxy and the
two real predictors. Deterministic up to when the guard's checks fall: the guard judges only
from 150 requests per variant (GUARD_MIN_REQUESTS), where the seeded users already put B's
always-valid interval below A's (B answers class 0 to everyone: about 20% conversions against
A's 45%; at 150 users a variant the interval's half-width is about 20 points).
"""

from __future__ import annotations

import json

from antipatterns.offline_only import simulator
from antipatterns.offline_only.scenario import online_test
from patternkit.client import Client
from patternkit.topology import Stack
from patternkit.usersim import drive
from qa_patterns.online_ab_test.scenario import logged


def test_the_offline_report_ranks_b_above_a(stack: Stack, entry: Client) -> None:
    offline = json.loads((stack.run_dir / "models" / "offline_report.json").read_text())
    models = offline["models"]
    assert offline["ranking"] == ["b", "a"]
    assert models["b"]["accuracy"] == 1.0 > models["a"]["accuracy"] > 0.85
    assert models["b"]["accuracy_as_served"] < 0.5  # the leak is not there at request time
    shown = entry.get("/ab/report").json()["rankings"]["offline"]
    assert [(r["rank"], r["variant"], r["accuracy"]) for r in shown] == [
        (1, "b", 1.0), (2, "a", models["a"]["accuracy"])]


def test_online_b_loses_beyond_noise_and_the_guard_sends_everyone_to_a(
    stack: Stack, entry: Client
) -> None:
    phase, visits = online_test(stack.url(), entry)
    found = logged(entry, visits, phase)
    a, b = found["variants"]["a"], found["variants"]["b"]
    assert min(a["units"], b["units"]) >= 150
    assert b["rate"] < a["rate"]
    high = found["effect"]["ci"][1]
    assert high < 0 and found["effect"]["significant"]  # below A's beyond noise
    assert found["guardrails"]["kpi"]["status"] == "fail"
    rankings = found["rankings"]
    assert [r["variant"] for r in rankings["online"]] == ["a", "b"]
    assert [r["variant"] for r in rankings["offline"]] == ["b", "a"]
    assert rankings["agree"] is False and rankings["online_beyond_noise"] is True

    decision = entry.get("/ab/decision", params={"phase": phase}).json()
    assert decision["decision"] == "no-ship"
    assert "the guard rolled B back" in decision["reasons"][0]
    assert "B converts" in decision["reasons"][0]
    config = entry.get("/config").json()
    assert config["weight_b"] == 0 and config["reason"].startswith(
        f"guard: rolled back phase {phase}: ")
    guard = entry.get("/ab/guard").json()
    failed = [c for c in guard["history"] if c["outcome"] == "failed"]
    assert len(failed) == 3 and all("kpi" in c["failed"] for c in failed)
    later = drive(stack.url(), simulator.users(30, start=20_000), simulator.converts)
    assert {v.variant for v in later} == {"a"}  # 100% to A
    assert all(v.ok for v in later)


def test_the_docs_example_is_a_row_the_models_take(stack: Stack, entry: Client) -> None:
    """The proxy passes rows on: DOCS_EXAMPLE_WIDTH makes its "Try it out" body 5 values
    wide; a variant's own docs follow the model it loaded."""
    from patternkit.service.docs import request_example

    example = request_example(entry.get("/openapi.json").json(), "/predict")
    assert example == {"data": [[5.1, 3.5, 1.4, 0.2, 0.0]]}
    reply = entry.post("/predict", json=example, headers={"x-user-id": "docs-user"})
    assert reply.status_code == 200, reply.text
    with Client(stack.url("a")) as a:
        assert request_example(a.get("/openapi.json").json(), "/predict") == example
