"""Q2's statistical claims, proven by seeded simulation of the proxy's own functions (no HTTP).

The proxy assigns with `patternkit.experiment.assign`, judges with its `report` and rolls back
with `patternkit.guard.Guard`: these tests run the same code over thousands of seeded users
and experiments. Every simulation is seeded, so each assertion is deterministic; the bounds
are the ones the methods give (a binomial band for a split, the chi-square test's power for a
sample ratio mismatch, Clopper-Pearson intervals for false-positive rates), so that a
different seed could not plausibly break them either.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from patternkit.experiment import (
    Analysis,
    VariantData,
    assign,
    check_view,
    sample_ratio_check,
    sequential_test,
    z_test,
)
from patternkit.guard import Guard, GuardPolicy
from qa_patterns.online_ab_test import simulator
from qa_patterns.online_ab_test.proxy import NAME

SEED = NAME  # the proxy's AB_SEED in topology.toml
ALPHA = 0.05


def counts(users: list[str], share_b: float) -> dict[str, int]:
    variants = [assign(u, share_b, SEED) for u in users]
    return {"a": variants.count("a"), "b": variants.count("b")}


def test_5000_users_at_30_70_split_within_2_points_and_srm_stays_quiet() -> None:
    users = [u.id for u in simulator.users(5000)]
    found = counts(users, 0.70)
    share_b = found["b"] / 5000
    # a fair 70% split of 5,000 has a standard deviation of 0.65 points: 2 points is 3 sd
    assert abs(share_b - 0.70) <= 0.02, found
    srm = sample_ratio_check(found, {"a": 0.3, "b": 0.7})
    assert not srm.flagged and srm.p_value > 0.001, srm


def test_losing_2_percent_of_one_arms_exposures_makes_srm_fire() -> None:
    """A logging bug drops 2% of B's exposure events. How many users does SRM need to see it?

    The chi-square statistic then has noncentrality N * d^2 / (w_a * w_b), d the shift in B's
    share; its power at p < 0.001 is the noncentral chi-square's tail. At 5,000 users SRM
    cannot see a 2% loss (power ~1%); at 500,000 it sees it (power > 0.999), and does.
    """
    weights, lost = {"a": 0.3, "b": 0.7}, 0.02
    observed_b = weights["b"] * (1 - lost) / (weights["a"] + weights["b"] * (1 - lost))
    d = observed_b - weights["b"]
    critical = stats.chi2.isf(0.001, df=1)

    def srm_power(n: int) -> float:
        return float(stats.ncx2.sf(critical, 1, n * d * d / (weights["a"] * weights["b"])))

    assert srm_power(5_000) < 0.02
    n = 500_000
    assert srm_power(n) > 0.999

    users = [f"user-{i}" for i in range(n)]
    variants = np.array([assign(u, 0.70, SEED) == "b" for u in users])
    intact = sample_ratio_check({"a": int((~variants).sum()), "b": int(variants.sum())},
                                weights)
    assert not intact.flagged, intact
    kept = np.random.default_rng(2).random(n) >= lost  # which of B's exposures survive
    logged_b = int((variants & kept).sum())
    broken = sample_ratio_check({"a": int((~variants).sum()), "b": logged_b}, weights)
    assert broken.flagged, broken
    assert broken.p_value < 0.001


def aa_peeks(runs: int, looks: int, per_look: int, rate: float, seed: int) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:
    """Cumulative conversions and sample sizes of `runs` A/A experiments at each look."""
    rng = np.random.default_rng(seed)
    x_a = rng.binomial(per_look, rate, size=(runs, looks)).cumsum(axis=1)
    x_b = rng.binomial(per_look, rate, size=(runs, looks)).cumsum(axis=1)
    n = np.broadcast_to(per_look * np.arange(1, looks + 1), (runs, looks))
    return x_a, n, x_b, n


def test_an_aa_test_peeked_at_30_times_stays_under_5_percent_false_positives() -> None:
    """2,000 seeded A/A experiments (10% conversion in both arms, 200 users per arm added
    before each of 30 looks): a naive z-test at every look declares a winner in about a
    quarter of them; the always-valid test in under 5%, with Clopper-Pearson bounds to say
    it is no accident of the seed."""
    runs = 2000
    x_a, n_a, x_b, n_b = aa_peeks(runs, looks=30, per_look=200, rate=0.10, seed=11)
    naive = (z_test(x_a, n_a, x_b, n_b) < ALPHA).any(axis=1)
    sequential = (sequential_test(x_a, n_a, x_b, n_b, ALPHA, tau=0.05).p_value < ALPHA
                  ).any(axis=1)
    once = z_test(x_a[:, -1], n_a[:, -1], x_b[:, -1], n_b[:, -1]) < ALPHA  # one planned look

    naive_low, _ = proportion_confint(int(naive.sum()), runs, alpha=0.05, method="beta")
    _, seq_high = proportion_confint(int(sequential.sum()), runs, alpha=0.05, method="beta")
    once_low, once_high = proportion_confint(int(once.sum()), runs, alpha=0.05, method="beta")
    print(f"\n[Q2] A/A, 30 looks: naive z-test {naive.mean():.1%} false positives, "
          f"always-valid {sequential.mean():.1%}; one planned look {once.mean():.1%}")
    assert sequential.mean() <= 0.05 and seq_high < 0.05
    assert naive.mean() > 0.05 and naive_low > 0.10  # peeking inflates it 2-5x
    assert once_low < 0.05 < once_high  # the z-test itself is fine, looked at once


def test_the_always_valid_interval_covers_the_true_difference_at_every_look() -> None:
    runs, looks = 1000, 30
    rng = np.random.default_rng(5)
    x_a = rng.binomial(200, 0.10, size=(runs, looks)).cumsum(axis=1)
    x_b = rng.binomial(200, 0.13, size=(runs, looks)).cumsum(axis=1)
    n = np.broadcast_to(200 * np.arange(1, looks + 1), (runs, looks))
    t = sequential_test(x_a, n, x_b, n, ALPHA, tau=0.05)
    always = ((t.low <= 0.03) & (t.high >= 0.03)).all(axis=1)
    _, high = proportion_confint(int((~always).sum()), runs, alpha=0.05, method="beta")
    assert high < 0.05  # it misses the truth at some look in under 5% of experiments
    assert (t.low[:, -1] > 0).mean() > 0.5  # and finds the +3 points in most by 6,000/arm


def guard_run(error_a: float, error_b: float, seed: int, intervals: int = 30,
              per_interval: int = 200) -> int | None:
    """A guard (3 failed checks, 50 requests minimum) watching one seeded experiment whose
    variants err at these rates: the interval it rolled B back at, or None."""
    rng = np.random.default_rng(seed)
    guard = Guard(GuardPolicy(interval_s=1.0, threshold=3, min_requests=50), clock=lambda: 0.0)
    guard.watch(1, True)
    analysis = Analysis(error_margin=0.02, kpi_guardrail=False)
    a, b = VariantData(), VariantData()
    for k in range(1, intervals + 1):
        for data, rate in ((a, error_a), (b, error_b)):
            data.requests += per_interval
            data.errors += int(rng.binomial(per_interval, rate))
        guard.judge(1, check_view(a, b, analysis))
        if guard.should_roll_back:
            return k
    return None


def test_the_guard_rolls_back_a_b_with_twice_the_error_rate_and_leaves_an_equal_one() -> None:
    """100 seeded experiments each, 200 requests per variant between checks: B erring 10%
    against A's 5% is rolled back in all of them within 6,000 requests per variant; a B
    erring as often as A in none (a failed check needs the always-valid interval to put B
    beyond the 2-point margin, which it does for an equal B with probability < alpha)."""
    runs = 100
    worse = [guard_run(0.05, 0.10, seed) for seed in range(runs)]
    same = [guard_run(0.05, 0.05, seed) for seed in range(runs, 2 * runs)]
    rolled = sum(k is not None for k in worse)
    false_alarms = sum(k is not None for k in same)
    low, _ = proportion_confint(rolled, runs, alpha=0.05, method="beta")
    _, high = proportion_confint(false_alarms, runs, alpha=0.05, method="beta")
    first = sorted(k for k in worse if k is not None)
    print(f"\n[Q2] guard: 2x errors rolled back in {rolled}/{runs} (median after "
          f"{first[len(first) // 2] * 200 if first else '-'} requests/variant); "
          f"equal errors in {false_alarms}/{runs}")
    assert low > 0.95
    assert high < 0.05


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_2000_users_get_the_configured_share_and_ramping_up_keeps_b_in_b(share: float) -> None:
    users = [u.id for u in simulator.users(2000)]
    got = counts(users, share)["b"] / 2000
    sd = math.sqrt(share * (1 - share) / 2000)
    assert abs(got - share) <= max(4 * sd, 1e-9), got  # PATTERNS: 10% +- 3% at 2,000 users
    if share < 1.0:  # units in B at this share are in B at every larger share
        higher = min(1.0, share + 0.3)
        assert all(assign(u, higher, SEED) == "b" for u in users if assign(u, share, SEED) == "b")
