"""Writing a load-test report down: JSON, a markdown table, and a latency/throughput chart.

`write_report` puts `report.json`, `report.md` and `report.png` in a folder. The markdown has
one row per phase (exact percentiles beside Locust's rounded ones, the open loop's offered vs
achieved rate and dropped requests) and the gate's checks. The chart has, per phase, the
p50/p95 latency and the successful answers per second over time, one line per report, so two
runs (1 worker vs 2, heavy vs light) can share it. matplotlib (Agg, no display) is imported
only when a chart is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from patternkit.loadtest.plan import PHASES


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def phase_row(report: Mapping[str, Any], phase: str, label: str | None = None) -> dict[str, Any]:
    """One line of the summary: a phase of one report."""
    p = report[phase]
    loc = p.get("locust") or {}
    name = "closed loop" if phase == "closed" else f"open loop {fmt(p.get('offered_rps'))}/s"
    row: dict[str, Any] = {}
    if label is not None:
        row["run"] = label
    row.update({
        "phase": name,
        "users": p.get("users"),
        "req/s": fmt(p.get("rps")),
        "p50 ms": fmt(p.get("p50"), 2),
        "p95 ms": fmt(p.get("p95"), 2),
        "p99 ms": fmt(p.get("p99"), 2),
        "errors": f"{p.get('errors')}/{p.get('requests')}",
        "Locust p50/p95/p99 (rounded)": "/".join(fmt(loc.get(k), 0) for k in ("p50", "p95",
                                                                              "p99")),
        "offered -> achieved/s (dropped)": (
            f"{fmt(p.get('offered_rps'))} -> {fmt(p.get('achieved_rps'))} "
            f"({p.get('dropped')} of {p.get('offered')})" if phase == "open" else "-"),
        "CPU ms/req": fmt(p.get("cpu_ms_per_request"), 2),
    })
    return row


def checks_table(report: Mapping[str, Any]) -> str:
    rows = [{"threshold": f"{c['metric']} {c['condition']}", "measured": fmt(c["value"], 2),
             "verdict": "pass" if c["pass"] else "FAIL"} for c in report.get("checks", [])]
    return table(rows) if rows else "(no thresholds)"


def markdown(report: Mapping[str, Any]) -> str:
    phases = [p for p in PHASES if p in report]
    verdict = "PASS" if report.get("slo_pass") else "FAIL"
    head = f"Load test of {report['target']}" + (f" ({report['label']})" if report.get("label")
                                                  else "")
    return "\n".join([
        f"# {head}", "",
        f"{report.get('tool', '')}; started {report.get('started', '')}; rows of "
        f"{report.get('features')} features, batches of {report['plan']['request']['batch'][0]}"
        f"-{report['plan']['request']['batch'][1]} rows. Latencies are exact (numpy over every "
        "request; the open loop's count from the time each request was due); Locust's are "
        "rounded.", "",
        table([phase_row(report, p) for p in phases]), "",
        f"## SLO gate: {verdict}", "",
        checks_table(report), "",
    ])


def write_chart(path: Path, reports: Mapping[str, Mapping[str, Any]]) -> Path:
    """Latency (p50 solid, p95 dashed) and answers/s over time, per phase, per report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in PHASES if any(p in r for r in reports.values())]
    fig, axes = plt.subplots(2, len(phases), figsize=(6 * len(phases), 6), squeeze=False,
                             sharex="col")
    for col, phase in enumerate(phases):
        lat, thr = axes[0][col], axes[1][col]
        for i, (label, report) in enumerate(reports.items()):
            points = report.get(phase, {}).get("series", [])
            if not points:
                continue
            color = f"C{i}"
            t = [s["t"] for s in points]
            lat.plot(t, [s["p50"] for s in points], color=color, marker=".",
                     label=f"{label} p50")
            lat.plot(t, [s["p95"] for s in points], color=color, linestyle="--",
                     label=f"{label} p95")
            thr.plot(t, [s["rps"] for s in points], color=color, marker=".", label=label)
            if phase == "open" and report[phase].get("offered_rps"):
                thr.axhline(report[phase]["offered_rps"], color=color, linestyle=":",
                            linewidth=1, label=f"{label} offered")
        title = "closed loop" if phase == "closed" else "open loop (constant arrival rate)"
        lat.set_title(f"{title}: latency")
        lat.set_ylabel("ms")
        thr.set_title(f"{title}: throughput")
        thr.set_ylabel("successful answers / s")
        thr.set_xlabel("seconds into the phase")
        for ax in (lat, thr):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(report: Mapping[str, Any], out_dir: str | Path, name: str = "report",
                 chart: bool = True) -> dict[str, Path]:
    """`<name>.json`, `<name>.md` and (with `chart`) `<name>.png` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown(report))
    if chart:
        label = report.get("label") or report["target"]
        paths["png"] = write_chart(out / f"{name}.png", {label: report})
    return paths
