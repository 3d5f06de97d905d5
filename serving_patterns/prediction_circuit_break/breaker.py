"""The error breaker of S10: closed -> open -> half-open -> closed, one per backend.

Closed, every call goes through and `FAIL_THRESHOLD` consecutive failures open the breaker.
Open, no call goes through until `COOLDOWN_S` has passed; then the breaker is half-open and
lets exactly one trial call through: its success closes the breaker, its failure opens it
again for another cooldown. Each call carries a `Ticket` with the breaker's generation, so a
slow call that started before a state change cannot close or open the breaker afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# the value of the Prometheus state gauge for each state
STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


class BreakerOpen(RuntimeError):
    """`begin` was called while the breaker admits no call."""


@dataclass(frozen=True)
class Ticket:
    """One admitted call: the generation it was admitted in, and whether it is the trial."""

    generation: int
    trial: bool


class CircuitBreaker:
    """Counts consecutive failures of one backend and refuses calls while it is open."""

    def __init__(
        self,
        fail_threshold: int,
        cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[State, State], None] | None = None,
    ) -> None:
        if fail_threshold < 1:
            raise ValueError(f"fail_threshold must be at least 1, got {fail_threshold}")
        if cooldown_s <= 0:
            raise ValueError(f"cooldown_s must be positive, got {cooldown_s}")
        self.fail_threshold = fail_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_change = on_change
        self._state = State.CLOSED
        self.generation = 0
        self.consecutive_failures = 0
        self.failures = 0
        self.successes = 0
        self.opened = 0
        self.opened_at: float | None = None  # wall-clock time of the last opening
        self._opened_mono = 0.0
        self._trial_out = False

    # -- state --------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; an open breaker turns half-open once its cooldown is over."""
        if self._state is State.OPEN and self.clock() - self._opened_mono >= self.cooldown_s:
            self._move(State.HALF_OPEN)
        return self._state

    def _move(self, new: State) -> None:
        old, self._state = self._state, new
        self.generation += 1
        self._trial_out = False
        if new is State.OPEN:
            self.opened += 1
            self._opened_mono = self.clock()
            self.opened_at = self.wall_clock()
        if new is State.CLOSED:
            self.consecutive_failures = 0
        if self.on_change is not None:
            self.on_change(old, new)

    def admits(self) -> bool:
        """Whether a call may go through now (closed, or half-open with no trial out yet)."""
        state = self.state
        return state is State.CLOSED or (state is State.HALF_OPEN and not self._trial_out)

    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a trial through (0 unless open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self._opened_mono))

    # -- one call -----------------------------------------------------------------------------

    def begin(self) -> Ticket:
        """Admit one call; in half-open it is the one trial. Check `admits()` first."""
        if not self.admits():
            raise BreakerOpen(f"the breaker is {self._state} and admits no call")
        trial = self._state is State.HALF_OPEN
        if trial:
            self._trial_out = True
        return Ticket(self.generation, trial)

    def success(self, ticket: Ticket) -> None:
        self.successes += 1
        if ticket.generation != self.generation:
            return  # admitted before the last state change: it says nothing about now
        self.consecutive_failures = 0
        if self._state is State.HALF_OPEN:
            self._move(State.CLOSED)

    def failure(self, ticket: Ticket) -> None:
        self.failures += 1
        if ticket.generation != self.generation:
            return
        if self._state is State.HALF_OPEN:
            self._move(State.OPEN)
            return
        self.consecutive_failures += 1
        if self._state is State.CLOSED and self.consecutive_failures >= self.fail_threshold:
            self._move(State.OPEN)

    def abandon(self, ticket: Ticket) -> None:
        """The call ended with no verdict (e.g. the client went away): free the trial slot."""
        if ticket.trial and ticket.generation == self.generation:
            self._trial_out = False

    def snapshot(self) -> dict[str, Any]:
        state = self.state
        opened_at = (
            datetime.fromtimestamp(self.opened_at, UTC).isoformat(timespec="milliseconds")
            if self.opened_at is not None else None
        )
        return {
            "state": str(state),
            "consecutive_failures": self.consecutive_failures,
            "fail_threshold": self.fail_threshold,
            "cooldown_s": self.cooldown_s,
            "failures": self.failures,
            "successes": self.successes,
            "opened": self.opened,
            "opened_at": opened_at,
            "retry_in_s": round(self.retry_in_s(), 3),
            "trial_in_flight": state is State.HALF_OPEN and self._trial_out,
        }
