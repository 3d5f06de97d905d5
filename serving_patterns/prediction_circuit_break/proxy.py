"""The proxy of S10: sheds load and breaks the circuit in front of the predictor replicas.

Each backend has a concurrency cap (`MAX_INFLIGHT`) and an error breaker (`FAIL_THRESHOLD`,
`COOLDOWN_S`); an optional token bucket (`MAX_RPS`) caps the admitted rate. A request that no
backend can take (every slot busy, every breaker open, or no token) gets the null fallback at
once, `{"prediction": null, "fallback": true, "reason": ...}`, as a 503 with `Retry-After`
or as a 200 (`FALLBACK_STATUS`). Timeouts and 5xx replies count as failures, 4xx replies do
not; `GET /breaker` shows each backend's breaker and slots. The Open Inference Protocol's
`/v2/...` calls are admitted the same way and passed through as is; the protocol has no null
answer, so their fallback is always a 503 `{"error": ...}` with `Retry-After`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field, field_validator

from patternkit.backends import timed_call
from patternkit.oip import add_oip_passthrough
from patternkit.proxy import Reply, Upstream, error_message, path_as_is, split_urls
from patternkit.schemas import PREDICT_OPENAPI, PredictResponse
from patternkit.service import (
    ApiError,
    Metrics,
    ServiceState,
    add_fast_route,
    create_service,
    json_response,
    request_id,
)
from patternkit.settings import ServiceSettings
from serving_patterns.prediction_circuit_break.breaker import (
    STATE_VALUES,
    CircuitBreaker,
    State,
)
from serving_patterns.prediction_circuit_break.limiter import ConcurrencyLimiter, TokenBucket

log = logging.getLogger("prediction_circuit_break.proxy")

Reason = Literal["overloaded", "rate_limited", "breaker_open"]
REASONS: tuple[Reason, ...] = ("overloaded", "rate_limited", "breaker_open")


class CircuitBreakSettings(ServiceSettings):
    """The proxy: its backends, the load-shedding caps and the breaker's knobs."""

    service_name: str = "proxy"
    backend_urls: str = Field(..., description="comma-separated predictor base URLs")
    max_inflight: int = Field(5, ge=1, description="calls in flight per backend; more are shed")
    max_rps: float = Field(0.0, ge=0, description="admitted requests per second; 0 = no cap")
    fail_threshold: int = Field(3, ge=1, description="consecutive failures that open a breaker")
    cooldown_s: float = Field(2.0, gt=0, description="open time before one trial call")
    backend_timeout_ms: int = Field(3000, gt=0, description="a slower backend call is a failure")
    fallback_status: int = Field(503, description="status of a fallback answer: 503 or 200")

    @field_validator("fallback_status")
    @classmethod
    def _fallback_status(cls, value: int) -> int:
        if value not in (200, 503):
            raise ValueError("FALLBACK_STATUS must be 503 (with Retry-After) or 200")
        return value


@dataclass
class Backend:
    """One predictor replica with its own slots and its own breaker."""

    url: str
    limiter: ConcurrencyLimiter
    breaker: CircuitBreaker
    served_by: str | None = None  # learned from the replica's X-Served-By

    def snapshot(self) -> dict[str, Any]:
        return {"url": self.url, "served_by": self.served_by,
                **self.breaker.snapshot(), **self.limiter.snapshot()}


def choose(backends: Sequence[Backend], start: int) -> Backend | Reason:
    """The backend for the next call, or why there is none.

    A half-open backend that has no trial out gets the call (its trial), so a recovered
    replica rejoins at once; otherwise the least busy backend with a free slot, ties broken
    in turn from `start`. No backend admitted by its breaker: `breaker_open`; all of those
    busy: `overloaded`.
    """
    admitted = [b for b in backends if b.breaker.admits()]
    if not admitted:
        return "breaker_open"
    free = [b for b in admitted if b.limiter.free]
    if not free:
        return "overloaded"
    for backend in free:
        if backend.breaker.state is State.HALF_OPEN:
            return backend
    offset = start % len(free)
    rotated = free[offset:] + free[:offset]
    return min(rotated, key=lambda b: b.limiter.in_flight)


def backend_error(url: str, reply: Reply) -> ApiError:
    """A 502 naming the backend that answered with a 5xx, with its own message if any."""
    return ApiError(502, f"backend {url} answered {reply.status}: {error_message(reply.body)}",
                    "backend_error")


class Pool:
    """The backends with their slots and breakers, the rate cap and the counts (declared once:
    on /metrics and, by `stat`, on /stats): what `/predict` and `/breaker` read from the
    lifespan state."""

    def __init__(self, cfg: CircuitBreakSettings, upstream: Upstream, metrics: Metrics) -> None:
        self.cfg = cfg
        self.upstream = upstream
        self.urls = split_urls(cfg.backend_urls)
        self.turn = itertools.count()
        self.bucket = TokenBucket(cfg.max_rps) if cfg.max_rps > 0 else None
        self.passed = metrics.counter("circuit_break_passed", "requests a backend answered",
                                      stat="passed")
        self.backend_errors = metrics.counter(
            "circuit_break_backend_errors", "requests answered with a backend's 502/504",
            stat="backend_errors",
        )
        self.fallbacks = metrics.counter(
            "circuit_break_fallbacks",
            "requests answered with the null fallback: shed (overloaded, rate_limited) or "
            "refused by open breakers (breaker_open)",
            {"reason": REASONS}, stat="fallbacks",
        )
        self.calls = metrics.counter(
            "circuit_break_backend_calls", "backend calls by outcome for the breaker",
            {"backend": self.urls, "outcome": ("success", "failure")},
        )
        self.opened = metrics.counter(
            "circuit_break_breaker_opened", "times a backend's breaker opened",
            {"backend": self.urls},
        )
        self.state_gauge = metrics.gauge(
            "circuit_break_breaker_state",
            "breaker state per backend: 0 closed, 1 half_open, 2 open", {"backend": self.urls},
        )
        self.in_flight_gauge = metrics.gauge(
            "circuit_break_backend_in_flight", "proxy calls in flight per backend",
            {"backend": self.urls},
        )
        self.backends = [self._backend(url) for url in self.urls]

    def _backend(self, url: str) -> Backend:
        def changed(old: State, new: State) -> None:
            level = logging.WARNING if new is State.OPEN else logging.INFO
            log.log(level, "breaker of %s: %s -> %s", url, old, new)
            if new is State.OPEN:
                self.opened.labels(url).inc()

        backend = Backend(
            url, ConcurrencyLimiter(self.cfg.max_inflight),
            CircuitBreaker(self.cfg.fail_threshold, self.cfg.cooldown_s, on_change=changed),
        )
        self.state_gauge.labels(url).set_function(lambda: STATE_VALUES[backend.breaker.state])
        self.in_flight_gauge.labels(url).set_function(lambda: backend.limiter.in_flight)
        return backend

    def refusal(self, reason: Reason) -> tuple[str, int]:
        """Why no backend takes the call, and in how many seconds to retry (counted)."""
        cfg = self.cfg
        if reason == "overloaded":
            message = (f"every backend has {cfg.max_inflight} calls in flight (MAX_INFLIGHT): "
                       "request shed")
            wait_s = 1.0
        elif reason == "rate_limited":
            message = f"over {cfg.max_rps:g} requests per second (MAX_RPS): request shed"
            wait_s = self.bucket.wait_s() if self.bucket is not None else 1.0
        else:
            message = (f"the breaker of every backend is open after {cfg.fail_threshold} "
                       "consecutive failures (FAIL_THRESHOLD); a trial call follows the "
                       f"{cfg.cooldown_s:g} s cooldown (COOLDOWN_S)")
            waits = [b.breaker.retry_in_s() for b in self.backends]
            wait_s = min((w for w in waits if w > 0), default=1.0)
        self.fallbacks.labels(reason).inc()
        return message, max(1, math.ceil(wait_s))

    def fallback(self, reason: Reason, rid: str | None) -> Response:
        """The null answer, at once: why, and when to retry (Retry-After with a 503)."""
        message, retry_after = self.refusal(reason)
        cfg = self.cfg
        headers: dict[str, str] = {"x-fallback": reason}
        if cfg.fallback_status == 503:
            headers["retry-after"] = str(retry_after)
        body = {"prediction": None, "fallback": True, "reason": reason, "message": message,
                "retry_after_s": retry_after, "request_id": rid}
        return json_response(body, cfg.fallback_status, headers)

    def shed(self, reason: Reason) -> ApiError:
        """The fallback of an Open Inference Protocol call: a 503 error with Retry-After."""
        message, retry_after = self.refusal(reason)
        return ApiError(503, message, "fallback",
                        headers={"x-fallback": reason, "retry-after": str(retry_after)})

    async def attempt(self, backend: Backend, body: bytes, rid: str | None,
                      method: str = "POST", path: str = "/predict") -> Reply:
        """One call to `backend`, holding one of its slots; the outcome feeds its breaker."""
        if not backend.limiter.try_acquire():  # choose() saw a free slot, nothing awaited since
            raise RuntimeError(f"no free slot on {backend.url}")
        ticket = backend.breaker.begin()
        ok: bool | None = None  # None: no verdict (the request was cancelled)
        try:
            reply, _ = await timed_call(self.upstream, method, f"{backend.url}{path}",
                                        body=body, rid=rid)
            ok = reply.status < 500  # a 4xx is the caller's fault and a healthy backend
            if not ok:
                raise backend_error(backend.url, reply)
            backend.served_by = reply.headers.get("x-served-by", backend.served_by)
            return reply
        except ApiError:
            ok = False
            raise
        finally:
            backend.limiter.release()
            if ok is None:
                backend.breaker.abandon(ticket)
            else:
                (backend.breaker.success if ok else backend.breaker.failure)(ticket)
                self.calls.labels(backend.url, "success" if ok else "failure").inc()

    def snapshot(self) -> dict[str, Any]:
        snapshots = [b.snapshot() for b in self.backends]
        states = {str(s): sum(1 for x in snapshots if x["state"] == s) for s in State}
        return {
            "states": states,
            "backends": snapshots,
            "rate": self.bucket.snapshot() if self.bucket is not None else None,
            "fallback_status": self.cfg.fallback_status,
        }


class Resources(TypedDict):
    pool: Pool


async def admit(pool: Pool, request: Request, path: str) -> Reply | Reason:
    """Send the request to `path` on a backend that can take it: its reply, or why none can."""
    body = await request.body()
    rid = request_id(request)
    tried: list[Backend] = []
    last: ApiError | None = None
    while True:
        choice = choose([b for b in pool.backends if b not in tried], next(pool.turn))
        if isinstance(choice, str):
            if last is not None:  # failing over found no other backend: report the failure
                pool.backend_errors.inc()
                raise last
            return choice
        if not tried and pool.bucket is not None and not pool.bucket.try_take():
            return "rate_limited"
        try:
            reply = await pool.attempt(choice, body, rid, request.method, path)
        except ApiError as exc:
            if exc.error != "backend_unavailable":
                pool.backend_errors.inc()
                raise
            # unreachable, or the connection dropped: a prediction is safe to repeat,
            # so another backend may take it
            tried.append(choice)
            last = exc
            continue
        pool.passed.inc()
        return reply


async def predict(request: Request) -> Response:
    pool: Pool = request.state.pool
    outcome = await admit(pool, request, "/predict")
    if isinstance(outcome, str):
        return pool.fallback(outcome, request_id(request))
    return outcome.response()


async def forward_oip(request: Request) -> Reply:
    pool: Pool = request.state.pool
    outcome = await admit(pool, request, path_as_is(request))
    if isinstance(outcome, str):
        raise pool.shed(outcome)
    return outcome


async def breaker(request: Request) -> Response:
    pool: Pool = request.state.pool
    return json_response(pool.snapshot())


def create_app(settings: CircuitBreakSettings | None = None) -> FastAPI:
    cfg = settings or CircuitBreakSettings()
    upstream = Upstream(cfg.backend_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        pool = Pool(cfg, upstream, state.metrics)
        state.metadata.update(
            backends=pool.urls, max_inflight=cfg.max_inflight, max_rps=cfg.max_rps,
            fail_threshold=cfg.fail_threshold, cooldown_s=cfg.cooldown_s,
            backend_timeout_ms=cfg.backend_timeout_ms, fallback_status=cfg.fallback_status,
        )
        yield {"pool": pool}

    app = create_service(cfg, title="prediction circuit break: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream})
    add_fast_route(
        app, "/predict", predict, ["POST"], tags=["predict"], openapi_extra=PREDICT_OPENAPI,
        responses={200: {"description": "the prediction, or the fallback (FALLBACK_STATUS=200)",
                         "model": PredictResponse},
                   422: {}, 502: {}, 503: {"description": "fallback: shed or breaker open"},
                   504: {}},
    )
    app.get("/breaker", tags=["ops"])(breaker)
    add_oip_passthrough(app, forward_oip)
    return app
