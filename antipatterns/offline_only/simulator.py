"""The seeded users of QA1: each wants the class of its row, and converts on a right answer.

A user's row is an iris row with N(0, 0.2) noise on the four measured features, and 0 for the
leaked `label_echo` (nobody knows it at request time). The user converts with probability
`P_RIGHT` (50%) when the model answers the row's true class and `P_WRONG` (5%) otherwise: the
factor the offline set misses is that the leak is not there online.
"""

from __future__ import annotations

from dataclasses import replace

from antipatterns.offline_only.trainer import UNKNOWN
from patternkit.models import load_dataset
from patternkit.usersim import SimUser, Visit, make_users

SEED = 3
P_RIGHT = 0.50
P_WRONG = 0.05


def users(n: int, seed: int = SEED, start: int = 0) -> list[SimUser]:
    X, y, _, _ = load_dataset("iris")
    rows = [(list(map(float, x)), int(label)) for x, label in zip(X, y, strict=True)]
    made = make_users(n, seed, rows, jitter=0.2, start=start)
    return [replace(u, row=[*u.row, UNKNOWN]) for u in made]


def converts(user: SimUser, seen: Visit) -> bool:
    if not seen.ok or seen.prediction is None:
        return False
    return user.u < (P_RIGHT if seen.prediction == user.label else P_WRONG)
