"""S10 unit tests: the breaker's states, the limiter, the token bucket and backend choice."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving_patterns.prediction_circuit_break.breaker import (
    BreakerOpen,
    CircuitBreaker,
    State,
)
from serving_patterns.prediction_circuit_break.limiter import ConcurrencyLimiter, TokenBucket
from serving_patterns.prediction_circuit_break.proxy import (
    Backend,
    CircuitBreakSettings,
    choose,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_breaker(clock: Clock, threshold: int = 3, cooldown_s: float = 2.0) -> CircuitBreaker:
    return CircuitBreaker(threshold, cooldown_s, clock=clock, wall_clock=clock)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.failure(breaker.begin())


def test_consecutive_failures_open_the_breaker() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    fail(breaker, 2)
    breaker.success(breaker.begin())  # a success in between resets the count
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 2
    fail(breaker)
    assert breaker.state is State.OPEN
    assert breaker.opened == 1
    assert breaker.opened_at == clock.now
    assert not breaker.admits()
    with pytest.raises(BreakerOpen):
        breaker.begin()
    assert breaker.retry_in_s() == 2.0


def test_after_the_cooldown_exactly_one_trial_goes_through() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    fail(breaker, 3)
    clock.advance(1.9)
    assert breaker.state is State.OPEN
    assert breaker.retry_in_s() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state is State.HALF_OPEN
    trial = breaker.begin()
    assert trial.trial
    assert not breaker.admits()  # one trial at a time
    assert breaker.snapshot()["trial_in_flight"] is True
    breaker.success(trial)
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.admits()


def test_a_failed_trial_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = make_breaker(clock, threshold=1)
    fail(breaker)
    first_opened_at = clock.now
    clock.advance(2.0)
    fail(breaker)  # the trial
    assert breaker.state is State.OPEN
    assert breaker.opened == 2
    assert breaker.opened_at == first_opened_at + 2.0
    assert breaker.retry_in_s() == 2.0  # a whole new cooldown


def test_an_abandoned_trial_lets_another_trial_go() -> None:
    clock = Clock()
    breaker = make_breaker(clock, threshold=1)
    fail(breaker)
    clock.advance(2.0)
    trial = breaker.begin()
    assert not breaker.admits()
    breaker.abandon(trial)
    assert breaker.state is State.HALF_OPEN
    assert breaker.admits()


def test_a_call_admitted_before_a_state_change_does_not_decide_the_state() -> None:
    clock = Clock()
    breaker = make_breaker(clock, threshold=2)
    slow = breaker.begin()  # admitted while closed, answers late
    fail(breaker, 2)
    assert breaker.state is State.OPEN
    breaker.success(slow)  # a late success does not close an open breaker
    assert breaker.state is State.OPEN
    clock.advance(2.0)
    trial = breaker.begin()
    breaker.failure(slow)  # nor does a late failure reopen a half-open one
    assert breaker.state is State.HALF_OPEN
    breaker.success(trial)
    assert breaker.state is State.CLOSED
    assert (breaker.successes, breaker.failures) == (2, 3)  # but both are counted


def test_state_changes_are_reported_and_snapshotted() -> None:
    clock = Clock()
    changes: list[tuple[State, State]] = []
    breaker = CircuitBreaker(1, 1.0, clock=clock, wall_clock=lambda: 0.0,
                             on_change=lambda old, new: changes.append((old, new)))
    fail(breaker)
    clock.advance(1.0)
    breaker.success(breaker.begin())
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN),
                       (State.HALF_OPEN, State.CLOSED)]
    snap = breaker.snapshot()
    assert snap["state"] == "closed"
    assert snap["opened"] == 1
    assert snap["opened_at"] == "1970-01-01T00:00:00.000+00:00"


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, 0.0)])
def test_breaker_settings_are_checked(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(threshold, cooldown)


def test_the_limiter_never_holds_more_than_its_limit() -> None:
    limiter = ConcurrencyLimiter(2)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    assert not limiter.free
    limiter.release()
    assert limiter.try_acquire()
    assert (limiter.in_flight, limiter.max_in_flight, limiter.admitted) == (2, 2, 3)
    limiter.release()
    limiter.release()
    with pytest.raises(RuntimeError):
        limiter.release()
    with pytest.raises(ValueError):
        ConcurrencyLimiter(0)


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=4, clock=clock)
    assert [bucket.try_take() for _ in range(5)] == [True] * 4 + [False]
    assert bucket.rejected == 1
    assert bucket.wait_s() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.advance(60)  # an idle minute refills to the burst, not beyond
    assert sum(bucket.try_take() for _ in range(10)) == 4
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


def make_backends(clock: Clock, n: int = 2, limit: int = 2) -> list[Backend]:
    return [Backend(f"http://b{i}", ConcurrencyLimiter(limit), make_breaker(clock, threshold=1))
            for i in range(n)]


def test_choose_takes_the_least_busy_backend_and_takes_turns_on_ties() -> None:
    a, b = make_backends(Clock())
    assert choose([a, b], 0) is a
    assert choose([a, b], 1) is b
    a.limiter.try_acquire()
    assert choose([a, b], 0) is b


def test_choose_says_why_no_backend_can_take_the_call() -> None:
    clock = Clock()
    a, b = make_backends(clock)
    for backend in (a, b):
        backend.limiter.try_acquire()
        backend.limiter.try_acquire()
    assert choose([a, b], 0) == "overloaded"
    fail(a.breaker)  # open and full: still a capacity problem
    assert choose([a, b], 0) == "overloaded"
    fail(b.breaker)
    assert choose([a, b], 0) == "breaker_open"


def test_choose_gives_a_half_open_backend_its_trial_first() -> None:
    clock = Clock()
    a, b = make_backends(clock)
    fail(b.breaker)
    assert choose([a, b], 1) is a  # b is open
    clock.advance(2.0)
    a.limiter.try_acquire()
    b.limiter.try_acquire()  # b is busier, but half-open: the next call is its trial
    assert choose([a, b], 0) is b


def test_fallback_status_is_503_or_200(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_URLS", "http://a")
    monkeypatch.setenv("FALLBACK_STATUS", "200")
    assert CircuitBreakSettings().fallback_status == 200
    monkeypatch.setenv("FALLBACK_STATUS", "404")
    with pytest.raises(ValidationError, match="FALLBACK_STATUS"):
        CircuitBreakSettings()
