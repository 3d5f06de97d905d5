"""Demo traffic for SA1: the acceptance report of the heavy and the light model, side by side.

Both servers get the same load (the loading test's runner, an open loop at 20 requests a
second, random batches of 1-100 rows) and the same gate; the table shows held-out accuracy
beside p95 latency, CPU per request and the projected time of a 1,000,000-row batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from antipatterns.online_bigsize.acceptance import PLAN, evaluate, rows
from patternkit.loadtest import load_plan
from patternkit.topology import Stack

MODELS = ("heavy", "light")


def accept(stack: Stack, work: Path | None = None) -> dict[str, Any]:
    """The acceptance report of both model servers of `stack`."""
    pids = {m: [p.popen.pid for p in stack.members(m) if p.popen is not None] for m in MODELS}
    return evaluate({m: stack.url(m) for m in MODELS}, load_plan(PLAN),
                    work or Path(stack.run_dir) / "acceptance", pids=pids)


def run(stack: Stack) -> list[dict[str, Any]]:
    result = accept(stack)
    out: list[dict[str, Any]] = rows(result)
    out.append({"model": "ship", "verdict": result["ship"] or "none"})
    return out
