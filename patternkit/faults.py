"""Fault injection: deterministic slowness and failures for tests and demos.

`DELAY_MS` adds an `await asyncio.sleep` per call (with `blocking`, a `time.sleep` that holds
the whole process, as a CPU-bound model does, without needing a free core). `FAIL_MODE` takes
`none`, `always`, `first_n:N` (the first N calls fail), `every:N` (every Nth call fails: an
error rate of exactly 1/N, for statistical tests that must not depend on chance) or `rate:P`
(each call fails with probability P). Patterns that are about failure (timeouts, breakers,
retries, guards) are proven with these knobs.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field


class InjectedFault(RuntimeError):
    """Raised by `Faults.check` when FAIL_MODE says this call fails."""


@dataclass
class Faults:
    delay_ms: int = 0
    mode: str = "none"
    threshold: float = 0.0
    blocking: bool = False
    calls: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def parse(cls, fail_mode: str, delay_ms: int = 0, blocking: bool = False) -> Faults:
        """Parse FAIL_MODE; a malformed value is a ValueError naming the accepted forms."""
        faults = cls._parse(fail_mode, delay_ms)
        faults.blocking = blocking
        return faults

    @classmethod
    def _parse(cls, fail_mode: str, delay_ms: int) -> Faults:
        text = (fail_mode or "none").strip().lower()
        name, _, arg = text.partition(":")
        try:
            if name in ("none", "always") and not arg:
                return cls(delay_ms=delay_ms, mode=name)
            if name == "first_n" and int(arg) >= 0:
                return cls(delay_ms=delay_ms, mode=name, threshold=int(arg))
            if name == "every" and int(arg) >= 1:
                return cls(delay_ms=delay_ms, mode=name, threshold=int(arg))
            if name == "rate" and 0.0 <= float(arg) <= 1.0:
                return cls(delay_ms=delay_ms, mode=name, threshold=float(arg))
        except ValueError:
            pass
        raise ValueError(
            f"FAIL_MODE={fail_mode!r} is not one of: none, always, first_n:N, every:N (N>=1), "
            "rate:P (0<=P<=1)"
        )

    def should_fail(self) -> bool:
        """Count one call and say whether it fails."""
        self.calls += 1
        if self.mode == "always":
            return True
        if self.mode == "first_n":
            return self.calls <= self.threshold
        if self.mode == "every":
            return self.calls % int(self.threshold) == 0
        if self.mode == "rate":
            return self._rng.random() < self.threshold
        return False

    def check(self) -> None:
        if self.should_fail():
            raise InjectedFault(f"injected failure ({self.mode}, call {self.calls})")

    def apply_sync(self) -> None:
        """Sleep DELAY_MS, then fail if FAIL_MODE says so (a worker's blocking job)."""
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)
        self.check()

    async def apply(self) -> None:
        """Sleep DELAY_MS, then fail if FAIL_MODE says so (async services)."""
        if self.blocking:
            return self.apply_sync()
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        self.check()
