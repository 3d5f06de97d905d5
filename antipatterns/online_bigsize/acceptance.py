"""SA1's acceptance report: accuracy beside latency, CPU and the batch projection, per model.

For each model server it reads the held-out accuracy from `/metadata` (the trainer's
manifest), runs the loading test's runner (`patternkit.loadtest`, Q3) with this pattern's
plan (`slo.toml`: an open loop at 20 requests a second) and applies its gate: a model is
accepted only when every threshold holds, whatever its accuracy. That is the catalogue's
workaround: make the latency requirement part of model evaluation.

    python -m antipatterns.online_bigsize.acceptance --model heavy=URL --model light=URL
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from patternkit.loadtest import (
    LoadPlan,
    LoadTestError,
    PlanError,
    load_plan,
    run_plan,
    table,
    write_report,
)
from patternkit.loadtest.report import fmt

PLAN = Path(__file__).with_name("slo.toml")


def window_s(plan: LoadPlan) -> float | None:
    """The batch window: the limit of the plan's `projected_s` threshold, if it has one."""
    return next((t.limit for t in plan.gate() if t.metric.endswith(".projected_s")), None)


def evaluate(
    models: Mapping[str, str], plan: LoadPlan, workdir: str | Path, *,
    pids: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Load each model server with `plan` and judge it: the acceptance report."""
    work = Path(workdir)
    out: dict[str, Any] = {"plan": plan.model_dump(mode="json"), "window_s": window_s(plan),
                           "batch_rows": plan.batch.rows, "models": {}}
    for name, url in models.items():
        meta = httpx.get(f"{url.rstrip('/')}/metadata", timeout=10).json()
        report = run_plan(url, plan, work / name, pids=(pids or {}).get(name, ()), label=name)
        write_report(report, work / name)
        out["models"][name] = {
            "model": meta["model"]["name"],
            "accuracy": meta["model"]["metrics"]["accuracy"],
            "p95": report["p95"],
            "cpu_ms_per_request": report["cpu_ms_per_request"],
            "projected_s": report["projected_s"],
            "accepted": report["slo_pass"],
            "failed": [f"{c['metric']} {c['condition']} (got {fmt(c['value'])})"
                       for c in report["checks"] if not c["pass"]],
            "report": str(work / name / "report.md"),
        }
    accepted = {n: m for n, m in out["models"].items() if m["accepted"]}
    out["ship"] = max(accepted, key=lambda n: accepted[n]["accuracy"]) if accepted else None
    (work / "acceptance.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def rows(result: Mapping[str, Any], baseline: str | None = None) -> list[dict[str, str]]:
    """The side-by-side table: one row per model."""
    models = result["models"]
    base = models.get(baseline or result.get("ship") or "", {}).get("accuracy")
    window = result.get("window_s")
    out = []
    for name, m in models.items():
        gain = f"{(m['accuracy'] - base) * 100:+.1f} pts" if base is not None else "-"
        out.append({
            "model": f"{name} ({m['model']})",
            "held-out accuracy": f"{m['accuracy']:.4f} ({gain})",
            "p95 ms": fmt(m["p95"]),
            "CPU ms/request": fmt(m["cpu_ms_per_request"], 2),
            f"{result['batch_rows']:,} rows": f"{fmt(m['projected_s'], 0)} s"
            + (f" (window {window:g} s)" if window else ""),
            "verdict": "accept" if m["accepted"] else "REJECT: " + "; ".join(m["failed"]),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m antipatterns.online_bigsize.acceptance",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=URL",
                        help="a model server to judge (repeatable)")
    parser.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                        help="a server process of NAME, for its CPU per request (repeatable)")
    parser.add_argument("--slo", type=Path, default=PLAN, help="plan and gate (slo.toml)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the reports")
    args = parser.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.model)
    pids: dict[str, list[int]] = {}
    for item in args.pid:
        name, _, pid = item.partition("=")
        pids.setdefault(name, []).append(int(pid))
    out = args.out or Path(tempfile.mkdtemp(prefix="acceptance-"))
    try:
        plan = load_plan(args.slo)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(t.metric.endswith("cpu_ms_per_request") for t in plan.gate()):
        for name in sorted(set(models) - set(pids)):
            print(f"note: no --pid {name}=PID: its CPU per request is not measured, and the "
                  "CPU threshold fails", file=sys.stderr)
    try:
        result = evaluate(models, plan, out, pids=pids)
    except (LoadTestError, httpx.HTTPError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(rows(result)))
    ship = result["ship"]
    print(f"\nship: {ship or 'none of them'}; reports in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
