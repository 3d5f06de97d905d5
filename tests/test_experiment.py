"""patternkit.experiment: assignment, SRM, the always-valid test, power, guardrails, decision.

Pure functions, so these run in milliseconds; the long simulations of the A/B pattern's
claims (peeking, SRM power, the guard) are in qa_patterns/online_ab_test/tests.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from statsmodels.stats.proportion import proportions_ztest

from patternkit.experiment import (
    Analysis,
    VariantData,
    always_valid,
    assign,
    bucket,
    decide,
    effect,
    error_rate_guardrail,
    fixed_horizon_mde,
    fixed_horizon_power,
    guardrails,
    kpi_guardrail,
    latency_guardrail,
    rate_variance,
    report,
    sample_ratio_check,
    sequential_mde,
    sequential_test,
    z_test,
)


def test_buckets_are_stable_uniform_and_salted() -> None:
    assert bucket("user-1", "exp") == bucket("user-1", "exp")  # the same in every process
    assert bucket("user-1", "exp") != bucket("user-1", "other")
    draws = np.array([bucket(f"u{i}", "exp") for i in range(20_000)])
    assert draws.min() >= 0 and draws.max() < 1
    counts, _ = np.histogram(draws, bins=10, range=(0, 1))
    assert counts.min() > 1800 and counts.max() < 2200  # 2,000 +- 4.5 sd
    assert assign("u1", 0.0, "exp") == "a" and assign("u1", 1.0, "exp") == "b"


def test_srm_fits_flags_and_handles_weight_zero() -> None:
    fit = sample_ratio_check({"a": 300, "b": 700}, {"a": 30, "b": 70})
    assert (fit.p_value, fit.flagged, fit.expected_share["b"]) == (1.0, False, 0.7)
    off = sample_ratio_check({"a": 500, "b": 500}, {"a": 0.3, "b": 0.7})
    assert off.flagged and off.p_value < 1e-40 and off.observed_share["b"] == 0.5
    assert sample_ratio_check({"a": 100, "b": 0}, {"a": 1, "b": 0}).flagged is False
    stray = sample_ratio_check({"a": 100, "b": 1}, {"a": 1, "b": 0})
    assert stray.flagged and stray.p_value == 0.0  # B got a unit at weight 0
    empty = sample_ratio_check({}, {"a": 0.5, "b": 0.5})
    assert (empty.p_value, empty.flagged, empty.observed_share["a"]) == (1.0, False, None)
    just = sample_ratio_check({"a": 5280, "b": 4720}, {"a": 0.5, "b": 0.5})
    assert just.flagged == (just.p_value < 0.001)
    with pytest.raises(ValueError):
        sample_ratio_check({"a": 1}, {"a": 0, "b": 0})


def test_the_z_test_is_statsmodels_proportions_ztest() -> None:
    for x_a, n_a, x_b, n_b in [(100, 1000, 150, 1000), (12, 80, 5, 95), (0, 50, 3, 60)]:
        _, expected = proportions_ztest([x_b, x_a], [n_b, n_a])
        assert float(z_test(x_a, n_a, x_b, n_b)) == pytest.approx(expected, rel=1e-9)
    assert float(z_test(0, 10, 0, 10)) == 1.0  # no variance: nothing to see


def test_the_always_valid_p_value_and_interval_agree() -> None:
    """p <= alpha exactly when the interval excludes 0, over a grid of outcomes."""
    x_b = np.arange(0, 301)
    t = sequential_test(100, 1000, x_b, 1000, 0.05, 0.05)
    excludes = (t.low > 0) | (t.high < 0)
    assert np.array_equal(t.p_value <= 0.05, excludes)
    assert np.all(t.p_value <= 1.0) and np.all(t.low <= t.diff) and np.all(t.diff <= t.high)
    # the price of looking often: wider than the one-look interval at the same sample
    one_look = 1.96 * np.sqrt(t.variance)
    assert np.all(t.high - t.diff > one_look)


def test_the_interval_shrinks_with_the_sample_and_is_infinite_without_one() -> None:
    widths = [float(sequential_test(n // 10, n, n // 10, n).high) for n in (100, 1000, 10_000)]
    assert widths[0] > widths[1] > widths[2] > 0
    none = sequential_test(0, 0, 5, 10)
    assert (float(none.p_value), math.isinf(float(none.high))) == (1.0, True)
    half, p = always_valid(0.0, 0.0, 0.05, 0.05)
    assert math.isinf(float(half)) and float(p) == 1.0
    assert float(rate_variance(0, 100)) > 0  # no errors yet is not certainty


def test_power_and_mde_round_trip_and_order() -> None:
    mde = fixed_horizon_mde(0.10, 1000, 1000)
    assert mde is not None and 0.03 < mde < 0.05
    assert fixed_horizon_power(0.10, mde, 1000, 1000) == pytest.approx(0.8, abs=0.01)
    smaller = fixed_horizon_mde(0.10, 4000, 4000)
    assert smaller is not None and smaller < mde
    seq = sequential_mde(0.10, 1000, 1000)
    assert seq is not None and seq > mde  # always-valid needs a larger effect
    assert fixed_horizon_mde(0.1, 1, 1000) is None and sequential_mde(0.1, 0, 10) is None
    assert fixed_horizon_power(0.99, 0.05, 100, 100) is None  # past a rate of 1


def test_error_rate_guardrail_statuses() -> None:
    assert error_rate_guardrail(0, 0, 0, 10, 0.02).status == "no data"
    assert error_rate_guardrail(10, 5000, 12, 5000, 0.02).status == "pass"
    assert error_rate_guardrail(5, 100, 7, 100, 0.02).status == "inconclusive"
    failed = error_rate_guardrail(250, 5000, 500, 5000, 0.02)
    assert failed.status == "fail" and failed.harm == pytest.approx(0.05)
    assert failed.low is not None and failed.low > 0.02
    assert "B errs 10.0% vs A 5.0%" in failed.detail


def test_kpi_guardrail_counts_a_loss_as_harm() -> None:
    loss = kpi_guardrail(500, 1000, 200, 1000)
    assert loss.status == "fail" and loss.harm == pytest.approx(0.3)
    assert kpi_guardrail(100, 1000, 200, 1000).status == "pass"
    assert kpi_guardrail(100, 1000, 100, 1000).status == "inconclusive"


def test_latency_guardrail_compares_p99_with_a_limit_from_a() -> None:
    rng = np.random.default_rng(1)
    base = rng.exponential(5.0, 2000)
    same = latency_guardrail(base, rng.exponential(5.0, 2000), margin=0.5, slack_ms=5)
    assert same.status == "pass" and same.name == "latency_p99"
    slow = latency_guardrail(base, rng.exponential(5.0, 2000) + 100, margin=0.5, slack_ms=5)
    assert slow.status == "fail" and "limit" in slow.detail
    few = latency_guardrail(base, rng.exponential(5.0, 50), margin=0.5, slack_ms=5)
    assert few.status == "inconclusive" and few.high is None  # no p99 bound from 50 samples
    assert latency_guardrail([], base, 0.5, 5).status == "no data"


def data(units: int, conversions: int, errors: int = 0, latency: float = 5.0) -> VariantData:
    return VariantData(units, conversions, units, errors, np.full(units, latency))


@pytest.mark.parametrize(("a", "b", "expected"), [
    (data(2000, 200), data(2000, 300), "ship"),
    (data(2000, 300), data(2000, 200), "no-ship"),  # a significant loss
    (data(2000, 200), data(2000, 205), "keep-running"),  # nothing yet
    (data(50, 5), data(50, 20), "keep-running"),  # too few units
    (data(2000, 200), data(2000, 300, errors=400), "no-ship"),  # guardrail failed
    (data(2000, 200), data(200, 30), "no-ship"),  # 50/50 weights, 10x fewer in B: SRM
    (data(2000, 200), data(2000, 300, latency=500.0), "no-ship"),  # p99 far over A's
])
def test_decisions(a: VariantData, b: VariantData, expected: str) -> None:
    found = report({"a": a, "b": b}, 0.5, Analysis())
    assert found["decision"]["decision"] == expected, found["decision"]
    assert json.dumps(found, allow_nan=False)  # plain JSON: no NaN or infinity


def test_a_win_waits_for_the_guardrails_and_a_rollback_is_final() -> None:
    a, b = data(2000, 200), data(2000, 300)
    b.latencies_ms = np.full(2000, 5.0)
    a.latencies_ms = np.full(2000, 5.0)
    analysis = Analysis()
    rails = guardrails(a, b, analysis)
    srm = sample_ratio_check({"a": a.units, "b": b.units}, {"a": 0.5, "b": 0.5})
    waiting = [*rails[:1], rails[1].__class__(**{**rails[1].__dict__, "status": "inconclusive"})]
    decision, reasons = decide(srm, effect(a, b, analysis), waiting, a, b, analysis)
    assert decision == "keep-running" and "latency_p99 is inconclusive" in reasons[0]
    decision, reasons = decide(srm, effect(a, b, analysis), rails, a, b, analysis,
                               rolled_back="3 failed checks")
    assert decision == "no-ship" and "rolled B back" in reasons[0]


def test_report_shape() -> None:
    found = report({"a": data(300, 30)}, 0.1, Analysis())  # B not seen yet
    assert set(found) == {"variants", "srm", "effect", "power", "guardrails", "decision"}
    assert found["variants"]["b"]["rate"] is None and found["effect"]["diff"] is None
    assert found["effect"]["ci"] == [None, None]
    assert set(found["guardrails"]) == {"error_rate", "latency_p99", "kpi"}
    without_kpi = report({"a": data(10, 1)}, 0.1, Analysis(kpi_guardrail=False))
    assert set(without_kpi["guardrails"]) == {"error_rate", "latency_p99"}
