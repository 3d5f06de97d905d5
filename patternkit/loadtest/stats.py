"""What a phase measured, from every request Locust's users recorded, unrounded.

Percentiles are numpy's over the raw latencies (each one exact to the microsecond: no
histogram buckets, so nothing like Locust's rounding to 10 ms steps above 100 ms); Locust's
own rounded figures are kept beside them. The open loop's latency counts from the time each
request was due, not when it was sent, and the requests that could not be sent on time are
counted, not silently delayed: that is what keeps coordinated omission out of the figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# a record's columns: [due, sent, done, status, rows, target]; due is -1 in the closed loop
DUE, SENT, DONE, STATUS, ROWS, TARGET = range(6)
COLUMNS = 6


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": rounded(p50, 3), "p95": rounded(p95, 3), "p99": rounded(p99, 3),
            "mean": rounded(values.mean(), 3), "max": rounded(values.max(), 3)}


def series(done: np.ndarray, latency: np.ndarray, ok: np.ndarray, start: float,
           width: float) -> list[dict[str, float | None]]:
    """Per time bucket (by completion time): successful answers per second, p50 and p95;
    buckets without any answer are left out."""
    if not done.size:
        return []
    index = np.floor((done - start) / width).astype(int)
    out = []
    for b in range(int(index.max()) + 1):
        here = index == b
        if not here.any():  # e.g. another target's turn
            continue
        good = latency[here & ok]
        out.append({
            "t": round((b + 0.5) * width, 3),
            "rps": round(float(np.count_nonzero(here & ok)) / width, 1),
            "p50": rounded(np.percentile(good, 50), 3) if good.size else None,
            "p95": rounded(np.percentile(good, 95), 3) if good.size else None,
        })
    return out


def phase_stats(
    record: Mapping[str, Any],
    *,
    batch_rows: int = 1_000_000,
    cpu_s: float | None = None,
    rate: float | None = None,
    seconds: float | None = None,
    target: int | None = None,
    window: float | None = None,
) -> dict[str, Any]:
    """The figures of one phase from its record (see `locustfile.Record`).

    `rate` and `seconds` describe the open loop's schedule; `cpu_s` is the server CPU the
    phase cost (all `--pid` processes together). `target` keeps only the requests sent to
    that target of a turn-taking run, whose time on it is `window` seconds."""
    rows = np.asarray(record["requests"], dtype=float).reshape(-1, COLUMNS)
    if target is not None:
        rows = rows[rows[:, TARGET] == target]
    is_open = record.get("mode") == "open"
    start = float(record.get("t0") or (rows[:, SENT].min() if rows.size else 0.0))
    if record.get("warmup_s"):  # the warm-up's requests were sent, not measured
        rows = rows[rows[:, DUE] >= start - 1e-9] if is_open else rows[rows[:, SENT] >= start]
    status = rows[:, STATUS]
    ok = (status >= 200) & (status < 400)
    service = (rows[:, DONE] - rows[:, SENT]) * 1000
    latency = (rows[:, DONE] - rows[:, DUE]) * 1000 if is_open else service
    requests, good = len(rows), int(np.count_nonzero(ok))
    span = float(rows[:, DONE].max() - start) if rows.size else 0.0
    turns = window  # a turn-taking run: the time on this target
    if is_open and rate and record.get("offered"):
        window = float(record["offered"]) / rate  # rates over the schedule, not its drain
    if window is None:
        window = span
    per_s = (lambda n: round(n / window, 2)) if window > 0 else (lambda n: 0.0)
    served_rows = float(rows[ok, ROWS].sum())
    ms_per_row = float(service[ok].sum() / served_rows) if served_rows else None
    out: dict[str, Any] = {
        "seconds": round(turns if turns is not None else span, 3),
        "requests": requests,
        "ok": good,
        "errors": requests - good,
        "error_rate": round((requests - good) / requests, 5) if requests else None,
        "rps": per_s(good),
        "rows_per_s": per_s(served_rows),
        **percentiles(latency[ok]),
        "ms_per_row": rounded(ms_per_row, 5),
        "projected_s": rounded(batch_rows * ms_per_row / 1000, 1) if ms_per_row else None,
        "cpu_ms_per_request": rounded(cpu_s * 1000 / requests, 3)
        if cpu_s is not None and requests else None,
        "statuses": {str(int(s)): int(n) for s, n in zip(*np.unique(status, return_counts=True),
                                                          strict=True)},
    }
    if is_open:
        offered = int(record.get("offered") or 0)
        dropped = int(record.get("dropped") or 0)
        late = (rows[:, SENT] - rows[:, DUE]) * 1000
        service_p = percentiles(service[ok])
        out.update({
            "offered": offered,
            "offered_rps": rounded(rate, 2) if rate else None,
            "sent": requests,
            "dropped": dropped,
            "dropped_rate": round(dropped / offered, 5) if offered else None,
            "achieved_rps": per_s(good),
            "service_p50": service_p["p50"],
            "service_p95": service_p["p95"],
            "service_p99": service_p["p99"],
            "late_p99_ms": rounded(np.percentile(late, 99), 3) if late.size else None,
            "schedule_s": seconds,
        })
    width = max(0.25, span / 24) if span else 1.0
    out["series"] = series(rows[:, DONE], latency, ok, start, width)
    if target is None:
        out["locust"] = dict(record.get("locust") or {})
    return out


def flat_metrics(report: Mapping[str, Any], phases: Sequence[str]) -> dict[str, float | None]:
    """`phase.metric` -> value, for the gate."""
    out: dict[str, float | None] = {}
    for phase in phases:
        for key, value in report.get(phase, {}).items():
            if isinstance(value, int | float) or value is None:
                out[f"{phase}.{key}"] = value
    return out
