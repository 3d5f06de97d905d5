"""Demo of OA1: one client sends the same traffic to two stacks, the unlogged one and the
logged one with O5's monitor; halfway, a client bug swaps two features (mean radius and mean
perimeter: still 30 finite numbers, so every request is valid). Both answer 200 throughout
while the share of malignant answers more than doubles; only the logged stack can say so."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from operation_patterns.prediction_monitoring.simulator import Traffic
from patternkit import charts
from patternkit.client import Client
from patternkit.db import make_engine
from patternkit.predlog import prediction_table, read_predictions
from patternkit.topology import Stack

MODEL = "breast_cancer_lr"
TABLE_PREFIX = "no_logging"
METADATA = sa.MetaData()
LOG_TABLE = prediction_table(TABLE_PREFIX, METADATA)  # what the logged proxy writes
SWAPPED = (0, 2)  # "mean radius" and "mean perimeter" change places in the client's rows
STACKS = ("unlogged", "logged")
PHASES = ["healthy"] * 3 + ["bug"] * 3  # one monitor window each: 10 requests x 100 rows
PICTURE = "side_by_side.png"


@dataclass
class Run:
    """What the client sent and saw, per stack, and the windows of the logged stack."""

    windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in STACKS})
    # per stack, per window: the classes the client was answered
    answers: dict[str, list[list[int]]] = field(
        default_factory=lambda: {s: [[] for _ in PHASES] for s in STACKS})
    first_bug_rid: str = ""
    last_rid: str = ""

    def share(self, stack: str, phase: str) -> float:
        """The share of malignant (class 0) answers in the windows of `phase`."""
        labels = [c for k, window in enumerate(self.answers[stack]) if PHASES[k] == phase
                  for c in window]
        return sum(1 for label in labels if label == 0) / max(len(labels), 1)

    def window_shares(self, stack: str) -> list[float]:
        return [sum(1 for c in w if c == 0) / max(len(w), 1) for w in self.answers[stack]]


def order(bug: bool, n_features: int = 30) -> list[int]:
    cols = list(range(n_features))
    if bug:
        i, j = SWAPPED
        cols[i], cols[j] = cols[j], cols[i]
    return cols


def side_by_side(stack: Stack, seed: int = 7, tag: str = "oa1", rps: float = 10.0,
                 requests: int = 10, rows: int = 100) -> Run:
    """The same batches to both proxies, 10 requests a second each, one window per phase."""
    traffic = Traffic(seed, model=MODEL, held_out_only=False)
    run = Run()
    clients = {s: Client(stack.url(s)) for s in STACKS}
    try:
        # each request at least 1/rps after the one before: after a stall the pace picks up
        # again rather than catching up in a burst (which would be traffic_high in its window)
        mark, last = datetime.now(UTC), -math.inf
        for k, phase in enumerate(PHASES):
            for i in range(requests):
                if (wait := last + 1 / rps - time.monotonic()) > 0:
                    time.sleep(wait)
                last = time.monotonic()
                batch = traffic.batch(rows, order=order(phase == "bug"))
                for s, client in clients.items():
                    rid = f"{tag}-{s}-{k}-{i}"
                    resp = client.post("/predict", json={"data": batch},
                                       headers={"x-request-id": rid})
                    run.statuses[s].append(resp.status_code)
                    if resp.status_code == 200:
                        run.answers[s][k].extend(resp.json()["prediction"])
                    if s == "logged":
                        run.last_rid = rid
                        if phase == "bug" and not run.first_bug_rid:
                            run.first_bug_rid = rid
            end = datetime.now(UTC)
            run.windows.append((mark, end))
            mark = end
        clients["logged"].get("/logs", params={"request_id": run.last_rid})  # flushes the log
    finally:
        for client in clients.values():
            client.close()
    return run


def draw(result: Run, reports: list[dict[str, Any]], psi_alert: float) -> Any:
    """What the client saw on both stacks, and what only the logged stack's monitor saw."""
    fig, (mix, drift) = charts.figure("The same traffic and client bug through both stacks",
                                      heights=(2.2, 2.6))
    x = list(range(1, len(PHASES) + 1))
    for s, style in (("unlogged", ":"), ("logged", "-")):
        mix.plot(x, result.window_shares(s), ls=style, marker="o", lw=2,
                 color=charts.COLORS["muted" if s == "unlogged" else "answer"],
                 label=f"{s}: all 200s")
    mix.set_ylabel("malignant answers", fontsize=8)
    mix.set_ylim(0, 1)
    mix.legend(fontsize=8, loc="upper left")
    features = list(reports[0]["drift"])
    swapped = {features[i] for i in SWAPPED}
    for f in features:
        hot = f in swapped
        drift.plot(x, [max(r["drift"][f]["psi"], 1e-3) for r in reports], marker="o",
                   lw=2 if hot else 0.8, alpha=1 if hot else 0.5,
                   color=charts.COLORS["error"] if hot else charts.COLORS["muted"],
                   label=f if hot else ("the other 28 features" if f == features[1] else None))
    drift.axhline(psi_alert, color=charts.COLORS["open"], ls="--", lw=1.2,
                  label=f"alert {psi_alert}")
    charts.log_scale(drift, "y")
    drift.set_ylabel("PSI (logged stack only)", fontsize=8)
    drift.text(0.99, 0.04, "unlogged stack: no log, nothing to compute", ha="right",
               transform=drift.transAxes, fontsize=8, color=charts.COLORS["muted"])
    drift.legend(fontsize=7, loc="center left")
    drift.axvline(3.5, color=charts.COLORS["muted"], lw=1)
    mix.axvline(3.5, color=charts.COLORS["muted"], lw=1)
    drift.set_xticks(x, [f"{k}\n{p}" for k, p in zip(x, PHASES, strict=True)], fontsize=8)
    return fig


def log_rows(stack: Stack, since: datetime) -> dict[str, int]:
    """Rows in the prediction log since `since`, by the service that wrote them."""
    engine = make_engine(stack.url("db"))
    try:
        found = read_predictions(engine, TABLE_PREFIX, since=since, limit=100_000)
    finally:
        engine.dispose()
    return {s: sum(1 for r in found if r["service"] == s) for s in STACKS}


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    """The demo's table: what each stack answered, logged, alerted and can show."""
    rows: list[dict[str, Any]] = []
    result = side_by_side(stack, tag=f"demo-{int(time.time())}")
    since = result.windows[0][0]
    logged_rows = log_rows(stack, since)
    with Client(stack.url("monitor")) as monitor, Client(stack.url("alert_sink")) as sink, \
            Client(stack.url("unlogged")) as unlogged, Client(stack.url("logged")) as logged:
        body = monitor.post("/evaluate", json={"windows": [
            {"start": a.isoformat(), "end": b.isoformat()} for a, b in result.windows]}
        ).raise_for_status().json()
        alerts = [a for a in body["alerts"] if a["status"] == "firing"]
        psi_alert = monitor.get("/rules").json()["rules"]["feature_drift"]["psi_alert"]
        charts.picture((out or stack.run_dir) / PICTURE,
                       lambda: draw(result, body["windows"], psi_alert))
        sunk = sink.get("/alerts", params={"source": body["evaluation"]}).json()["count"]
        first = next((a["first_request_id"] for a in alerts if a["rule"] == "feature_drift"),
                     None)
        found = logged.get("/logs", params={"request_id": first}) if first else None
        no_logs = unlogged.get("/logs", params={"request_id": result.first_bug_rid})
        for s in STACKS:
            ok = sum(1 for code in result.statuses[s] if code == 200)
            rows.append({
                "stack": s, "200s": f"{ok}/{len(result.statuses[s])}",
                "malignant healthy -> bug": f"{result.share(s, 'healthy'):.1%} -> "
                                            f"{result.share(s, 'bug'):.1%}",
                "log rows": logged_rows[s],
                "alerts": (f"{len(alerts)} fired ({sunk} at the sink): " + ", ".join(sorted(
                    f"{a['rule']} {a.get('feature') or a.get('class')}" for a in alerts))
                           if s == "logged" else "0 (nothing to evaluate)"),
                "GET /logs?request_id=<first bug request>": (
                    f"{found.status_code}: {first}" if s == "logged" and found is not None
                    else f"{no_logs.status_code}"),
            })
    return rows
