"""The report's rules on hand-made log rows: the noise floor, Diffy's field rule, the joins."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from qa_patterns.shadow_ab_test.report import Rules, build_report, field_verdict

_ids = itertools.count(1)


def row(rid: str, service: str, probs: list[list[float]] | None, **extra: Any) -> dict[str, Any]:
    """A prediction-log row as `read_predictions` returns it (None probs: a failed call)."""
    output = None if probs is None else {
        "prediction": [max(range(len(p)), key=p.__getitem__) for p in probs],
        "probabilities": probs,
    }
    return {"id": next(_ids), "request_id": rid, "service": service, "output": output,
            "latency_ms": 500.0 if service == "b" else 5.0,
            "extra": {"shadow": "mirrored", **extra} if service == "a" else extra}


def request(rid: str, a: list[float], a_prime: list[float] | None, b: list[float] | None,
            **b_extra: Any) -> list[dict[str, Any]]:
    rows = [row(rid, "a", [a])]
    if a_prime is not None:
        rows.append(row(rid, "a_prime", [a_prime]))
    if b is not None or b_extra:
        rows.append(row(rid, "b", [b] if b is not None else None, **b_extra))
    return rows


def test_diffy_flags_a_field_only_when_raw_beats_noise_by_both_thresholds() -> None:
    rules = Rules()  # Diffy's defaults: 20% relative, 0.03% absolute
    assert field_verdict(10, 0, 100, rules)["flagged"]
    close = field_verdict(10, 9, 100, rules)  # |10 - 9| / 19 = 5.3%: within the noise
    assert (close["relative_pct"], close["flagged"]) == (5.26, False)
    assert not field_verdict(0, 5, 100, rules)["flagged"]  # B differs less than A' does
    rare = field_verdict(1, 0, 10_000, rules)  # 0.01% of the requests: below 0.03%
    assert (rare["absolute_pct"], rare["flagged"]) == (0.01, False)
    assert field_verdict(0, 0, 0, rules) == {"raw": 0, "noise": 0, "relative_pct": 0.0,
                                             "absolute_pct": 0.0, "flagged": False}


def test_only_differences_above_the_a_prime_floor_are_flagged() -> None:
    rows = [
        # A' moves by up to 0.05: the floor (max, with noise_quantile 1.0)
        *request("r1", [0.90, 0.10, 0.0], [0.85, 0.15, 0.0], [0.88, 0.12, 0.0]),  # 0.02
        *request("r2", [0.60, 0.40, 0.0], [0.58, 0.42, 0.0], [0.30, 0.70, 0.0]),  # 0.30
        *request("r3", [0.20, 0.80, 0.0], [0.22, 0.78, 0.0], [0.16, 0.84, 0.0]),  # 0.04
    ]
    report = build_report(rows, Rules(noise_quantile=1.0), noise=True)
    probs, labels = report["probabilities"], report["labels"]
    assert probs["noise_floor"] == pytest.approx(0.05)
    assert report["flagged_rows"] == probs["raw"] == 1
    assert [f["request_id"] for f in report["flagged"]] == ["r2"]
    assert report["flagged"][0]["label_a"] == 0 and report["flagged"][0]["label_b"] == 1
    assert probs["noise"] == 0  # nothing is above the max of itself
    assert (labels["raw"], labels["noise"]) == (1, 0)
    assert labels["agreement_a_b"] == pytest.approx(2 / 3, abs=1e-4)
    assert labels["agreement_a_a_prime"] == 1.0
    assert probs["diff_a_b"]["max"] == pytest.approx(0.30)
    assert report["verdict"] == ("B differs from A beyond A's retrain noise in: labels, "
                                 "probabilities")


def test_without_a_prime_every_difference_counts() -> None:
    rows = [*request("r1", [0.9, 0.1], None, [0.899, 0.101]),
            *request("r2", [0.9, 0.1], None, [0.9, 0.1])]
    report = build_report(rows, Rules(), noise=False)
    probs = report["probabilities"]
    assert probs["noise_floor"] == 0.0 and "A_PRIME_URL" in probs["noise_floor_is"]
    assert probs["diff_a_a_prime"] is None and report["labels"]["agreement_a_a_prime"] is None
    assert report["flagged_rows"] == 1
    assert report["verdict"] == "B differs from A in: probabilities"
    assert "a_prime" not in report["errors"] and "a_prime" not in report["latency"]


def test_failures_count_as_errors_and_unanswered_mirrors_as_pending() -> None:
    rows = [
        *request("ok", [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]),
        *request("slow", [0.9, 0.1], [0.9, 0.1], None, error="backend_timeout"),
        *request("down", [0.9, 0.1], [0.9, 0.1], None, error="backend_unavailable"),
        *request("waiting", [0.9, 0.1], None, None),  # mirrored, no shadow answered yet
        *request("odd", [0.9, 0.1], [0.9, 0.1], [0.5, 0.3, 0.2]),  # another class count
        row("skipped", "a", [[0.9, 0.1]], shadow="skipped"),
        row("a-failed", "a", None, error="backend_timeout"),  # the client got the 504
    ]
    report = build_report(rows, Rules(), noise=True)
    assert report["requests"] == 6  # every request A answered
    assert report["mirror_decisions"] == {"mirrored": 5, "skipped": 1}
    assert report["pending"] == 1
    assert (report["compared_requests"], report["incomparable_requests"]) == (1, 1)
    assert report["errors"]["b"] == {
        "calls": 4, "errors": 2, "rate": 0.5,
        "by_error": {"backend_timeout": 1, "backend_unavailable": 1}}
    assert report["latency"]["b"]["n"] == 2 and report["latency"]["a"]["n"] == 6
    assert report["verdict"] == "B agrees with A within A's retrain noise"
    assert build_report([], Rules(), noise=True)["verdict"] == "nothing compared yet"
