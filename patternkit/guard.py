"""The automatic guard of an experiment: checks B's guardrails every interval, rolls B back.

The semantics are those of progressive-delivery controllers: like Flagger's canary analysis
(`analysis.interval`, `analysis.threshold`: "max number of failed metric checks before
rollback") the guard runs one check every `interval_s`, counts the checks that failed during
the phase, and at `threshold` failed checks sends all traffic back to A; like Argo Rollouts'
`inconclusive` measurements, a check with fewer than `min_requests` requests in a variant
neither passes nor fails. A check fails when any guardrail of the report
(`patternkit.experiment.guardrails`: error rate, p99 latency, optionally the KPI) has status
`fail`. A new phase (new weights) starts a new analysis with no failed checks, as Flagger does
for a new revision.

`Guard.judge` is the pure step (one check's outcome from a report); `Guard.run` is the
lifespan task that evaluates and judges every interval and calls `rollback(reason)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

log = logging.getLogger("patternkit.guard")

Outcome = Literal["passed", "failed", "skipped"]
GuardState = Literal["idle", "watching", "rolled_back"]
HISTORY = 20  # checks kept for /ab/guard


@dataclass(frozen=True)
class GuardPolicy:
    """When and how readily the guard acts (GUARD_INTERVAL_S, GUARD_THRESHOLD, ...)."""

    interval_s: float = 1.0
    threshold: int = 3
    min_requests: int = 50

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.threshold < 1 or self.min_requests < 0:
            raise ValueError("interval_s must be > 0, threshold >= 1, min_requests >= 0")


@dataclass(frozen=True)
class Check:
    """One check of one phase: when, its outcome, and the guardrails that failed."""

    phase: int
    at: float
    outcome: Outcome
    failed: list[str]
    detail: str


class Guard:
    """The failed-check count of the current phase and the rollback at `threshold`."""

    def __init__(self, policy: GuardPolicy, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self.phase: int | None = None
        self.state: GuardState = "idle"
        self.checks = 0
        self.failed_checks = 0
        self.reason: str | None = None  # of the last rollback, kept across phases
        self.rolled_back_at: float | None = None
        self.rolled_back_phase: int | None = None
        self.history: deque[Check] = deque(maxlen=HISTORY)

    def watch(self, phase: int, b_gets_traffic: bool) -> None:
        """A new phase starts: a fresh analysis (watching while B gets traffic)."""
        if phase == self.phase:
            return
        self.phase = phase
        self.state = "watching" if b_gets_traffic else "idle"
        self.checks = self.failed_checks = 0

    def judge(self, phase: int, report: Mapping[str, Any]) -> Check | None:
        """Count one check of `phase` from its report (`patternkit.experiment.report`); the
        check that reaches the threshold turns the guard `rolled_back`. None when the guard is
        not watching that phase (idle, rolled back, or the phase changed meanwhile)."""
        if phase != self.phase or self.state != "watching":
            return None
        variants = report["variants"]
        fewest = min(variants["a"]["requests"], variants["b"]["requests"])
        rails = report["guardrails"].values()
        failed = [g for g in rails if g["status"] == "fail"]
        if fewest < self.policy.min_requests:
            check = Check(phase, self.clock(), "skipped", [],
                          f"{fewest} requests in a variant, judged from "
                          f"{self.policy.min_requests} (GUARD_MIN_REQUESTS)")
        elif failed:
            check = Check(phase, self.clock(), "failed", [g["name"] for g in failed],
                          "; ".join(g["detail"] for g in failed))
        else:
            check = Check(phase, self.clock(), "passed", [],
                          "; ".join(f"{g['name']} {g['status']}" for g in rails))
        self.checks += 1
        self.history.append(check)
        if check.outcome == "failed":
            self.failed_checks += 1
            log.warning("guard: check %d of phase %d failed (%d/%d): %s", self.checks, phase,
                        self.failed_checks, self.policy.threshold, check.detail)
            if self.failed_checks >= self.policy.threshold:
                self.state = "rolled_back"
                self.rolled_back_at = check.at
                self.rolled_back_phase = phase
                self.reason = (f"{self.failed_checks} failed checks (GUARD_THRESHOLD="
                               f"{self.policy.threshold}) in phase {phase}; last: {check.detail}")
        return check

    @property
    def should_roll_back(self) -> bool:
        return self.state == "rolled_back"

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "phase": self.phase,
            "checks": self.checks,
            "failed_checks": self.failed_checks,
            "policy": asdict(self.policy),
            "last_rollback": {"phase": self.rolled_back_phase, "at": self.rolled_back_at,
                              "reason": self.reason} if self.rolled_back_phase else None,
            "history": [asdict(c) for c in self.history],
        }

    async def run(
        self,
        current: Callable[[], tuple[int, bool]],
        evaluate: Callable[[int], Awaitable[Mapping[str, Any]]],
        rollback: Callable[[int, str], Awaitable[None]],
    ) -> None:
        """Every interval: follow the current phase (`current()` -> (phase, B gets traffic)),
        evaluate its report and judge it; at the threshold call `rollback(phase, reason)`
        once. Errors in a check are logged and the check is not counted (a database that is
        briefly locked must not roll back a healthy B)."""
        while True:
            await asyncio.sleep(self.policy.interval_s)
            phase, live = current()
            self.watch(phase, live)
            if self.state != "watching":
                continue
            try:
                found = await evaluate(phase)
            except Exception as exc:  # the next interval tries again
                log.warning("guard: cannot evaluate phase %d: %s: %s", phase,
                            type(exc).__name__, exc)
                continue
            check = self.judge(phase, found)
            if check is not None and self.should_roll_back:
                assert self.reason is not None
                log.error("guard: rolling B back: %s", self.reason)
                await rollback(phase, self.reason)
