"""Prediction monitoring: rules over time windows of the prediction log, alert states, alerts.

The monitor reads `<prefix>_prediction_log` (`read_window`: the rows recorded in [start, end),
whoever wrote them: a service's `PredictionLog`, or a consumer of a stream) and turns a
window's rows into a `WindowData` (requests, input rows, predicted classes, payload hashes).
`evaluate` applies the rules of a rules file (`Rules`, TOML) to it against the training
distribution the trainer saved beside the model (`Reference`, `reference.json`):

- `class_ratio`: a class's share of the predictions above `max_share`; `class_missing`: an
  expected class below `min_share`;
- `feature_drift`: per input feature, PSI over `bins` quantile bins of the training values
  (numpy; warn at `psi_warn`, alert at `psi_alert`) and scipy's two-sample KS test (its
  p-value below `ks_alpha` must agree before it alerts);
- `traffic_high` / `traffic_low`: requests per second above `max_rps` / below `min_rps` (a
  silent window is 0);
- `repeated_input`: one payload sent `max_repeats` times or more in the window.

An `AlertBook` holds each alert's state as Prometheus does: a condition true in a window makes
it `pending`, true `for` consecutive windows `firing` (notified), false again `resolved`
(notified); pending and false again is dropped silently, so one noisy window does not page.
`AlertPoster` sends notifications as an Alertmanager-style webhook (`{"status", "alerts": [...]}`)
to an alert sink, keeping what failed for the next try (bounded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tomllib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patternkit.predlog import prediction_table

log = logging.getLogger("patternkit.monitor")

REFERENCE_FILE = "reference.json"
PSI_EPS = 1e-4  # a bin no row fell in counts as this share (log(0) is undefined)
RULE_NAMES = ("class_ratio", "class_missing", "feature_drift", "traffic_high", "traffic_low",
              "repeated_input")


# -- the training distribution ---------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The training rows' feature values and class shares, as the trainer saved them."""

    features: list[str]
    classes: list[str]
    values: np.ndarray  # (n_train, n_features)
    class_shares: dict[str, float]

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """From `reference.json`, or the model folder holding it."""
        file = Path(path)
        if file.is_dir():
            file = file / REFERENCE_FILE
        try:
            doc = json.loads(file.read_text())
            values = np.asarray(doc["values"], dtype=np.float64)
            ref = cls(list(doc["features"]), list(doc["classes"]), values,
                      {str(k): float(v) for k, v in doc["class_shares"].items()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the training distribution {file}: {exc}") from exc
        if values.ndim != 2 or values.shape[1] != len(ref.features) or len(values) < 10:
            raise ValueError(f"{file}: values must be at least 10 rows of "
                             f"{len(ref.features)} features, not shape {values.shape}")
        return ref

    def summary(self) -> dict[str, Any]:
        return {"features": self.features, "classes": self.classes,
                "n_train": len(self.values), "class_shares": self.class_shares}


def save_reference(
    out_dir: str | Path, X: np.ndarray, y: np.ndarray, features: Sequence[str],
    classes: Sequence[str],
) -> Path:
    """Write the training rows `X` (and their labels' shares) to `out_dir/reference.json`."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(classes))
    doc = {
        "features": list(features), "classes": list(classes), "n_train": len(X),
        "class_shares": {c: round(float(n) / len(y), 6) for c, n in zip(classes, counts,
                                                                         strict=True)},
        "values": np.round(np.asarray(X, dtype=np.float64), 6).tolist(),
    }
    out = Path(out_dir) / REFERENCE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(doc))
    tmp.replace(out)
    return out


# -- the statistics ---------------------------------------------------------------------------


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """The inner edges of `bins` equal-frequency bins of the reference (ties merge bins)."""
    inner = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(inner)


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of `values` in each bin the inner `edges` make (open-ended outer bins)."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference` over the reference's
    quantile bins: sum((c - r) * ln(c / r)), empty bins counted as PSI_EPS."""
    edges = quantile_edges(np.asarray(reference, dtype=np.float64), bins)
    r = np.clip(bin_shares(np.asarray(reference, dtype=np.float64), edges), PSI_EPS, None)
    c = np.clip(bin_shares(np.asarray(current, dtype=np.float64), edges), PSI_EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """scipy's two-sample Kolmogorov-Smirnov test: (statistic, p-value)."""
    from scipy.stats import ks_2samp

    result = ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


# -- the rules file ---------------------------------------------------------------------------


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    for_windows: int = Field(2, ge=1, le=100, alias="for",
                             description="consecutive windows the condition must hold to fire")
    severity: Literal["info", "warning", "critical"] = "warning"


class ClassRatioRule(_Rule):
    max_share: float = Field(..., gt=0, le=1, description="a class above this share alerts")
    min_rows: int = Field(50, ge=1, description="fewer predictions in a window: not judged")


class ClassMissingRule(_Rule):
    min_share: float = Field(..., ge=0, lt=1, description="an expected class below this share")
    min_rows: int = Field(50, ge=1, description="fewer predictions in a window: not judged")


class DriftRule(_Rule):
    bins: int = Field(10, ge=10, le=30, description="quantile bins of the training values")
    psi_warn: float = Field(0.1, gt=0, description="PSI shown as a warning")
    psi_alert: float = Field(0.25, gt=0, description="PSI that alerts (with the KS test)")
    ks_alpha: float = Field(0.01, gt=0, lt=1, description="KS p-value below which it agrees")
    min_rows: int = Field(200, ge=10, description="fewer rows in a window: not judged")

    @model_validator(mode="after")
    def _ordered(self) -> DriftRule:
        if self.psi_warn > self.psi_alert:
            raise ValueError("psi_warn must not exceed psi_alert")
        return self


class TrafficHighRule(_Rule):
    max_rps: float = Field(..., gt=0, description="requests per second above this alert")


class TrafficLowRule(_Rule):
    min_rps: float = Field(..., gt=0, description="requests per second below this alert "
                                                  "(a silent window is 0)")


class RepeatedInputRule(_Rule):
    max_repeats: int = Field(..., ge=2, description="the same payload this often alerts")


class Rules(BaseModel):
    """The rules file: one table per rule; a rule left out is off."""

    model_config = ConfigDict(extra="forbid")

    class_ratio: ClassRatioRule | None = None
    class_missing: ClassMissingRule | None = None
    feature_drift: DriftRule | None = None
    traffic_high: TrafficHighRule | None = None
    traffic_low: TrafficLowRule | None = None
    repeated_input: RepeatedInputRule | None = None

    @classmethod
    def load(cls, path: str | Path) -> Rules:
        """Parse a TOML rules file; an error names the file and the field."""
        try:
            doc = tomllib.loads(Path(path).read_text())
            return cls.model_validate(doc)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"rules file {path}: {exc}") from exc
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"rules file {path}: {where}: {err['msg']}") from None

    def for_of(self, rule: str) -> int:
        section = getattr(self, rule, None)
        return section.for_windows if isinstance(section, _Rule) else 1

    def severity_of(self, rule: str) -> str:
        section = getattr(self, rule, None)
        return section.severity if isinstance(section, _Rule) else "warning"

    def view(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


# -- windows of the log -----------------------------------------------------------------------


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def view(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "seconds": round(self.seconds, 3)}


def read_window(
    engine: sa.Engine, prefix: str, window: Window, *, services: Sequence[str] | None = None,
    limit: int = 200_000,
) -> list[dict[str, Any]]:
    """The log rows recorded in [start, end), oldest first (at most `limit`, the oldest)."""
    table = prediction_table(prefix)
    if not sa.inspect(engine).has_table(table.name):
        return []
    stmt = (sa.select(table.c.request_id, table.c.at, table.c.service, table.c.input,
                      table.c.output)
            .where(table.c.at >= as_utc(window.start), table.c.at < as_utc(window.end))
            .order_by(table.c.at, table.c.id).limit(limit))
    if services:
        stmt = stmt.where(table.c.service.in_(list(services)))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def payload_hash(value: Any) -> str:
    """A short, stable hash of a request's input (key order and spacing do not matter)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


@dataclass
class WindowData:
    """What the rules need from one window's log rows."""

    window: Window
    requests: int
    rows: np.ndarray  # (n_rows, n_features): every input row of every request
    predictions: list[int]
    payloads: Counter[str]
    first_request_id: str | None
    unreadable: int = 0  # log rows whose input or output was not a batch of this width


def window_data(log_rows: Iterable[dict[str, Any]], window: Window, n_features: int
                ) -> WindowData:
    """Explode each request's batch into rows and its output into predicted classes."""
    rows: list[list[float]] = []
    predictions: list[int] = []
    payloads: Counter[str] = Counter()
    requests, unreadable, first = 0, 0, None
    for row in log_rows:
        requests += 1
        first = first if first is not None else row.get("request_id")
        batch, output = row.get("input"), row.get("output")
        if batch is not None:
            payloads[payload_hash(batch)] += 1
        labels = output.get("prediction") if isinstance(output, dict) else None
        ok = (isinstance(batch, list) and isinstance(labels, list) and len(batch) == len(labels)
              and all(isinstance(r, list) and len(r) == n_features for r in batch))
        if not ok:
            unreadable += 1
            continue
        assert isinstance(batch, list) and isinstance(labels, list)
        rows.extend(batch)
        predictions.extend(int(label) for label in labels)
    X = np.asarray(rows, dtype=np.float64).reshape(-1, n_features)
    return WindowData(window, requests, X, predictions, payloads, first, unreadable)


# -- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A rule's condition that holds in a window, for one subject (a class, a feature...)."""

    rule: str
    subject: str | None  # the feature, class or payload hash it is about
    subject_kind: str | None  # "feature", "class", "payload"
    value: float
    threshold: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.subject}" if self.subject else self.rule


@dataclass
class WindowReport:
    """A window's measurements (every feature's PSI and KS, class shares, traffic) and the
    findings the rules made of them."""

    window: Window
    measures: dict[str, Any]
    findings: list[Finding]
    first_request_id: str | None

    def view(self) -> dict[str, Any]:
        return {"window": self.window.view(), **self.measures,
                "first_request_id": self.first_request_id,
                "findings": [finding_view(f) for f in self.findings]}


def finding_view(f: Finding) -> dict[str, Any]:
    out: dict[str, Any] = {"rule": f.rule, "value": f.value, "threshold": f.threshold}
    if f.subject_kind:
        out[f.subject_kind] = f.subject
    return {**out, **f.details}


def _num(value: float, digits: int = 4) -> float:
    return round(value, digits) if math.isfinite(value) else value


def evaluate(data: WindowData, rules: Rules, ref: Reference) -> WindowReport:
    """Every rule over one window."""
    findings: list[Finding] = []
    seconds = max(data.window.seconds, 1e-9)
    rps = data.requests / seconds
    n = len(data.predictions)
    counts = np.bincount(np.asarray(data.predictions, dtype=np.int64),
                         minlength=len(ref.classes)) if n else np.zeros(len(ref.classes))
    shares = {c: _num(float(counts[i]) / n) if n else 0.0 for i, c in enumerate(ref.classes)}
    measures: dict[str, Any] = {"requests": data.requests, "rows": n, "rps": _num(rps, 3),
                                "class_shares": shares, "unreadable": data.unreadable}

    if (rule := rules.traffic_high) is not None and rps > rule.max_rps:
        findings.append(Finding("traffic_high", None, None, _num(rps, 3), rule.max_rps,
                                {"requests": data.requests}))
    if (rule_low := rules.traffic_low) is not None and rps < rule_low.min_rps:
        findings.append(Finding("traffic_low", None, None, _num(rps, 3), rule_low.min_rps,
                                {"requests": data.requests}))
    if (rule_cr := rules.class_ratio) is not None and n >= rule_cr.min_rows:
        for c, share in shares.items():
            if share > rule_cr.max_share:
                findings.append(Finding("class_ratio", c, "class", share, rule_cr.max_share,
                                        {"rows": n}))
    if (rule_cm := rules.class_missing) is not None and n >= rule_cm.min_rows:
        for c, share in shares.items():
            if share < rule_cm.min_share:
                findings.append(Finding("class_missing", c, "class", share, rule_cm.min_share,
                                        {"rows": n}))
    if (rule_rep := rules.repeated_input) is not None and data.payloads:
        for digest, times in data.payloads.most_common(5):
            if times >= rule_rep.max_repeats:
                findings.append(Finding("repeated_input", digest, "payload", float(times),
                                        float(rule_rep.max_repeats)))
    if (rule_d := rules.feature_drift) is not None:
        drift: dict[str, Any] = {}
        judged = len(data.rows) >= rule_d.min_rows
        for j, feature in enumerate(ref.features):
            if not judged:
                drift[feature] = None
                continue
            value = psi(ref.values[:, j], data.rows[:, j], rule_d.bins)
            stat, p = ks_test(ref.values[:, j], data.rows[:, j])
            level = ("alert" if value >= rule_d.psi_alert and p < rule_d.ks_alpha
                     else "warn" if value >= rule_d.psi_warn else "ok")
            drift[feature] = {"psi": _num(value), "ks": _num(stat), "ks_p": float(f"{p:.3g}"),
                              "level": level}
            if level == "alert":
                findings.append(Finding("feature_drift", feature, "feature", _num(value),
                                        rule_d.psi_alert,
                                        {"ks": _num(stat), "ks_p": float(f"{p:.3g}"),
                                         "ks_alpha": rule_d.ks_alpha}))
        measures["drift"] = drift
    return WindowReport(data.window, measures, findings, data.first_request_id)


# -- alert states (Prometheus' pending -> firing -> resolved) ---------------------------------


@dataclass
class AlertState:
    finding: Finding
    state: Literal["pending", "firing"]
    windows: int  # consecutive windows the condition has held
    since: Window  # the window it began in
    first_request_id: str | None  # the first request of that window
    fired_at: datetime | None = None


def fingerprint(key: str, source: str) -> str:
    return hashlib.sha256(f"{source}|{key}".encode()).hexdigest()[:16]


class AlertBook:
    """The alerts of one stream of consecutive windows, and the notifications each step makes."""

    def __init__(self, rules: Rules, source: str = "live") -> None:
        self.rules = rules
        self.source = source
        self.states: dict[str, AlertState] = {}

    def step(self, report: WindowReport) -> list[dict[str, Any]]:
        """Advance every alert by one window; the alerts that fired or resolved in it."""
        out: list[dict[str, Any]] = []
        now = {f.key: f for f in report.findings}
        for key, finding in now.items():
            st = self.states.get(key)
            if st is None:
                st = AlertState(finding, "pending", 0, report.window, report.first_request_id)
                self.states[key] = st
            st.finding, st.windows = finding, st.windows + 1
            if st.state == "pending" and st.windows >= self.rules.for_of(finding.rule):
                st.state, st.fired_at = "firing", report.window.end
                out.append(self.alert(st, "firing", report.window))
        for key in [k for k in self.states if k not in now]:
            st = self.states.pop(key)
            if st.state == "firing":
                out.append(self.alert(st, "resolved", report.window))
        return out

    def alert(self, st: AlertState, status: str, window: Window) -> dict[str, Any]:
        """One alert as Alertmanager's webhook carries it, plus its value, threshold and
        window as numbers."""
        f = st.finding
        labels = {"alertname": f.rule, "rule": f.rule,
                  "severity": self.rules.severity_of(f.rule), "source": self.source}
        if f.subject_kind:
            labels[f.subject_kind] = str(f.subject)
        about = f" {f.subject_kind} {f.subject}" if f.subject_kind else ""
        return {
            "status": status,
            "labels": labels,
            "annotations": {"summary": f"{f.rule}{about}: {f.value:g} vs threshold "
                                       f"{f.threshold:g} for {st.windows} window(s)"},
            "startsAt": st.since.start.isoformat(),
            "endsAt": window.end.isoformat() if status == "resolved" else None,
            "fingerprint": fingerprint(f.key, self.source),
            "rule": f.rule, f.subject_kind or "subject": f.subject,
            "value": f.value, "threshold": f.threshold, "details": f.details,
            "window": window.view(), "since_window": st.since.view(),
            "for_windows": self.rules.for_of(f.rule), "windows_held": st.windows,
            "first_request_id": st.first_request_id,
        }

    def view(self) -> list[dict[str, Any]]:
        return [{"key": k, "state": s.state, "windows_held": s.windows,
                 "for_windows": self.rules.for_of(s.finding.rule),
                 "since_window": s.since.view(), "first_request_id": s.first_request_id,
                 **finding_view(s.finding)} for k, s in self.states.items()]


# -- posting to the alert sink ----------------------------------------------------------------


class AlertPoster:
    """Posts notifications as Alertmanager webhook messages; what fails is kept (up to
    `max_pending`, the oldest dropped and counted) and sent with the next post."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, max_pending: int = 1000) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.pending: deque[dict[str, Any]] = deque()
        self.max_pending = max_pending
        self.sent = 0
        self.failures = 0
        self.dropped = 0
        self.last_error = ""

    async def post(self, alerts: Sequence[dict[str, Any]], session: Any) -> bool:
        """Send `alerts` and what is pending through an aiohttp `session`; False on failure."""
        for alert in alerts:
            if len(self.pending) >= self.max_pending:
                self.pending.popleft()
                self.dropped += 1
            self.pending.append(alert)
        if not self.pending or not self.url:
            return True
        batch = list(self.pending)
        status = "firing" if any(a["status"] == "firing" for a in batch) else "resolved"
        message = {"version": "4", "receiver": "alert-sink", "status": status, "alerts": batch}
        import aiohttp

        try:
            async with session.post(self.url, data=orjson.dumps(message),
                                    headers={"content-type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"the sink answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("cannot post %d alert(s) to %s (%s); kept for the next try",
                        len(batch), self.url, self.last_error)
            return False
        for _ in batch:
            self.pending.popleft()
        self.sent += len(batch)
        return True

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "pending": len(self.pending), "failures": self.failures,
                "dropped": self.dropped, "last_error": self.last_error}
