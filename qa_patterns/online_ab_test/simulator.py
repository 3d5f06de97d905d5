"""The seeded users of Q2's demo and tests: a user converts more often after B's answer.

Each user (`patternkit.usersim.SimUser`) has a fixed draw `u`; it converts when `u` is below
the conversion rate of the variant that answered it (`RATES`: B is the better model here,
10% -> 16%), and never after an error. `aa_converts` is the A/A world (no difference).
"""

from __future__ import annotations

from collections.abc import Mapping

from patternkit.client import IRIS_ROWS
from patternkit.usersim import SimUser, Visit, make_users

SEED = 7
RATES: Mapping[str, float] = {"a": 0.10, "b": 0.16}
AA_RATES: Mapping[str, float] = {"a": 0.10, "b": 0.10}


def users(n: int, seed: int = SEED, start: int = 0) -> list[SimUser]:
    """`n` users with jittered iris rows, ids `user-<seed>-<i>`."""
    return make_users(n, seed, IRIS_ROWS, jitter=0.2, start=start)


def converts(user: SimUser, seen: Visit) -> bool:
    """B's answers convert at 16%, A's at 10%."""
    return seen.ok and seen.variant in RATES and user.u < RATES[seen.variant]


def aa_converts(user: SimUser, seen: Visit) -> bool:
    """Both variants convert at 10%."""
    return seen.ok and seen.variant in AA_RATES and user.u < AA_RATES[seen.variant]
