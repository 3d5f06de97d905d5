"""The mirror of Q1: a bounded queue of mirrored requests and the tasks that send them on.

The request path only decides and offers: `selected` hashes the request id against
MIRROR_FRACTION (a given id is always mirrored or never, so a rerun mirrors the same
requests), and `Mirror.offer` puts the job with `put_nowait`; a full queue drops it and counts
the drop. Nothing on the request path awaits a shadow. MIRROR_CONCURRENCY worker tasks send
each job to every shadow at once (B, and A' for the noise floor) on their own connection pool,
each call with MIRROR_TIMEOUT_MS, and log each answer or failure by request id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from patternkit.backends import Backend, BackendFailed, call_model
from patternkit.predlog import PredictionLog
from patternkit.proxy import Upstream
from patternkit.service import Metrics, background

log = logging.getLogger("shadow_ab_test.mirror")

Decision = Literal["mirrored", "skipped", "dropped"]
DECISIONS: tuple[Decision, ...] = ("mirrored", "skipped", "dropped")
OUTCOMES = ("ok", "backend_timeout", "backend_unavailable", "backend_error",
            "backend_bad_reply", "proxy_error")
HASH_SPACE = 2**64


def selected(request_id: str, fraction: float) -> bool:
    """Whether a request is mirrored: its id's hash (blake2b, 64 bits) falls in the first
    `fraction` of the hash space. Deterministic per id, uniform over ids."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * HASH_SPACE


@dataclass(frozen=True)
class Job:
    """One mirrored request: its id, its rows, when it was queued (perf_counter)."""

    request_id: str
    rows: np.ndarray
    queued_at: float


class Mirror:
    """The bounded queue, its workers, and the counts of what happened to each request."""

    def __init__(
        self, upstream: Upstream, shadows: Sequence[Backend], plog: PredictionLog,
        metrics: Metrics, *, fraction: float, queue_bound: int, concurrency: int,
        timeout_s: float,
    ) -> None:
        self.upstream = upstream
        self.shadows = list(shadows)
        self.plog = plog
        self.fraction = fraction
        self.queue_bound = queue_bound
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_bound)
        self.in_flight = 0
        self.decisions = metrics.counter(
            "shadow_mirror_requests",
            "requests by mirror decision: mirrored (queued), skipped (MIRROR_FRACTION), "
            "dropped (the queue was full)",
            {"decision": DECISIONS}, stat="mirror.{decision}",
        )
        self.calls = metrics.counter(
            "shadow_mirror_calls", "mirrored calls by shadow and outcome",
            {"shadow": [s.name for s in self.shadows], "outcome": OUTCOMES},
            stat="mirror.calls",
        )
        metrics.gauge("shadow_mirror_queued", "mirrored requests waiting in the queue",
                      stat="mirror.queued").set_function(self.queue.qsize)
        metrics.gauge("shadow_mirror_in_flight", "mirrored requests being sent",
                      stat="mirror.in_flight").set_function(lambda: self.in_flight)
        metrics.gauge("shadow_mirror_fraction", "the share of requests mirrored now",
                      stat="mirror.fraction").set_function(lambda: self.fraction)

    # -- the request path: decide and offer, never wait -----------------------------------

    def offer(self, request_id: str, rows: np.ndarray) -> Decision:
        decision: Decision
        if not selected(request_id, self.fraction):
            decision = "skipped"
        else:
            try:
                self.queue.put_nowait(Job(request_id, rows, time.perf_counter()))
                decision = "mirrored"
            except asyncio.QueueFull:
                decision = "dropped"
        self.decisions.labels(decision).inc()
        return decision

    # -- the workers ------------------------------------------------------------------------

    async def _send(self, shadow: Backend, job: Job, queued_ms: float) -> None:
        """One shadow call; its answer or its failure goes to the log, never further."""
        try:
            reply = await call_model(self.upstream, shadow, job.rows, job.request_id,
                                     self.timeout_s)
        except BackendFailed as exc:
            self.calls.labels(shadow.name, exc.error).inc()
            self.plog.record(None, None, latency_ms=exc.ms, request_id=job.request_id,
                             service=shadow.name,
                             extra={"error": exc.error, "reason": exc.reason,
                                    "status": exc.status, "queued_ms": queued_ms})
            return
        except Exception as exc:  # a bug must not kill the worker: log it, count it
            log.exception("mirroring %s to %s failed", job.request_id, shadow.name)
            self.calls.labels(shadow.name, "proxy_error").inc()
            self.plog.record(None, None, request_id=job.request_id, service=shadow.name,
                             extra={"error": "proxy_error", "reason": repr(exc)[:200],
                                    "queued_ms": queued_ms})
            return
        self.calls.labels(shadow.name, "ok").inc()
        self.plog.record(
            None, {"prediction": reply.prediction, "probabilities": reply.probabilities},
            model=reply.model, version=reply.version, latency_ms=reply.ms,
            request_id=job.request_id, service=shadow.name,
            extra={"served_by": reply.served_by, "queued_ms": queued_ms},
        )

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            self.in_flight += 1
            try:
                queued_ms = round((time.perf_counter() - job.queued_at) * 1000, 1)
                await asyncio.gather(*(self._send(s, job, queued_ms) for s in self.shadows))
            finally:
                self.in_flight -= 1
                self.queue.task_done()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Mirror]:
        """The workers for the block (a lifespan); what is still queued at its end is lost,
        and said so in the log."""
        async with AsyncExitStack() as stack:
            for _ in range(self.concurrency):
                await stack.enter_async_context(background(self._work()))
            try:
                yield self
            finally:
                left = self.queue.qsize() + self.in_flight
                if left:
                    log.warning("shutting down with %d mirrored requests not sent or not "
                                "answered", left)

    def snapshot(self) -> dict[str, Any]:
        """The mirror's settings and state now (the counts are on /stats)."""
        return {
            "fraction": self.fraction,
            "shadows": {s.name: s.url for s in self.shadows},
            "queue_bound": self.queue_bound,
            "queued": self.queue.qsize(),
            "in_flight": self.in_flight,
            "concurrency": self.concurrency,
            "timeout_ms": round(self.timeout_s * 1000),
        }
