"""Load shedding for S10: a concurrency cap per backend and an optional token bucket.

`ConcurrencyLimiter` holds at most `limit` slots; a request that finds no free slot is shed at
once instead of queueing, so the backend never has more than `limit` of our calls in flight.
`TokenBucket` caps the admitted rate (`MAX_RPS`) with a burst of at most one second's worth.
Both are plain, synchronous objects: the proxy uses them from one event loop thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class ConcurrencyLimiter:
    """At most `limit` calls at once; `try_acquire` never waits."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self.max_in_flight = 0
        self.admitted = 0

    @property
    def free(self) -> bool:
        return self.in_flight < self.limit

    def try_acquire(self) -> bool:
        """Take a slot if one is free; never wait for one."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        self.admitted += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return True

    def release(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("release() without a matching try_acquire()")
        self.in_flight -= 1

    def snapshot(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "admitted": self.admitted,
        }


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; each admitted call takes one."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a token bucket needs a positive rate, got {rate}")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()
        self.rejected = 0

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_take(self) -> bool:
        """Take a token if there is one; count a rejection otherwise."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.rejected += 1
        return False

    def wait_s(self) -> float:
        """Seconds until the next token is available (0 when one is)."""
        self._refill()
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def snapshot(self) -> dict[str, float]:
        self._refill()
        return {"rate": self.rate, "burst": self.burst,
                "tokens": math.floor(self.tokens * 100) / 100, "rejected": self.rejected}
