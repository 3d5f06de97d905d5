"""The proxy of L2: members from the service registry, a stable version and a guarded canary.

- Every REFRESH_S it reads the registry (`patternkit.discovery.members`: the `service:*` keys
  the predictors keep alive with a TTL); `GET /services` lists them by version.
- `POST /predict` goes to the canary version with CANARY weight percent, else to the stable
  one, round robin over that version's members. A member that fails (refused, dropped, 5xx,
  timeout) counts as an error of its variant and the call is retried on another member (the
  same version first, then the stable one), so a dead or failing predictor costs the client
  nothing but time. A 4xx (bad input) is passed on.
- `PUT /rollout {"canary": "1.0.2", "weight": 20}` starts a canary phase (the controller's
  call); `{"stable": "1.0.1"}` sets the stable version. The canary is judged by the online A/B
  guard (`patternkit.guard.Guard` over `patternkit.experiment.check_view`: error rate and p99
  latency of canary against stable, as Flagger's analysis): GUARD_THRESHOLD failed checks roll
  it back (weight 0), PROMOTE_AFTER passed checks promote it (it becomes the stable version).
  `GET /rollout` shows the state, the guard and the history; the state is kept in Redis, so a
  restarted proxy goes on with it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypedDict

import orjson
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.exceptions import RedisError

from patternkit.backends import Backend, BackendFailed, call_backend
from patternkit.discovery import members
from patternkit.experiment import Analysis, VariantData, check_view
from patternkit.guard import Guard, GuardPolicy
from patternkit.proxy import Upstream
from patternkit.schemas import PREDICT_OPENAPI, PredictResponse
from patternkit.service import (
    ApiError,
    Metrics,
    ServiceState,
    add_fast_route,
    background,
    create_service,
    from_state,
    json_response,
    request_id,
)
from patternkit.settings import ServiceSettings

log = logging.getLogger("training_to_serving.proxy")

ROLLOUT_KEY = "rollout:training_to_serving"
LATENCIES_KEPT = 5000  # per variant and phase, for the p99 guardrail
HISTORY_KEPT = 50
Variant = Literal["stable", "canary"]


class ProxySettings(ServiceSettings):
    service_name: str = "proxy"
    registry_url: str = Field(..., description="the service registry (Redis)")
    refresh_s: float = Field(1.0, gt=0, description="how often the members are re-read")
    backend_timeout_ms: int = Field(3000, gt=0, description="a slower member is a 504 (error)")
    max_attempts: int = Field(3, ge=1, description="members one request may try")
    guard_interval_s: float = Field(1.0, gt=0, description="seconds between canary checks")
    guard_threshold: int = Field(2, ge=1, description="failed checks before the rollback")
    guard_min_requests: int = Field(20, ge=0, description="requests per variant to judge")
    promote_after: int = Field(3, ge=1, description="passed checks before the promotion")
    guardrail_error_margin: float = Field(0.02, ge=0, description="the canary may err this "
                                                                  "much more than stable")
    guardrail_p99_margin: float = Field(0.5, ge=0, description="... be this much slower")
    guardrail_p99_slack_ms: float = Field(50.0, ge=0, description="... plus this (absolute)")


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"canary": "1.0.2", "weight": 20}, {"stable": "1.0.1"}, {"canary": None}]})

    stable: str | None = Field(None, description="the version that takes the traffic")
    canary: str | None = Field(None, description="the version on trial; null ends a trial")
    weight: float = Field(20.0, gt=0, le=100, description="percent of requests to the canary")

    @model_validator(mode="after")
    def _one(self) -> RolloutIn:
        if not self.model_fields_set & {"stable", "canary"}:
            raise ValueError("name a stable or a canary version")
        return self


@dataclass
class Rollout:
    """The versions in service and the canary phase; what GET /rollout shows."""

    stable: str | None = None
    canary: str | None = None
    weight: float = 0.0
    phase: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {"stable": self.stable, "canary": self.canary, "weight": self.weight,
                "phase": self.phase}

    def note(self, event: str, **detail: Any) -> dict[str, Any]:
        entry = {"at": time.time(), "event": event, "phase": self.phase, **self.view(),
                 **detail}
        self.history.append(entry)
        del self.history[:-HISTORY_KEPT]
        log.info("rollout: %s %s", event, detail or self.view())
        return entry


class Data:
    """What the guard reads: requests, errors and latencies per variant in this phase."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.v: dict[str, VariantData] = {"stable": VariantData(latencies_ms=deque(
            maxlen=LATENCIES_KEPT)), "canary": VariantData(latencies_ms=deque(
            maxlen=LATENCIES_KEPT))}

    def add(self, variant: str, ok: bool, ms: float) -> None:
        d = self.v[variant]
        d.requests += 1
        d.units += 1
        d.errors += 0 if ok else 1
        assert isinstance(d.latencies_ms, deque)
        d.latencies_ms.append(ms)


class Router:
    """Members, rollout, the guard; the request path reads, the tasks write."""

    def __init__(self, cfg: ProxySettings, client: aioredis.Redis, upstream: Upstream,
                 metrics: Metrics) -> None:
        self.cfg = cfg
        self.client = client
        self.upstream = upstream
        self.members: list[dict[str, Any]] = []
        self.refreshed_at = 0.0
        self.refresh_errors = 0
        self.rollout = Rollout()
        self.data = Data()
        self.analysis = Analysis(error_margin=cfg.guardrail_error_margin,
                                 p99_margin=cfg.guardrail_p99_margin,
                                 p99_slack_ms=cfg.guardrail_p99_slack_ms, kpi_guardrail=False)
        self.guard = Guard(GuardPolicy(cfg.guard_interval_s, cfg.guard_threshold,
                                       cfg.guard_min_requests))
        self.passed = 0
        self._rr = itertools.count()
        self._random = random.Random(0)
        self._lock = asyncio.Lock()
        self.calls = metrics.counter("member_calls", "calls to members, by variant and outcome",
                                     {"variant": ("stable", "canary"), "outcome": ("ok", "error")},
                                     stat="calls")
        self.retries = metrics.counter("retries", "calls retried on another member",
                                       stat="retries")
        self.outcomes = metrics.counter("rollouts", "canary phases by outcome",
                                        {"outcome": ("promoted", "rolled_back")},
                                        stat="rollouts")
        metrics.gauge("members", "registered members").set_function(lambda: len(self.members))
        metrics.gauge("canary_weight", "percent of requests to the canary").set_function(
            lambda: self.rollout.weight)

    # -- registry and state -------------------------------------------------------------------

    async def refresh(self) -> None:
        try:
            self.members = await members(self.client)
            self.refreshed_at = time.time()
        except (RedisError, OSError) as exc:  # keep the last members: better than none
            self.refresh_errors += 1
            log.warning("cannot read the registry: %s: %s", type(exc).__name__, exc)

    async def refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.refresh_s)
            await self.refresh()

    async def load(self) -> None:
        raw = await self.client.get(ROLLOUT_KEY)
        if raw:
            doc = orjson.loads(raw)
            self.rollout = Rollout(doc["stable"], doc["canary"], doc["weight"], doc["phase"],
                                   doc.get("history", []))
            self.guard.watch(self.rollout.phase, self.rollout.canary is not None)

    async def save(self) -> None:
        r = self.rollout
        await self.client.set(ROLLOUT_KEY, orjson.dumps({**r.view(), "history": r.history}))

    def versions(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for m in self.members:
            found.setdefault(str(m.get("version")), []).append(m)
        return found

    async def change(self, event: str, *, stable: str | None = None, canary: str | None = None,
                     weight: float = 0.0, **detail: Any) -> dict[str, Any]:
        """A new phase: new versions and weight, fresh data, a fresh guard analysis."""
        async with self._lock:
            r = self.rollout
            r.stable, r.canary, r.weight = stable, canary, weight if canary else 0.0
            r.phase += 1
            self.data.reset()
            self.passed = 0
            self.guard.watch(r.phase, canary is not None)
            entry = r.note(event, **detail)
            await self.save()
            return entry

    # -- the request path ---------------------------------------------------------------------

    def pick(self, version: str | None, tried: set[str]) -> dict[str, Any] | None:
        pool = [m for m in self.members if (version is None or m.get("version") == version)
                and m["id"] not in tried]
        return pool[next(self._rr) % len(pool)] if pool else None

    def plan(self) -> list[tuple[Variant, str | None]]:
        """Where this request goes first, and where its retries go."""
        r = self.rollout
        if r.canary and self._random.random() * 100 < r.weight:
            return [("canary", r.canary), ("stable", r.stable), ("stable", None)]
        return [("stable", r.stable), ("stable", None)]

    async def forward(self, body: bytes, rid: str) -> tuple[Any, dict[str, str]]:
        tried: set[str] = set()
        last: BackendFailed | None = None
        attempts = 0
        for variant, version in self.plan():
            while attempts < self.cfg.max_attempts:
                member = self.pick(version, tried)
                if member is None:
                    break
                tried.add(member["id"])
                attempts += 1
                backend = Backend(member["id"], member["url"])
                try:
                    reply, ms = await call_backend(
                        self.upstream, backend, "POST", backend.predict_url, body=body,
                        rid=rid, timeout_s=self.cfg.backend_timeout_ms / 1000,
                        who=f"member {member['id']}")
                except BackendFailed as exc:
                    self.calls.labels(variant, "error").inc()
                    self.data.add(variant, False, exc.ms)
                    last = exc
                    if attempts < self.cfg.max_attempts:
                        self.retries.inc()
                    continue
                if reply.status < 400:
                    self.calls.labels(variant, "ok").inc()
                    self.data.add(variant, True, ms)
                return reply, {"x-variant": variant, "x-member": member["id"],
                               "x-attempts": str(attempts)}
        if last is not None:
            raise last
        raise ApiError(503, "no registered member serves a model yet", "no_members")

    # -- the guard ----------------------------------------------------------------------------

    async def judge_once(self) -> dict[str, Any] | None:
        """One canary check: rollback at the threshold, promotion after PROMOTE_AFTER passes."""
        r = self.rollout
        self.guard.watch(r.phase, r.canary is not None)
        if r.canary is None or self.guard.state != "watching":
            return None
        view = check_view(self.data.v["stable"], self.data.v["canary"], self.analysis)
        check = self.guard.judge(r.phase, view)
        if check is None:
            return None
        summary = {k: {"a": v["a"], "b": v["b"], "status": v["status"]}
                   for k, v in view["guardrails"].items()}
        if self.guard.should_roll_back:
            self.outcomes.labels("rolled_back").inc()
            return await self.change("rolled_back", stable=r.stable, version=r.canary,
                                     reason=self.guard.reason, guardrails=summary)
        if check.outcome == "passed":
            self.passed += 1
            if self.passed >= self.cfg.promote_after:
                self.outcomes.labels("promoted").inc()
                return await self.change("promoted", stable=r.canary, version=r.canary,
                                         previous=r.stable, checks=self.passed,
                                         guardrails=summary)
        return None

    async def guard_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.guard_interval_s)
            try:
                await self.judge_once()
            except (RedisError, OSError) as exc:
                log.warning("guard: cannot save the rollout: %s", exc)

    def view(self) -> dict[str, Any]:
        return {**self.rollout.view(), "passed_checks": self.passed,
                "promote_after": self.cfg.promote_after,
                "variants": {k: v.summary() for k, v in self.data.v.items()},
                "guard": self.guard.snapshot(), "history": self.rollout.history}


class Resources(TypedDict):
    router: Router


RouterDep = Annotated[Router, Depends(from_state("router"))]


async def predict(request: Request) -> Response:
    router: Router = request.state.router
    reply, tags = await router.forward(await request.body(), request_id(request) or "")
    return Response(reply.body, reply.status, {**reply.headers, **tags})


async def get_services(router: RouterDep) -> Response:
    """The registered members, by version, and how old each is."""
    now = time.time()
    out = [{**m, "age_s": round(now - float(m.get("since", now)), 1),
            "beat_age_s": round(now - float(m.get("beat_at", now)), 1)} for m in router.members]
    return json_response({"count": len(out), "services": out,
                          "versions": {v: [m["id"] for m in ms]
                                       for v, ms in router.versions().items()},
                          "refreshed_at": router.refreshed_at, "refresh_s": router.cfg.refresh_s})


async def get_rollout(router: RouterDep) -> Response:
    return json_response(router.view())


async def put_rollout(body: RolloutIn, router: RouterDep) -> Response:
    """Set the stable version, or start (or end) a canary phase."""
    r = router.rollout
    served = router.versions()
    for name in ("stable", "canary"):
        wanted = getattr(body, name)
        if name in body.model_fields_set and wanted is not None and wanted not in served:
            raise ApiError(409, f"no registered member serves version {wanted} "
                           f"(members serve {sorted(served)})", "version_not_served")
    stable = body.stable if "stable" in body.model_fields_set else r.stable
    canary = body.canary if "canary" in body.model_fields_set else r.canary
    if canary is not None and canary == stable:
        raise ApiError(409, f"{canary} is the stable version already", "already_stable")
    if canary is not None and stable is None:
        raise ApiError(409, "a canary needs a stable version to be judged against",
                       "no_stable_version")
    event = "canary" if canary and canary != r.canary else "configured"
    await router.change(event, stable=stable, canary=canary, weight=body.weight,
                        version=canary or stable)
    return json_response(router.view())


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()
    upstream = Upstream(cfg.backend_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        async with AsyncExitStack() as stack:
            client = aioredis.Redis.from_url(cfg.registry_url, socket_timeout=1.0,
                                             socket_connect_timeout=1.0)
            stack.push_async_callback(client.aclose)
            router = Router(cfg, client, upstream, state.metrics)
            await router.load()
            await router.refresh()
            await stack.enter_async_context(background(router.refresh_loop()))
            await stack.enter_async_context(background(router.guard_loop()))
            state.metadata.update(registry=cfg.registry_url, refresh_s=cfg.refresh_s,
                                  guard=router.guard.snapshot()["policy"],
                                  promote_after=cfg.promote_after)
            yield {"router": router}

    app = create_service(cfg, title="training-to-serving: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream})
    add_fast_route(
        app, "/predict", predict, ["POST"], tags=["predict"], openapi_extra=PREDICT_OPENAPI,
        responses={200: {"description": "a member's prediction (X-Variant, X-Member say which)",
                         "model": PredictResponse}, 413: {}, 422: {}, 502: {}, 503: {}, 504: {}},
    )
    app.get("/services", tags=["registry"])(get_services)
    app.get("/rollout", tags=["rollout"])(get_rollout)
    app.put("/rollout", tags=["rollout"], responses={409: {}, 422: {}})(put_rollout)
    return app
