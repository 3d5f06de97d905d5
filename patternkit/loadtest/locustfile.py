"""The Locust users of the load runner: run inside `python -m locust -f` only, never imported.

One Locust process runs a plan's phases one after the other (LOADTEST_PHASES):
- `closed`: `ClosedLoopUser`s send back to back for LOADTEST_CLOSED_SECONDS (a closed loop:
  capacity at N concurrent callers). With several LOADTEST_TARGETS (base URLs) they take turns
  of LOADTEST_SEGMENT_S on each, round after round, so that servers compared in one run share
  whatever else the machine is doing.
- `open`: `OpenLoopUser`s follow a constant-arrival-rate schedule fixed in advance (an open
  loop, as k6's constant-arrival-rate executor and wrk2): slot i is due at t0 + i/rate whatever
  the server does, a free user takes the next slot, and a slot no user could send within
  LOADTEST_LATE_MS of its time is not sent but counted as dropped. Latency counts from the due
  time, so a server that stalls cannot hide its queue (coordinated omission).
Each phase starts with LOADTEST_<PHASE>_WARMUP_S of requests that are sent but not measured.

Every request is recorded unrounded ([due, sent, done, status, rows, target]; perf_counter
seconds, due -1 in the closed loop) and written as JSON to LOADTEST_RECORD when the test
stops, with Locust's own summary per phase (from response times it rounds: to the ms below
100 ms, to 10 ms below 1 s, then to 100 ms) and, for LOADTEST_PIDS (`pid,pid;pid`: one group
per target), the CPU those processes used during the phase (/proc schedstat, nanoseconds).
Bodies: LOADTEST_BODY (one fixed body), LOADTEST_VARY_TEMPLATE (`template % (tag, n)`, a
distinct body each request) or, by default, a seeded pool of random batches of
LOADTEST_BATCH_MIN..MAX rows of LOADTEST_FEATURES numbers.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from typing import Any

import gevent
from gevent.event import Event
from locust import constant, events, task
from locust.contrib.fasthttp import FastHttpUser

PATH = os.environ.get("LOADTEST_PATH", "/predict")
HEADERS = {"content-type": "application/json"}
POOL_SIZE = 64
PHASES = [p for p in os.environ.get("LOADTEST_PHASES", "closed").split(",") if p]
TARGETS = [u.strip().rstrip("/") for u in os.environ.get("LOADTEST_TARGETS", "").split(",")
           if u.strip()]
PIDS = [[int(p) for p in group.split(",") if p.strip()]
        for group in os.environ.get("LOADTEST_PIDS", "").split(";")]


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def cpu_seconds(pids: list[int]) -> float | None:
    """CPU time used so far by `pids`, all their threads (/proc/PID/task/*/schedstat)."""
    total = 0
    try:
        for pid in pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                    total += int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def random_bodies(features: int, low: int, high: int, seed: int) -> list[tuple[str, int]]:
    """A pool of JSON bodies of `low`..`high` rows (uniform), seeded: (body, rows)."""
    rng = random.Random(seed)
    pool = []
    for _ in range(POOL_SIZE):
        n = rng.randint(low, high)
        rows = [[round(rng.gauss(0.0, 2.0), 3) for _ in range(features)] for _ in range(n)]
        pool.append((json.dumps({"data": rows}), n))
    return pool


class Bodies:
    """What each request sends, picked by the environment (see the module docstring)."""

    def __init__(self) -> None:
        self.template = os.environ.get("LOADTEST_VARY_TEMPLATE")
        self.tag = int(os.environ.get("LOADTEST_VARY_TAG", "0"))
        self.fixed = os.environ.get("LOADTEST_BODY")
        self.counter = itertools.count(1)
        self.pool: list[tuple[str, int]] = []
        self.rng = random.Random(int(env_float("LOADTEST_SEED", 7)))

    def prepare(self) -> None:
        """Build the random pool (when the test starts, before the first request's clock)."""
        if self.template is None and self.fixed is None and not self.pool:
            self.pool = random_bodies(
                int(env_float("LOADTEST_FEATURES", 4)), int(env_float("LOADTEST_BATCH_MIN", 1)),
                int(env_float("LOADTEST_BATCH_MAX", 100)), int(env_float("LOADTEST_SEED", 7)))

    def next(self) -> tuple[str, int]:
        if self.template is not None:
            return self.template % (self.tag, next(self.counter)), 1
        if self.fixed is not None:
            return self.fixed, 1
        self.prepare()
        return self.pool[self.rng.randrange(len(self.pool))]


BODIES = Bodies()


class Phase:
    """One phase's clock, requests and CPU. The first request starts its clock (Locust's `-t`
    is only a safety net: its timer reads gevent's cached loop time, which a slow start-up
    leaves stale); the first `warmup_s` are sent but not measured (connections open, the load
    generator settles): `t0` is when the measurement starts. The user that gets the phase's
    last answer ends it."""

    name = ""

    def __init__(self, seconds: float, warmup_s: float) -> None:
        self.seconds = seconds
        self.warmup_s = warmup_s
        self.t0: float | None = None
        self.in_flight = 0
        self.requests: list[list[float]] = []
        self.offered = 0
        self.dropped = 0
        self.cpu: list[float | None] = []
        self.measuring = False
        self.ended = Event()

    def measure(self, now: float) -> None:
        """Start the CPU count with the first request of the measured part."""
        if not self.measuring and self.t0 is not None and now >= self.t0:
            self.measuring = True
            self.cpu = [cpu_seconds(group) for group in PIDS]

    def end(self, user: FastHttpUser) -> None:
        if self.ended.is_set():
            return
        used: list[float | None] = []
        for before, group in zip(self.cpu, PIDS, strict=True):
            after = cpu_seconds(group)
            used.append(None if before is None or after is None else after - before)
        self.cpu = used
        self.ended.set()
        if self is PLAN[-1]:  # the last phase: stop the test now
            runner = user.environment.runner
            if runner is not None:
                gevent.spawn(runner.quit)

    def record(self, environment: Any) -> dict[str, Any]:
        measured = self.ended.is_set() and self.measuring and PIDS != [[]]
        return {"mode": self.name, "t0": self.t0 or 0.0, "warmup_s": self.warmup_s,
                "offered": self.offered, "dropped": self.dropped, "requests": self.requests,
                "cpu_s": self.cpu if measured else [],
                "locust": locust_figures(environment, self.name)}


class Window(Phase):
    """The closed loop: `seconds` after a warm-up, in turns of `segment_s` over the targets
    when there are several (the warm-up alternates between them)."""

    name = "closed"

    def __init__(self, seconds: float, warmup_s: float, segment_s: float) -> None:
        super().__init__(seconds, warmup_s)
        self.segment_s = segment_s if len(TARGETS) > 1 else max(seconds, 1.0)
        self.sent = 0

    def take(self) -> int | None:
        """The index of the target to call now, or None when the window is over."""
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now + self.warmup_s
        self.measure(now)
        if now >= self.t0 + self.seconds:
            return None
        self.in_flight += 1
        self.sent += 1
        turns = max(len(TARGETS), 1)
        if now < self.t0:
            return self.sent % turns
        return int((now - self.t0) // self.segment_s) % turns

    def done(self) -> bool:
        """One answer in; True when it was the last of the window."""
        self.in_flight -= 1
        over = self.t0 is not None and time.perf_counter() >= self.t0 + self.seconds
        return over and not self.in_flight


class Schedule(Phase):
    """The open loop's slots: `rate` a second for a warm-up and then `seconds`, starting
    `lead_s` after the first user asks (so that every user has spawned). Only the slots
    after the warm-up count as offered (and, when missed, as dropped)."""

    name = "open"

    def __init__(self, rate: float, seconds: float, warmup_s: float, late_s: float,
                 lead_s: float = 0.3) -> None:
        super().__init__(seconds, warmup_s)
        self.rate = rate
        self.warmup_slots = round(rate * warmup_s)
        self.offered = round(rate * seconds)
        self.late_s = late_s
        self.lead_s = lead_s
        self.start = 0.0
        self.next_slot = 0

    def take(self) -> float | None:
        """The due time of the next slot this user can still send on time; None when none
        is left. Slots already later than `late_s` are dropped (counted, never sent)."""
        now = time.perf_counter()
        if self.t0 is None:
            self.start = now + self.lead_s
            self.t0 = self.start + self.warmup_slots / self.rate
        while self.next_slot < self.warmup_slots + self.offered:
            slot = self.next_slot
            due = self.start + slot / self.rate
            self.next_slot += 1
            if now - due <= self.late_s:
                self.in_flight += 1
                self.measure(max(now, due))
                return due
            if slot >= self.warmup_slots:
                self.dropped += 1
        return None

    def done(self) -> bool:
        """One answer in; True when it was the last of the schedule."""
        self.in_flight -= 1
        return self.next_slot >= self.warmup_slots + self.offered and not self.in_flight


CLOSED = Window(env_float("LOADTEST_CLOSED_SECONDS", 5), env_float("LOADTEST_CLOSED_WARMUP_S", 0),
                env_float("LOADTEST_SEGMENT_S", 1))
OPEN = Schedule(env_float("LOADTEST_OPEN_RATE", 10), env_float("LOADTEST_OPEN_SECONDS", 5),
                env_float("LOADTEST_OPEN_WARMUP_S", 0), env_float("LOADTEST_LATE_MS", 50) / 1000)
PLAN: list[Phase] = [{"closed": CLOSED, "open": OPEN}[p] for p in PHASES]


class PredictUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    network_timeout = env_float("LOADTEST_TIMEOUT_S", 10)
    connection_timeout = env_float("LOADTEST_TIMEOUT_S", 10)
    phase: Phase

    def send(self, due: float, target: int = 0) -> None:
        body, rows = BODIES.next()
        url = (TARGETS[target] if TARGETS else "") + PATH  # absolute, or on --host
        sent = time.perf_counter()
        warm = (due if due >= 0 else sent) < (self.phase.t0 or 0.0)
        name = f"{self.phase.name} (warm-up)" if warm else self.phase.name  # Locust's stats
        resp = self.client.post(url, data=body, headers=HEADERS, name=name)
        done = time.perf_counter()
        self.phase.requests.append([due, sent, done, resp.status_code or 0, rows, target])

    def ready(self) -> bool:
        """Whether this user's phase may run: the phases before it have ended."""
        before = PLAN[:PLAN.index(self.phase)]
        for phase in before:
            phase.ended.wait()
        return not self.phase.ended.is_set()

    def idle(self) -> None:
        """Out of work: wait for the phase to end (and the test, after the last phase)."""
        if not self.phase.in_flight:
            self.phase.end(self)
        self.phase.ended.wait()
        if self.phase is not PLAN[-1]:
            gevent.sleep(3600)  # the later phases run; the test's end stops this user


class ClosedLoopUser(PredictUser):
    """Sends the next request as soon as the last one is answered."""

    fixed_count = int(env_float("LOADTEST_CLOSED_USERS", 1))
    phase = CLOSED

    @task
    def predict(self) -> None:
        if not self.ready():
            return self.idle()
        target = CLOSED.take()
        if target is None:
            return self.idle()
        self.send(-1.0, target)
        if CLOSED.done():
            CLOSED.end(self)


class OpenLoopUser(PredictUser):
    """Takes the next slot of the shared schedule and sends it at its due time."""

    fixed_count = int(env_float("LOADTEST_OPEN_USERS", 1))
    phase = OPEN

    @task
    def predict(self) -> None:
        if not self.ready():
            return self.idle()
        due = OPEN.take()
        if due is None:
            return self.idle()
        wait = due - time.perf_counter()
        if wait > 0:
            gevent.sleep(wait)
        self.send(due)
        if OPEN.done():
            OPEN.end(self)


def locust_figures(environment: Any, name: str) -> dict[str, Any]:
    """Locust's own summary of a phase, from its rounded response-time histogram (its CSV,
    written once a second, misses the last second)."""
    entry = environment.stats.get(name, "POST")
    if not entry.num_requests:
        return {"requests": 0, "failures": entry.num_failures}
    return {"requests": entry.num_requests, "failures": entry.num_failures,
            "rps": round(entry.total_rps, 2),
            **{f"p{round(q * 100)}": entry.get_response_time_percentile(q)
               for q in (0.5, 0.95, 0.99)}}


@events.test_start.add_listener
def _prepare(**_: Any) -> None:
    BODIES.prepare()


@events.test_stop.add_listener
def _dump(environment: Any, **_: Any) -> None:
    path = os.environ.get("LOADTEST_RECORD")
    if path:
        with open(path, "w") as handle:
            json.dump({"phases": {p.name: p.record(environment) for p in PLAN}}, handle)
