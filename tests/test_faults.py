"""patternkit.faults: FAIL_MODE parsing and behaviour."""

from __future__ import annotations

import pytest

from patternkit.faults import Faults


def test_modes() -> None:
    assert [Faults.parse("none").should_fail() for _ in range(3)] == [False] * 3
    assert [Faults.parse("always").should_fail() for _ in range(3)] == [True] * 3
    first = Faults.parse("first_n:2")
    assert [first.should_fail() for _ in range(4)] == [True, True, False, False]
    every = Faults.parse("every:3")
    assert [every.should_fail() for _ in range(7)] == [False, False, True] * 2 + [False]
    rate = Faults.parse("rate:0.5")
    share = sum(rate.should_fail() for _ in range(2000)) / 2000
    assert 0.4 < share < 0.6


@pytest.mark.parametrize(
    "bad", ["sometimes", "first_n:x", "rate:2", "always:1", "every:0", "every:x"]
)
def test_bad_modes_name_the_accepted_forms(bad: str) -> None:
    with pytest.raises(ValueError, match="first_n:N"):
        Faults.parse(bad)


@pytest.mark.parametrize("blocking", [False, True])
def test_a_blocking_delay_holds_the_event_loop_and_a_plain_one_yields(blocking: bool) -> None:
    """Two calls at once: a yielding delay overlaps them; a blocking one runs them in turn
    (counted by which started before the other ended, not by timing)."""
    import asyncio

    faults = Faults.parse("none", delay_ms=20, blocking=blocking)
    events: list[str] = []

    async def call(name: str) -> None:
        events.append(f"{name} start")
        await faults.apply()
        events.append(f"{name} end")

    async def both() -> None:
        await asyncio.gather(call("a"), call("b"))

    asyncio.run(both())
    if blocking:
        assert events == ["a start", "a end", "b start", "b end"]
    else:
        assert events == ["a start", "b start", "a end", "b end"]
