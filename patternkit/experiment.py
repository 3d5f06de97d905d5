"""The statistics of an online A/B experiment: assignment, sample ratio, effect, power, guardrails.

Pure functions, no I/O: the A/B proxy (`patternkit.abproxy`), its guard and the tests call the
same code. The two-sample functions take numpy arrays and broadcast, so a test can simulate
thousands of experiments peeked at dozens of times in one call. Distributions, the chi-square
test and power come from scipy and statsmodels; only the always-valid boundary below is a
formula, and its source is cited where it is computed (`always_valid`).

Variant "a" is the control, "b" the treatment; a difference is always B minus A.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

VARIANTS = ("a", "b")
SRM_THRESHOLD = 0.001  # GrowthBook's and Statsig's default: p below it flags a mismatch
Status = Literal["pass", "fail", "inconclusive", "no data"]
Decision = Literal["ship", "no-ship", "keep-running"]
Array = NDArray[np.float64]


# -- assignment -------------------------------------------------------------------------------


def bucket(unit: str, seed: str) -> float:
    """Where `unit` (a user id) falls in [0, 1) for the experiment `seed`: the first 64 bits
    of sha256("seed:unit"). Stable across processes and machines (Python's `hash` is not)."""
    digest = hashlib.sha256(f"{seed}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(unit: str, share_b: float, seed: str) -> str:
    """The variant of `unit` when B takes `share_b` (0..1) of the units: B below the share.

    A unit in B stays in B when the share grows (its bucket is still below it), so ramping B
    up moves only A's units, as GrowthBook's bucket ranges do.
    """
    return "b" if bucket(unit, seed) < share_b else "a"


# -- sample ratio mismatch --------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRatio:
    """A chi-square goodness-of-fit test of the units per variant against the weights."""

    counts: dict[str, int]
    expected_share: dict[str, float]
    observed_share: dict[str, float | None]
    chi2: float
    p_value: float
    flagged: bool
    threshold: float


def sample_ratio_check(
    counts: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SampleRatio:
    """Do the units per variant fit the configured weights? Flagged at p < `threshold`.

    `scipy.stats.chisquare` on the variants with a positive weight; a unit seen in a variant
    of weight 0 is a mismatch outright (p = 0). With fewer than two weighted variants or no
    units there is nothing to test (p = 1).
    """
    names = list(weights)
    total_weight = sum(weights.values())
    if total_weight <= 0:
        raise ValueError("the weights must add up to more than 0")
    expected = {v: weights[v] / total_weight for v in names}
    n = sum(int(counts.get(v, 0)) for v in names)
    observed = {v: (counts.get(v, 0) / n if n else None) for v in names}
    live = [v for v in names if expected[v] > 0]
    stray = sum(int(counts.get(v, 0)) for v in names if expected[v] == 0)
    chi2, p = 0.0, 1.0
    if stray:
        chi2, p = math.inf, 0.0
    elif n and len(live) > 1:
        result = stats.chisquare([counts.get(v, 0) for v in live],
                                 [n * expected[v] for v in live])
        chi2, p = float(result.statistic), float(result.pvalue)
    return SampleRatio({v: int(counts.get(v, 0)) for v in names}, expected, observed,
                       chi2, p, p < threshold, threshold)


# -- the difference of two rates, valid under repeated looks ----------------------------------


def rate_variance(successes: ArrayLike, n: ArrayLike) -> Array:
    """The variance of a rate's estimate, p(1-p)/n, with p smoothed to (x + 0.5) / (n + 1) so
    that a rate of 0 or 1 (no errors yet) still has an honest, non-zero uncertainty; inf for
    n = 0."""
    x = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    p = (x + 0.5) / (m + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, p * (1.0 - p) / np.where(m > 0, m, 1.0), np.inf)


def always_valid(diff: ArrayLike, var: ArrayLike, alpha: float, tau: float) -> tuple[Array, Array]:
    """(half-width of the confidence sequence, always-valid p-value) for an estimate `diff`
    of a difference whose variance is `var`, testing the difference 0.

    The mixture sequential probability ratio test (mSPRT) with a normal mixing distribution
    N(0, tau^2) over the true difference, as in Johari, Koomen, Pekelis and Walsh, "Always
    Valid Inference: Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022
    (arXiv:1512.04922), the method of Optimizely's Stats Engine; the same normal-mixture
    boundary is the confidence sequence of Howard, Ramdas, McAuliffe and Sekhon,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics
    49(2), 2021, which Eppo's sequential analysis uses. With V = var:

        Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 diff^2 / (2 V (V + tau^2)))
        p      = min(1, 1 / Lambda)
        half   = sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) + 2 log(1 / alpha)))

    Under "no difference" Lambda is a non-negative martingale, so by Ville's inequality it
    ever reaches 1/alpha with probability at most alpha: the p-value may be read, and the
    interval `diff +- half` trusted, at every look, however many (the normal approximation
    to the rates aside). p <= alpha exactly when the interval excludes 0. `tau` is the scale
    of differences the test is tuned for: for alpha = 0.05 the half-width at a sample is
    smallest when tau^2 is about 8 V there (set dlog/dtau of `half` to 0).
    """
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        finite = np.isfinite(v) & (v > 0)
        vs = np.where(finite, v, 1.0)
        half = np.sqrt(vs * (vs + t2) / t2 * (np.log((vs + t2) / vs) + 2.0 * math.log(1 / alpha)))
        log_lambda = 0.5 * np.log(vs / (vs + t2)) + t2 * d * d / (2.0 * vs * (vs + t2))
        p = np.exp(np.minimum(0.0, -log_lambda))
    return np.where(finite, half, np.inf), np.where(finite, p, 1.0)


class RateTest(NamedTuple):
    """Arrays (or 0-d arrays) of one or many two-rate comparisons, B minus A."""

    diff: Array
    low: Array
    high: Array
    p_value: Array
    variance: Array


def sequential_test(
    x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike,
    alpha: float = 0.05, tau: float = 0.05,
) -> RateTest:
    """The always-valid comparison of the rates x_b/n_b and x_a/n_a (see `always_valid`)."""
    xa, na = np.asarray(x_a, dtype=np.float64), np.asarray(n_a, dtype=np.float64)
    xb, nb = np.asarray(x_b, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.where((na > 0) & (nb > 0), xb / np.maximum(nb, 1) - xa / np.maximum(na, 1), 0.0)
    var = rate_variance(xa, na) + rate_variance(xb, nb)
    half, p = always_valid(diff, var, alpha, tau)
    return RateTest(diff, diff - half, diff + half, p, var)


def z_test(x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike) -> Array:
    """The fixed-horizon two-sided p-value of the pooled two-proportion z-test (what
    `statsmodels.stats.proportion.proportions_ztest` gives), for many comparisons at once.
    Valid for ONE look at a sample size fixed in advance; read repeatedly it finds
    differences that are not there (see the A/A test of Q2)."""
    xa, na = np.asarray(x_a, dtype=np.float64), np.asarray(n_a, dtype=np.float64)
    xb, nb = np.asarray(x_b, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (xa + xb) / (na + nb)
        se = np.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        z = (xb / nb - xa / na) / se
    return np.where(np.isfinite(z), 2 * stats.norm.sf(np.abs(z)), 1.0)


# -- power ------------------------------------------------------------------------------------


def fixed_horizon_mde(
    rate_a: float, n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """The smallest rise over `rate_a` a one-look two-sided test detects with `power` at these
    sample sizes (statsmodels' NormalIndPower on Cohen's h, turned back into rates)."""
    if n_a < 2 or n_b < 2:
        return None
    h = NormalIndPower().solve_power(effect_size=None, nobs1=n_a, alpha=alpha, power=power,
                                     ratio=n_b / n_a, alternative="two-sided")
    angle = min(math.asin(math.sqrt(min(max(rate_a, 0.0), 1.0))) + float(h) / 2, math.pi / 2)
    return math.sin(angle) ** 2 - rate_a


def fixed_horizon_power(
    rate_a: float, effect: float, n_a: int, n_b: int, alpha: float = 0.05
) -> float | None:
    """The power of a one-look two-sided test to detect `rate_a` -> `rate_a + effect`."""
    target = rate_a + effect
    if n_a < 2 or n_b < 2 or not 0 <= target <= 1:
        return None
    h = proportion_effectsize(target, rate_a)
    return float(NormalIndPower().power(effect_size=h, nobs1=n_a, alpha=alpha,
                                        ratio=n_b / n_a, alternative="two-sided"))


def sequential_mde(
    rate_a: float, n_a: int, n_b: int, alpha: float = 0.05, tau: float = 0.05,
    power: float = 0.8,
) -> float | None:
    """The difference the always-valid interval excludes 0 for with probability `power` at
    these sample sizes: its half-width plus z_power standard errors (both rates at `rate_a`).
    Larger than the fixed-horizon MDE: the price of looking as often as one likes."""
    if n_a < 1 or n_b < 1:
        return None
    var = float(rate_variance(rate_a * n_a, n_a) + rate_variance(rate_a * n_b, n_b))
    half, _ = always_valid(0.0, var, alpha, tau)
    return float(half) + float(stats.norm.ppf(power)) * math.sqrt(var)


# -- guardrails -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guardrail:
    """B against A on a metric where more is worse (errors, latency, lost conversions).

    `harm` is how much worse B is (B - A, or A - B for the KPI), `low`/`high` its interval;
    `fail`: B is worse by more than `margin` beyond doubt (low > margin); `pass`: B is
    non-inferior, worse by less than `margin` beyond doubt (high < margin)."""

    name: str
    a: float | None
    b: float | None
    harm: float | None
    low: float | None
    high: float | None
    margin: float
    status: Status
    detail: str


def _status(low: float, high: float, margin: float) -> Status:
    if low > margin:
        return "fail"
    if high < margin:
        return "pass"
    return "inconclusive"


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON has no infinity)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def error_rate_guardrail(
    errors_a: int, requests_a: int, errors_b: int, requests_b: int,
    margin: float, alpha: float = 0.05, tau: float = 0.05,
) -> Guardrail:
    """Is B's error rate at most `margin` (absolute) above A's? On the always-valid interval,
    so that a guard checking it every interval does not cry wolf."""
    if requests_a == 0 or requests_b == 0:
        return Guardrail("error_rate", None, None, None, None, None, margin, "no data",
                         "no requests in one of the variants")
    t = sequential_test(errors_a, requests_a, errors_b, requests_b, alpha, tau)
    low, high = float(t.low), float(t.high)
    status = _status(low, high, margin)
    ra, rb = errors_a / requests_a, errors_b / requests_b
    detail = (f"B errs {rb:.1%} vs A {ra:.1%}: +{float(t.diff):.1%} "
              f"[{low:+.1%}, {high:+.1%}], margin +{margin:.1%}")
    return Guardrail("error_rate", ra, rb, float(t.diff), _num(low), _num(high), margin, status,
                     detail)


def kpi_guardrail(
    conversions_a: int, units_a: int, conversions_b: int, units_b: int,
    margin: float = 0.0, alpha: float = 0.05, tau: float = 0.05,
) -> Guardrail:
    """Does B lose more than `margin` of A's conversion rate? (harm = A - B)"""
    if units_a == 0 or units_b == 0:
        return Guardrail("kpi", None, None, None, None, None, margin, "no data",
                         "no units in one of the variants")
    t = sequential_test(conversions_a, units_a, conversions_b, units_b, alpha, tau)
    harm, low, high = -float(t.diff), -float(t.high), -float(t.low)
    status = _status(low, high, margin)
    ra, rb = conversions_a / units_a, conversions_b / units_b
    detail = (f"B converts {rb:.1%} vs A {ra:.1%}: loses {harm:+.1%} "
              f"[{low:+.1%}, {high:+.1%}], margin {margin:+.1%}")
    return Guardrail("kpi", ra, rb, harm, _num(low), _num(high), margin, status, detail)


def latency_guardrail(
    latencies_a: ArrayLike, latencies_b: ArrayLike, margin: float, slack_ms: float,
    q: float = 0.99, confidence: float = 0.95,
) -> Guardrail:
    """Is B's q-quantile latency within A's times (1 + margin) plus `slack_ms`?

    The limit comes from A's observed quantile; B's quantile gets a distribution-free
    confidence interval (`scipy.stats.quantile_test`, order statistics of a binomial). A p99
    has no upper bound below a few hundred requests, so it stays inconclusive until then.
    Unlike the rate guardrails this interval holds for one look, not for every look.
    """
    la = np.asarray(latencies_a, dtype=np.float64)
    lb = np.asarray(latencies_b, dtype=np.float64)
    name = f"latency_p{round(q * 100)}"
    if la.size == 0 or lb.size == 0:
        return Guardrail(name, None, None, None, None, None, margin, "no data",
                         "no latencies in one of the variants")
    qa, qb = float(np.quantile(la, q)), float(np.quantile(lb, q))
    limit = qa * (1 + margin) + slack_ms
    ci = stats.quantile_test(lb, q=limit, p=q).confidence_interval(confidence)
    low = float(ci.low) if np.isfinite(ci.low) else -math.inf
    high = float(ci.high) if np.isfinite(ci.high) else math.inf
    status = _status(low - limit, high - limit, 0.0)
    detail = (f"B's p{round(q * 100)} {qb:.1f} ms [{_fmt_ms(low)}, {_fmt_ms(high)}] vs the "
              f"limit {limit:.1f} ms (A's {qa:.1f} ms x {1 + margin:g} + {slack_ms:g} ms)")
    return Guardrail(name, qa, qb, qb - qa, _num(low - qa), _num(high - qa), limit - qa,
                     status, detail)


def _fmt_ms(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "?"


# -- the report and the decision --------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """How an experiment is judged: levels, margins and the guardrails in force."""

    alpha: float = 0.05
    tau: float = 0.05
    power: float = 0.8
    target_effect: float = 0.02  # the rise the power is computed for
    min_units: int = 100  # per variant before the KPI is judged
    srm_threshold: float = SRM_THRESHOLD
    error_margin: float = 0.02
    p99_margin: float = 0.5
    p99_slack_ms: float = 20.0
    kpi_guardrail: bool = True
    kpi_margin: float = 0.0


@dataclass
class VariantData:
    """What the log holds for one variant in one phase."""

    units: int = 0  # users (sticky) or requests (random)
    conversions: int = 0  # units with at least one KPI event
    requests: int = 0
    errors: int = 0
    latencies_ms: Sequence[float] | NDArray[np.float64] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        return {
            "units": self.units,
            "conversions": self.conversions,
            "rate": _num(self.conversions / self.units) if self.units else None,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _num(self.errors / self.requests) if self.requests else None,
            "latency_ms": {
                "p50": _num(np.quantile(lat, 0.5)) if lat.size else None,
                "p99": _num(np.quantile(lat, 0.99)) if lat.size else None,
            },
        }


def effect(a: VariantData, b: VariantData, analysis: Analysis) -> dict[str, Any]:
    """B's conversion rate against A's: difference, always-valid interval and p-value, and
    the one-look p-value beside them (labelled: valid only at a sample size fixed up front)."""
    t = sequential_test(a.conversions, a.units, b.conversions, b.units, analysis.alpha,
                        analysis.tau)
    ra = a.conversions / a.units if a.units else None
    diff = float(t.diff) if a.units and b.units else None
    low, high = _num(t.low), _num(t.high)
    return {
        "metric": "conversion rate (B - A)",
        "diff": diff,
        "relative": (diff / ra) if diff is not None and ra else None,
        "ci": [low, high],
        "p_value": float(t.p_value),
        "significant": bool(float(t.p_value) <= analysis.alpha) and diff is not None,
        "method": "always-valid mSPRT, normal mixture (Johari et al. 2022; Howard et al. 2021)",
        "alpha": analysis.alpha,
        "tau": analysis.tau,
        "fixed_horizon_p": float(z_test(a.conversions, a.units, b.conversions, b.units)),
    }


def power(a: VariantData, b: VariantData, analysis: Analysis) -> dict[str, Any]:
    rate_a = a.conversions / a.units if a.units else 0.0
    return {
        "power": analysis.power,
        "mde_fixed_horizon": _num(fixed_horizon_mde(rate_a, a.units, b.units, analysis.alpha,
                                                    analysis.power)),
        "mde_sequential": _num(sequential_mde(rate_a, a.units, b.units, analysis.alpha,
                                              analysis.tau, analysis.power)),
        "target_effect": analysis.target_effect,
        "power_at_target_fixed_horizon": _num(fixed_horizon_power(
            rate_a, analysis.target_effect, a.units, b.units, analysis.alpha)),
    }


def guardrails(a: VariantData, b: VariantData, analysis: Analysis) -> list[Guardrail]:
    found = [
        error_rate_guardrail(a.errors, a.requests, b.errors, b.requests, analysis.error_margin,
                             analysis.alpha, analysis.tau),
        latency_guardrail(a.latencies_ms, b.latencies_ms, analysis.p99_margin,
                          analysis.p99_slack_ms),
    ]
    if analysis.kpi_guardrail:
        found.append(kpi_guardrail(a.conversions, a.units, b.conversions, b.units,
                                   analysis.kpi_margin, analysis.alpha, analysis.tau))
    return found


def check_view(a: VariantData, b: VariantData, analysis: Analysis) -> dict[str, Any]:
    """What a guard check reads (requests per variant and the guardrails), without the rest
    of the report: the shape of `report`'s `variants` and `guardrails`."""
    return {"variants": {"a": {"requests": a.requests}, "b": {"requests": b.requests}},
            "guardrails": {g.name: asdict(g) for g in guardrails(a, b, analysis)}}


def decide(
    srm: SampleRatio, result: Mapping[str, Any], rails: Sequence[Guardrail],
    a: VariantData, b: VariantData, analysis: Analysis, rolled_back: str | None = None,
    mde: float | None = None,
) -> tuple[Decision, list[str]]:
    """ship / no-ship / keep-running, and why, in this order of precedence: a guard rollback
    or a failed guardrail is no-ship; so is a sample ratio mismatch (the data cannot be
    trusted); too few units keeps running; a significant loss is no-ship; a significant win
    ships once every guardrail has passed (non-inferiority shown), else keeps running."""
    if rolled_back:
        return "no-ship", [f"the guard rolled B back: {rolled_back}"]
    failed = [g for g in rails if g.status == "fail"]
    if failed:
        return "no-ship", [f"guardrail {g.name} failed: {g.detail}" for g in failed]
    if srm.flagged:
        return "no-ship", [
            f"sample ratio mismatch (p={srm.p_value:.2g} < {srm.threshold:g}): units "
            f"{srm.counts} against weights {srm.expected_share}; assignment or logging is "
            "broken, so the results cannot be trusted: fix it and start a new phase"]
    if min(a.units, b.units) < analysis.min_units:
        return "keep-running", [
            f"{min(a.units, b.units)} units in the smaller variant; the KPI is judged from "
            f"{analysis.min_units} (AB_MIN_UNITS)"]
    diff, (low, high) = result["diff"], result["ci"]
    ci = f"[{low:+.2%}, {high:+.2%}]" if low is not None and high is not None else "[?]"
    if result["significant"] and diff is not None and diff < 0:
        return "no-ship", [f"B converts less than A: {diff:+.2%} {ci}, "
                           f"p={result['p_value']:.2g} (always valid)"]
    if result["significant"] and diff is not None and diff > 0:
        waiting = [g for g in rails if g.status != "pass"]
        if not waiting:
            return "ship", [f"B converts more than A: {diff:+.2%} {ci}, "
                            f"p={result['p_value']:.2g} (always valid); every guardrail passed"]
        return "keep-running", [f"B wins on the KPI ({diff:+.2%} {ci}) but guardrail {g.name} "
                                f"is {g.status}: {g.detail}" for g in waiting]
    detectable = f"; at this sample it detects a difference of {mde:.2%}" if mde else ""
    return "keep-running", [f"no significant difference yet: {ci}, "
                            f"p={result['p_value']:.2g} (always valid){detectable}"]


def report(
    data: Mapping[str, VariantData], share_b: float, analysis: Analysis,
    rolled_back: str | None = None,
) -> dict[str, Any]:
    """The whole analysis of one phase: per-variant summaries, SRM, the effect, power,
    guardrails and the decision, as plain JSON."""
    a, b = data.get("a", VariantData()), data.get("b", VariantData())
    srm = sample_ratio_check({"a": a.units, "b": b.units}, {"a": 1 - share_b, "b": share_b},
                             analysis.srm_threshold)
    result = effect(a, b, analysis)
    pw = power(a, b, analysis)
    rails = guardrails(a, b, analysis)
    decision, reasons = decide(srm, result, rails, a, b, analysis, rolled_back,
                               pw["mde_sequential"])
    srm_view = asdict(srm)
    srm_view["chi2"] = _num(srm.chi2)
    return {
        "variants": {"a": a.summary(), "b": b.summary()},
        "srm": srm_view,
        "effect": result,
        "power": pw,
        "guardrails": {g.name: asdict(g) for g in rails},
        "decision": {"decision": decision, "reasons": reasons},
    }
