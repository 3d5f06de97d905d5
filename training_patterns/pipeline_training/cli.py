"""T2's command line: start, watch, retry and re-run pipeline runs through the orchestrator.

    python -m training_patterns.pipeline_training.cli run --set prep.test_size=0.25
    python -m training_patterns.pipeline_training.cli show RUN_ID
    python -m training_patterns.pipeline_training.cli retry RUN_ID
    python -m training_patterns.pipeline_training.cli step RUN_ID evaluate

`run`, `retry` and `step` follow the run until it settles, printing a line whenever a step
changes state, then the same step table as `show`: state, cache hit or run, the worker and
queue, wait and duration, executions. Exit code 0 when the run succeeded, 1 when it failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

COLUMNS = ("step", "state", "cache", "worker", "queue", "waited_s", "duration_s", "executions")


def table(view: dict[str, Any]) -> str:
    rows = [[str(s.get(c) if s.get(c) is not None else "-") for c in COLUMNS]
            for s in view["steps"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    head = f"run {view['run_id']}  {view['state']}"
    if view.get("failed_step"):
        head += f" at {view['failed_step']}: {view['error']}"
    if view.get("model"):
        head += f"  model {view['model']['name']} {view['model']['version']} " \
                f"(accuracy {view['model']['accuracy']})"
    return "\n".join([head, *lines])


def follow(client: httpx.Client, run_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll the run, printing each step's state changes, until it is no longer running."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    t0 = time.monotonic()
    while True:
        view: dict[str, Any] = client.get(f"/runs/{run_id}").json()
        for step in view["steps"]:
            now = step["state"] + (f" ({step['cache']})" if step["cache"] and
                                   step["state"] == "done" else "")
            if seen.get(step["step"]) != now:
                seen[step["step"]] = now
                where = f" on {step['queue']} by {step['worker']}" if step["worker"] else ""
                print(f"{time.monotonic() - t0:6.2f}s  {step['step']:<8} {now}{where}",
                      flush=True)
        if view["state"] != "running":
            return view
        if time.monotonic() > deadline:
            print(f"still running after {timeout_s:.0f} s, at {view['current_step']}")
            return view
        time.sleep(0.1)


def parse_sets(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """`step.param=value` pairs as the request's params (values read as JSON when they parse)."""
    params: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        step, _, param = name.partition(".")
        if not (step and param and _):
            raise SystemExit(f"--set {pair!r}: expected step.param=value")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        params.setdefault(step, {})[param] = value
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_patterns.pipeline_training.cli")
    parser.add_argument("--api", default=os.environ.get("PIPELINE_API", "http://127.0.0.1:8000"))
    parser.add_argument("--timeout", type=float, default=120.0)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("run", help="start a run and follow it")
    start.add_argument("--set", action="append", default=[], metavar="STEP.PARAM=VALUE")
    start.add_argument("--always-run", action="append", default=[], metavar="STEP")
    start.add_argument("--fail", action="append", default=[], metavar="STEP",
                       help="inject one failure into STEP")
    start.add_argument("--delay", action="append", default=[], metavar="STEP=MS")
    for name in ("show", "retry"):
        sub.add_parser(name).add_argument("run_id")
    rerun = sub.add_parser("step", help="re-run one step of a finished run")
    rerun.add_argument("run_id")
    rerun.add_argument("step")
    rerun.add_argument("--downstream", action="store_true")
    args = parser.parse_args(argv)

    with httpx.Client(base_url=args.api, timeout=10) as client:
        if args.command == "show":
            resp = client.get(f"/runs/{args.run_id}")
        elif args.command == "retry":
            resp = client.post(f"/runs/{args.run_id}/retry")
        elif args.command == "step":
            resp = client.post(f"/runs/{args.run_id}/steps/{args.step}",
                               params={"downstream": str(args.downstream).lower()})
        else:
            faults: dict[str, dict[str, int]] = {s: {"fail_times": 1} for s in args.fail}
            for pair in args.delay:
                step, _, ms = pair.partition("=")
                faults.setdefault(step, {})["delay_ms"] = int(ms)
            resp = client.post("/runs", json={"params": parse_sets(args.set),
                                              "always_run": args.always_run, "faults": faults})
        if resp.status_code >= 400:
            print(f"{resp.status_code}: {resp.text}", file=sys.stderr)
            return 2
        view = resp.json()
        if args.command != "show":
            view = follow(client, view["run_id"], args.timeout)
    print(table(view))
    return 0 if view["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
