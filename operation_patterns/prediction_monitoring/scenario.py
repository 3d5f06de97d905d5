"""Demo traffic for O5: balanced windows, a feature drifting in steps, then balanced again;
the monitor's verdict per window, the alert firing after `for` windows and resolving, and a
drift chart (PSI of every feature per window, the thresholds, the alert's state)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from operation_patterns.prediction_monitoring.simulator import Traffic, send
from patternkit import charts
from patternkit.client import Client
from patternkit.topology import Stack

PICTURE = "drift.png"
DRIFTED = 3
# (label, shift of x3 in training standard deviations)
PHASES = [("balanced", 0.0), ("balanced", 0.0), ("balanced", 0.0), ("x3 +0.25 sd", 0.25),
          ("x3 +0.5 sd", 0.5), ("x3 +1 sd", 1.0), ("x3 +1 sd", 1.0), ("balanced", 0.0),
          ("balanced", 0.0)]


def draw(reports: list[dict[str, Any]], labels: list[str], warn: float, alert: float) -> Any:
    fig, (ax, states) = charts.figure("PSI of each input feature against the training "
                                      "distribution, per window", heights=(3.6, 1.0))
    x = list(range(1, len(reports) + 1))
    features = list(reports[0]["drift"])
    for feature in features:
        drifted = feature == f"x{DRIFTED}"
        ax.plot(x, [r["drift"][feature]["psi"] for r in reports], marker="o",
                lw=2.2 if drifted else 1.0, ms=5 if drifted else 3,
                color=charts.COLORS["error"] if drifted else charts.COLORS["muted"],
                alpha=1.0 if drifted else 0.6,
                label=f"{feature} (drifted)" if drifted else
                ("other features" if feature == features[0] else None))
    ax.axhline(warn, color=charts.COLORS["half_open"], ls="--", lw=1.2,
               label=f"warn {warn}")
    ax.axhline(alert, color=charts.COLORS["open"], ls="--", lw=1.2, label=f"alert {alert}")
    charts.log_scale(ax, "y")
    every = [r["drift"][f]["psi"] for r in reports for f in features]
    ax.set_ylim(*charts.log_limits([*every, warn, alert], pad=1.5))
    ax.set_ylabel("PSI (10 quantile bins)")
    ax.legend(fontsize=8, loc="upper left")
    colors = {"ok": charts.COLORS["closed"], "pending": charts.COLORS["half_open"],
              "firing": charts.COLORS["open"]}
    for i, r in enumerate(reports, start=1):
        st = next((s["state"] for s in r["states"] if s["key"] == f"feature_drift:x{DRIFTED}"),
                  "ok")
        states.bar(i, 1, color=colors[st], width=0.9)
        states.text(i, 0.5, st, ha="center", va="center", fontsize=8, color="white")
    states.set_yticks([])
    states.set_ylabel(f"x{DRIFTED} alert", fontsize=8)
    states.set_xticks(x, [f"{i}\n{label}" for i, label in zip(x, labels, strict=True)],
                      fontsize=7)
    return fig


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    """The demo: its table rows; the picture goes to `out` (the run directory by default)."""
    rows: list[dict[str, Any]] = []

    def say(step: str, observed: str) -> None:
        rows.append({"step": step, "observed": observed})

    traffic = Traffic(seed=11)
    with Client(stack.url()) as proxy, Client(stack.url("monitor")) as monitor, \
            Client(stack.url("alert_sink")) as sink:
        rules = monitor.get("/rules").json()["rules"]
        marks, last = [datetime.now(UTC)], ""
        for k, (_, shift) in enumerate(PHASES):
            batches = [traffic.batch(100, shift={DRIFTED: shift} if shift else None)
                       for _ in range(10)]
            last = send(proxy, batches, f"demo-{k}")[-1]
            marks.append(datetime.now(UTC))
        proxy.get("/logs", params={"request_id": last}).raise_for_status()  # flushed
        say(f"{len(PHASES)} windows of 10 requests x 100 rows through the proxy",
            "x3 shifted by 0.25, 0.5, 1, 1 training sd in windows 4-7")
        body = monitor.post("/evaluate", json={"windows": [
            {"start": a.isoformat(), "end": b.isoformat()}
            for a, b in itertools.pairwise(marks)]}).raise_for_status().json()
        reports = body["windows"]
        for i, (r, (label, _)) in enumerate(zip(reports, PHASES, strict=True), start=1):
            d = r["drift"][f"x{DRIFTED}"]
            others = max(v["psi"] for f, v in r["drift"].items() if f != f"x{DRIFTED}")
            st = [f"{s['key']} {s['state']}" for s in r["states"]]
            sent = [f"{a['rule']} {a['status']}" for a in r["alerts"]]
            say(f"window {i}: {label}",
                f"x3 PSI {d['psi']:.3f} ({d['level']}), KS p {d['ks_p']:.2g}; others max "
                f"{others:.3f}; states {st or 'none'}; posted {sent or 'nothing'}")
        got = sink.get("/alerts", params={"source": body["evaluation"]}).json()["alerts"]
        for a in got:
            say(f"sink: {a['status']}", f"{a['annotations']['summary']} "
                f"(window {a['window']['seconds']} s)")
        drift = rules["feature_drift"]
        path = charts.picture((out or stack.run_dir) / PICTURE, lambda: draw(
            reports, [label for label, _ in PHASES], drift["psi_warn"], drift["psi_alert"]))
        if path is not None:
            say("drift chart", str(path))
        live = monitor.get("/alerts/active").json()
        say("live loop (every MONITOR_INTERVAL_S over WINDOW_S)",
            f"{live['evaluations']} windows evaluated; active now: "
            f"{[a['key'] + ' ' + a['state'] for a in live['alerts']] or 'none'}")
    return rows
