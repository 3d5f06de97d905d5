"""Seeded simulated users for an online experiment: who they are, what they send, if they convert.

A `SimUser` has an id, an input row (and its true class, when a pattern needs it) and one
uniform draw `u`, all made from (seed, index) alone: whether a user converts does not depend
on the order users arrive in, on threads, or on the other users. A user converts when `u` is
below the conversion probability of what it was shown (the pattern's `converts` rule), so the
same users are compared across variants (common random numbers). `drive` sends each user's
request through an A/B proxy (`X-User-ID`), posts a conversion event (`POST /events`) for
those who convert, and returns the visits in the users' order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from patternkit.client import Client


@dataclass(frozen=True)
class SimUser:
    id: str
    row: list[float]
    u: float  # the user's fixed draw in [0, 1): converts when u < P(convert | what it saw)
    label: int | None = None  # the true class of its row (what it really wants)


@dataclass(frozen=True)
class Visit:
    """One user's request as the user saw it, and whether it then converted."""

    user: SimUser
    status: int
    request_id: str | None
    variant: str | None
    phase: int | None
    body: dict[str, Any] = field(default_factory=dict)
    converted: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def prediction(self) -> int | None:
        found = self.body.get("prediction")
        return int(found[0]) if self.ok and found else None


def make_users(
    n: int, seed: int, rows: Sequence[tuple[Sequence[float], int]], *, jitter: float = 0.0,
    prefix: str = "user", start: int = 0,
) -> list[SimUser]:
    """`n` users; user i picks a row of `rows` (with its class), adds N(0, jitter) noise to
    each feature (rounded to 0.01) and draws its `u`, from the generator seeded [seed, i]."""
    users = []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        features, label = rows[int(rng.integers(len(rows)))]
        row = [round(float(x) + (float(rng.normal(0, jitter)) if jitter else 0.0), 2)
               for x in features]
        users.append(SimUser(f"{prefix}-{seed}-{i}", row, float(rng.random()), int(label)))
    return users


def visit(client: Client, user: SimUser) -> Visit:
    """POST the user's row to /predict as that user."""
    resp = client.post("/predict", json={"data": [user.row]}, headers={"x-user-id": user.id})
    phase = resp.headers.get("x-ab-phase")
    try:
        body = resp.json()
    except ValueError:
        body = {}
    return Visit(user, resp.status_code, resp.headers.get("x-request-id"),
                 resp.headers.get("x-ab-variant"), int(phase) if phase else None,
                 body if isinstance(body, dict) else {})


def convert(client: Client, request_id: str, kind: str = "conversion") -> None:
    client.post("/events", json={"request_id": request_id, "kind": kind}).raise_for_status()


def drive(
    base_url: str, users: Sequence[SimUser], converts: Callable[[SimUser, Visit], bool], *,
    workers: int = 4, kind: str = "conversion",
) -> list[Visit]:
    """Each user visits once; a converting one then posts its event. `workers` threads, one
    client each; the result is in the users' order and does not depend on `workers`."""
    local = threading.local()
    clients: list[Client] = []
    lock = threading.Lock()

    def client() -> Client:
        found: Client | None = getattr(local, "client", None)
        if found is None:
            found = Client(base_url, timeout=30.0)
            local.client = found
            with lock:
                clients.append(found)
        return found

    def one(user: SimUser) -> Visit:
        seen = visit(client(), user)
        if seen.ok and seen.request_id and converts(user, seen):
            convert(client(), seen.request_id, kind)
            return replace(seen, converted=True)
        return seen

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, users))
    finally:
        for c in clients:
            c.close()
