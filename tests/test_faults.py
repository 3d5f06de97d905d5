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
