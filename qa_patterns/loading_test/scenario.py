"""Demo traffic for Q3: size the predictor with Locust, then gate it with the SLO file.

First the closed loop against 1 worker and 2 workers, taking turns in one Locust run; then
the whole plan (closed + open loop) against the 2 workers, with the gate's verdict and the
report files; an oversized batch while the load runs; last, the single worker slowed on
purpose (DELAY_MS), which the same gate fails. The helpers are shared with the tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from patternkit.client import Client, wait_until
from patternkit.loadtest import LoadPlan, compare, load_plan, run_plan, write_chart, write_report
from patternkit.loadtest.report import fmt
from patternkit.topology import Stack

PLAN = Path(__file__).with_name("slo.toml")
SIDES = {"1 worker": ("solo_lb", "solo"), "2 workers": ("lb", "predictor")}
N_FEATURES = 8


def side_pids(stack: Stack, side: str) -> list[int]:
    """The predictor processes behind one side (their CPU is what a request costs)."""
    return [p.popen.pid for p in stack.members(SIDES[side][1]) if p.popen is not None]


def compare_workers(stack: Stack, plan: LoadPlan, work: Path, rounds: int = 2,
                    segment_s: float = 1.5) -> dict[str, dict[str, Any]]:
    """The closed loop on 1 and 2 workers, taking turns (1, 2, 1, 2 ...) in one Locust run."""
    return compare({side: stack.url(lb) for side, (lb, _) in SIDES.items()}, plan, work,
                   rounds=rounds, segment_s=segment_s,
                   pids={side: side_pids(stack, side) for side in SIDES})


def oversized_row(n_rows: int) -> dict[str, Any]:
    return {"data": [[0.5] * N_FEATURES] * n_rows}


def healthy(client: Client) -> bool:
    return client.get("/health").status_code == 200 and client.get("/ready").status_code == 200


def healthy_at(url: str) -> bool:
    with Client(url) as client:
        return healthy(client)


class Oversized(threading.Thread):
    """While a load runs: oversized batches (and one body over MAX_BODY_BYTES) to the entry,
    and the health probes of the balancer and both workers after each."""

    def __init__(self, stack: Stack, batches: tuple[int, ...] = (101, 1000, 5000)) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.cases: list[tuple[str, dict[str, Any]]] = [
            (f"a batch of {n:,} rows", {"json": oversized_row(n)}) for n in batches]
        self.cases.append(("a 2 MiB body", {"content": b"[" * (2 << 20),
                                            "headers": {"content-type": "application/json"}}))
        self.replies: list[tuple[str, int, str]] = []  # case, status, message
        self.health: list[bool] = []

    def run(self) -> None:
        with Client(self.stack.url(), timeout=30) as lb:
            started = sum(lb.stats()["forwarded"].values())
            wait_until(lambda: sum(lb.stats()["forwarded"].values()) > started + 5,
                       timeout=60, what="the load reaching the balancer")
            for case, kwargs in self.cases:
                resp = lb.post("/predict", **kwargs)
                self.replies.append((case, resp.status_code, resp.json().get("message", "")))
                self.health.append(healthy(lb) and all(
                    healthy_at(u) for u in self.stack.urls("predictor")))


@contextmanager
def slowed(stack: Stack, delay_ms: int, *services: str, blocks: bool = False
           ) -> Iterator[None]:
    """The predictor `services` (default: solo) restarted with DELAY_MS (held, with `blocks`),
    then restored."""
    names = services or ("solo",)
    for name in names:
        stack.restart(name, env={"DELAY_MS": str(delay_ms), "DELAY_BLOCKS": str(blocks)})
    try:
        yield
    finally:
        for name in names:
            stack.restart(name, env={"DELAY_MS": "0", "DELAY_BLOCKS": "False"})


def run(stack: Stack) -> list[dict[str, Any]]:
    plan = load_plan(PLAN)
    work = Path(stack.run_dir) / "loadtest"
    rows: list[dict[str, Any]] = []

    sides = compare_workers(stack, plan, work / "workers")
    write_chart(work / "workers.png", {side: {"closed": s} for side, s in sides.items()})
    for side, s in sides.items():
        rows.append({"step": f"closed loop, {plan.closed.users} users: {side}",
                     "req/s": fmt(s["rps"]),
                     "p50/p95/p99 ms": "/".join(fmt(s[k]) for k in ("p50", "p95", "p99")),
                     "errors": f"{s['errors']}/{s['requests']}",
                     "result": f"CPU {fmt(s['cpu_ms_per_request'], 2)} ms/request"})
    ratio = sides["2 workers"]["rps"] / max(sides["1 worker"]["rps"], 1e-9)
    rows.append({"step": "2 workers / 1 worker", "req/s": f"{ratio:.2f}x",
                 "result": f"chart: {work / 'workers.png'}"})


    oversized = Oversized(stack)
    oversized.start()
    report = run_plan(stack.url(), plan, work / "2-workers", pids=side_pids(stack, "2 workers"),
                      label="2 workers")
    oversized.join(timeout=60)
    paths = write_report(report, work / "2-workers")
    for phase in plan.phases:
        p = report[phase]
        rows.append({
            "step": f"plan on 2 workers: {phase} loop" + (
                f" at {fmt(p['offered_rps'])}/s" if phase == "open" else ""),
            "req/s": fmt(p["rps"]),
            "p50/p95/p99 ms": "/".join(fmt(p[k]) for k in ("p50", "p95", "p99")),
            "errors": f"{p['errors']}/{p['requests']}",
            "result": (f"{p['dropped']} of {p['offered']} not sent on time"
                       if phase == "open" else
                       "Locust (rounded): " + "/".join(fmt(p["locust"][k], 0)
                                                       for k in ("p50", "p95", "p99")))})
    failed = [f"{c['metric']} {c['condition']}" for c in report["checks"] if not c["pass"]]
    rows.append({"step": "SLO gate (slo.toml)", "result": "PASS" if report["slo_pass"]
                 else f"FAIL: {', '.join(failed)}"})
    rows.append({"step": "report", "result": f"{paths['md']} (+ .json, .png)"})
    for case, status, message in oversized.replies:
        rows.append({"step": f"meanwhile: {case}", "result": f"{status}: {message}"})
    rows.append({"step": "meanwhile: /health and /ready after each",
                 "result": "200" if all(oversized.health) else "NOT healthy"})

    with slowed(stack, 300):
        slow = run_plan(stack.url("solo_lb"), plan, work / "slowed", label="DELAY_MS=300")
    failed = [f"{c['metric']} {c['condition']} (got {fmt(c['value'])})"
              for c in slow["checks"] if not c["pass"]]
    for phase in plan.phases:
        p = slow[phase]
        rows.append({"step": f"1 worker slowed (DELAY_MS=300): {phase} loop",
                     "req/s": fmt(p["rps"]),
                     "p50/p95/p99 ms": "/".join(fmt(p[k]) for k in ("p50", "p95", "p99")),
                     "errors": f"{p['errors']}/{p['requests']}",
                     "result": (f"{p['dropped']} of {p['offered']} not sent on time"
                                if phase == "open" else "")})
    rows.append({"step": "SLO gate, slowed", "result": "PASS" if slow["slo_pass"]
                 else f"FAIL (exit 99): {', '.join(failed)}"})
    return rows
