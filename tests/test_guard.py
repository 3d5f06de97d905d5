"""patternkit.guard: Flagger-style checks (interval, failed-check threshold) and the rollback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from patternkit.guard import Guard, GuardPolicy


def view(requests: int = 100, *statuses: str) -> dict[str, Any]:
    """A report as a check reads it: requests per variant and guardrail statuses."""
    rails = {f"rail{i}": {"name": f"rail{i}", "status": s, "detail": f"rail{i} is {s}"}
             for i, s in enumerate(statuses or ("pass",))}
    return {"variants": {"a": {"requests": requests}, "b": {"requests": requests}},
            "guardrails": rails}


def test_failed_checks_add_up_to_the_threshold_and_skipped_ones_do_not_count() -> None:
    guard = Guard(GuardPolicy(threshold=3, min_requests=50), clock=lambda: 12.0)
    guard.watch(1, b_gets_traffic=True)
    outcomes = [guard.judge(1, v) for v in (
        view(10, "fail"),  # too few requests: skipped, however bad
        view(100, "fail"), view(100, "pass", "inconclusive"), view(100, "pass", "fail"))]
    assert [c.outcome for c in outcomes if c] == ["skipped", "failed", "passed", "failed"]
    assert guard.failed_checks == 2 and guard.state == "watching"  # counted, not consecutive
    last = guard.judge(1, view(100, "fail"))
    assert last is not None and last.failed == ["rail0"]
    assert guard.should_roll_back and guard.failed_checks == 3
    assert guard.reason is not None and "3 failed checks" in guard.reason
    assert "rail0 is fail" in guard.reason
    assert guard.judge(1, view(100, "fail")) is None  # rolled back: no more checks
    snap = guard.snapshot()
    assert snap["last_rollback"] == {"phase": 1, "at": 12.0, "reason": guard.reason}
    assert len(snap["history"]) == 5


def test_a_new_phase_is_a_new_analysis() -> None:
    guard = Guard(GuardPolicy(threshold=2))
    guard.watch(1, True)
    guard.judge(1, view(100, "fail"))
    guard.watch(2, True)
    assert (guard.phase, guard.failed_checks, guard.state) == (2, 0, "watching")
    assert guard.judge(1, view(100, "fail")) is None  # a late check of the old phase
    guard.watch(3, b_gets_traffic=False)  # weight 0: nothing to guard
    assert guard.state == "idle" and guard.judge(3, view(100, "fail")) is None


@pytest.mark.parametrize("bad", [{"interval_s": 0}, {"threshold": 0}, {"min_requests": -1}])
def test_policy_bounds(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GuardPolicy(**bad)  # type: ignore[arg-type]


def test_run_checks_every_interval_and_rolls_back_once() -> None:
    guard = Guard(GuardPolicy(interval_s=0.01, threshold=2, min_requests=0))
    phase = {"id": 1, "live": True}
    seen: list[int] = []
    rolled: list[tuple[int, str]] = []

    async def evaluate(p: int) -> dict[str, Any]:
        seen.append(p)
        if len(seen) == 1:
            raise RuntimeError("database is locked")  # not counted, tried again
        return view(100, "fail")

    async def rollback(p: int, reason: str) -> None:
        rolled.append((p, reason))
        phase.update(id=2, live=False)  # the proxy's rollback: weight 0, a new phase

    async def scenario() -> None:
        task = asyncio.create_task(guard.run(lambda: (phase["id"], phase["live"]), evaluate,
                                             rollback))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if rolled and guard.state == "idle":
                break
        await asyncio.sleep(0.05)  # more intervals: idle, so no more evaluations
        task.cancel()

    asyncio.run(scenario())
    assert len(rolled) == 1 and rolled[0][0] == 1
    assert seen == [1, 1, 1]  # the failed evaluation, then two failed checks
    assert guard.state == "idle" and guard.snapshot()["last_rollback"]["phase"] == 1
