"""The online A/B proxy: splits users between variants A and B, logs both, reports and guards.

`create_ab_proxy` builds the service a pattern's `proxy.py` starts (Q2, QA1; L2's canary):

- `POST /predict` sends each user (`X-User-ID`) to A or B by a hash of the user id (sticky:
  `patternkit.experiment.assign`) or per request at random (`AB_MODE=random`), forwards the
  body unchanged and passes the reply on with `X-AB-Variant` and `X-AB-Phase`. Every exposure
  (a reply, or the backend's failure as a 502/504) is logged by `patternkit.predlog` with its
  variant, unit, phase and status; a 4xx (the caller's bad input) is passed on, not logged.
- `POST /events` stores a client event (a conversion) by the request id it follows.
- `GET /config`, `PUT /config` show and change the weight of B and the mode at runtime; each
  change starts a new phase (the report judges a phase against its own weights). The weights
  live in the database, so a restarted proxy goes on with them; the env (`AB_WEIGHT_B`,
  `AB_MODE`, `AB_SEED`) only sets up the first phase.
- `GET /ab/report`, `GET /ab/decision` give the analysis of `patternkit.experiment` for a phase
  (by default the last one that sent traffic to B), `GET /ab/guard` the guard
  (`patternkit.guard`), which sends all traffic back to A (weight 0, a new phase) when B fails
  its guardrails in GUARD_THRESHOLD checks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, Literal, TypedDict

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from patternkit.abstore import ExperimentStore, Phase, experiment_columns
from patternkit.backends import Backend, BackendFailed, call_backend, parse_backends
from patternkit.experiment import VARIANTS, Analysis, assign, report
from patternkit.guard import Guard, GuardPolicy
from patternkit.predlog import PredictionLog
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

log = logging.getLogger("patternkit.abproxy")

Mode = Literal["sticky", "random"]
USER_HEADER = "x-user-id"
GUARD_PREFIX = "guard: rolled back phase"
ExtraReport = Callable[[dict[str, Any]], dict[str, Any]]


class ABSettings(ServiceSettings):
    """The proxy: its two variants, the experiment's first phase, the analysis and the guard."""

    service_name: str = "proxy"
    backends: str = Field(..., description="a=URL,b=URL: the control A and the treatment B")
    database_url: str = Field(..., description="the experiment log ({db.url} of the topology)")
    backend_timeout_ms: int = Field(3000, gt=0, description="a slower variant is a 504 (error)")
    ab_weight_b: float = Field(10.0, ge=0, le=100, description="percent of units sent to B "
                               "in the first phase; PUT /config changes it")
    ab_mode: Mode = Field("sticky", description="sticky: by a hash of X-User-ID; random: per "
                          "request")
    ab_seed: str = Field("experiment", min_length=1, description="salt of the user hash")
    ab_kpi: str = Field("conversion", description="the event kind that counts as a conversion")
    ab_alpha: float = Field(0.05, gt=0, lt=0.5, description="level of every test")
    ab_tau: float = Field(0.05, gt=0, description="mixing scale of the always-valid test")
    ab_min_units: int = Field(100, ge=1, description="units per variant before the KPI counts")
    ab_target_effect: float = Field(0.02, gt=0, description="the rise the power is shown for")
    guard_interval_s: float = Field(1.0, ge=0, description="seconds between checks; 0: off")
    guard_threshold: int = Field(3, ge=1, description="failed checks before the rollback")
    guard_min_requests: int = Field(50, ge=0, description="requests per variant to judge")
    guardrail_error_margin: float = Field(0.02, ge=0, description="B may err this much more")
    guardrail_p99_margin: float = Field(0.5, ge=0, description="B's p99 may be this much "
                                        "slower (relative)")
    guardrail_p99_slack_ms: float = Field(20.0, ge=0, description="... plus this (absolute)")
    guardrail_kpi: bool = Field(True, description="a significant KPI loss fails a check too")
    guardrail_kpi_margin: float = Field(0.0, ge=0, description="KPI loss tolerated")
    log_interval_s: float = Field(0.2, gt=0, description="prediction log flush interval")

    @field_validator("backends")
    @classmethod
    def _two_variants(cls, value: str) -> str:
        names = [b.name for b in parse_backends(value)]
        if sorted(names) != list(VARIANTS):
            raise ValueError(f"BACKENDS must name exactly the variants a and b, not {names}")
        return value

    def analysis(self) -> Analysis:
        return Analysis(
            alpha=self.ab_alpha, tau=self.ab_tau, target_effect=self.ab_target_effect,
            min_units=self.ab_min_units, error_margin=self.guardrail_error_margin,
            p99_margin=self.guardrail_p99_margin, p99_slack_ms=self.guardrail_p99_slack_ms,
            kpi_guardrail=self.guardrail_kpi, kpi_margin=self.guardrail_kpi_margin,
        )


class EventIn(BaseModel):
    """A client event after a prediction: a conversion (purchase, click) by its request id."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"request_id": "0b6e9f3ab82073adfe152a76bb41a4e9", "kind": "conversion", "value": 1.0}]})

    request_id: str = Field(..., min_length=1, max_length=128,
                            description="the X-Request-ID of the prediction it follows")
    kind: str = Field("conversion", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    value: float = Field(1.0, allow_inf_nan=False, description="e.g. the order's amount")


class ConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"weight_b": 50}, {"weight_b": 0}, {"weight_b": 10, "mode": "random"}]})

    weight_b: float = Field(..., ge=0, le=100, description="percent of units sent to B")
    mode: Mode | None = Field(None, description="sticky or random; unchanged if left out")


CONFIG_EXAMPLE = {"phase": 2, "weight_b": 50.0, "mode": "sticky", "seed": "online_ab_test",
                  "reason": "PUT /config", "started": "2026-12-01T10:00:00+00:00",
                  "guard": "watching"}


class Experiment:
    """The proxy's runtime: variants, the current phase, the log, the store and the guard."""

    def __init__(
        self, cfg: ABSettings, prefix: str, upstream: Upstream, metrics: Metrics,
        store: ExperimentStore, plog: PredictionLog, extra: ExtraReport | None = None,
    ) -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.upstream = upstream
        self.store = store
        self.plog = plog
        self.extra = extra
        self.analysis = cfg.analysis()
        self.backends: dict[str, Backend] = {b.name: b for b in parse_backends(cfg.backends)}
        self.guard = Guard(GuardPolicy(cfg.guard_interval_s or 1.0, cfg.guard_threshold,
                                       cfg.guard_min_requests))
        self.phase: Phase | None = None
        self._lock = asyncio.Lock()
        self._random = random.Random(cfg.ab_seed)
        self.exposures = metrics.counter(
            "ab_exposures", "requests a variant answered or failed, by outcome",
            {"variant": VARIANTS, "outcome": ("ok", "error")}, stat="exposures")
        self.rejected = metrics.counter(
            "ab_rejected", "requests a variant refused as bad input (4xx): not exposures",
            stat="rejected")
        self.events = metrics.counter("ab_events", "client events stored", stat="events")
        self.rollbacks = metrics.counter("ab_rollbacks", "times the guard rolled B back",
                                         stat="rollbacks")
        metrics.gauge("ab_weight_b", "percent of units sent to B now").set_function(
            lambda: self.phase.weight_b if self.phase else 0.0)
        metrics.gauge("ab_guard_failed_checks", "failed guard checks in this phase"
                      ).set_function(lambda: self.guard.failed_checks)

    # -- phases ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tables; go on with the last phase in the database, or start the first."""
        await asyncio.to_thread(self.store.create)
        latest = await asyncio.to_thread(self.store.latest_phase)
        if latest is None:
            latest = await asyncio.to_thread(
                self.store.new_phase, self.cfg.ab_weight_b, self.cfg.ab_mode, self.cfg.ab_seed,
                f"start (AB_WEIGHT_B={self.cfg.ab_weight_b:g}, AB_MODE={self.cfg.ab_mode})")
        else:
            log.info("going on with phase %d of the database (weight_b=%g, mode=%s)",
                     latest.id, latest.weight_b, latest.mode)
        self._set(latest)

    def _set(self, phase: Phase) -> None:
        self.phase = phase
        self._random = random.Random(f"{phase.seed}:{phase.id}")
        self.guard.watch(phase.id, phase.weight_b > 0)

    def current(self) -> Phase:
        assert self.phase is not None, "the experiment has not started"
        return self.phase

    async def configure(self, weight_b: float, mode: Mode | None, reason: str) -> Phase:
        """Start a new phase with these weights (the seed stays)."""
        async with self._lock:
            old = self.current()
            phase = await asyncio.to_thread(self.store.new_phase, weight_b, mode or old.mode,
                                            old.seed, reason)
            self._set(phase)
        log.info("phase %d: weight_b=%g mode=%s (%s)", phase.id, phase.weight_b, phase.mode,
                 reason)
        return phase

    async def rollback(self, phase_id: int, reason: str) -> None:
        """The guard's action: all traffic to A, as a new phase that says why."""
        if self.current().id != phase_id:
            return  # the weights changed meanwhile: that phase is over anyway
        self.rollbacks.inc()
        await self.configure(0.0, None, f"{GUARD_PREFIX} {phase_id}: {reason}")

    # -- the request path -----------------------------------------------------------------------

    def choose(self, phase: Phase, user: str | None, rid: str) -> tuple[str, str]:
        """(variant, unit) of one request."""
        if phase.mode == "sticky":
            if not user:
                raise ApiError(422, "an X-User-ID header is required: AB_MODE=sticky assigns "
                                    "each user by a hash of it", "validation_error",
                               [{"loc": "header.X-User-ID", "msg": "field required"}])
            return assign(user, phase.share_b, phase.seed), user
        return ("b" if self._random.random() < phase.share_b else "a"), rid

    def record(self, rid: str, phase: Phase, variant: str, unit: str, status: int, ms: float,
               body: bytes, output: Any, model: str | None = None,
               version: str | None = None) -> None:
        try:
            rows = orjson.loads(body).get("data")
        except (orjson.JSONDecodeError, AttributeError):
            rows = None
        self.plog.record(rows, output, model=model, version=version, latency_ms=ms,
                         request_id=rid, service=self.cfg.served_by,
                         fields={"variant": variant, "unit": unit[:128], "phase": phase.id,
                                 "status": status})

    # -- the analysis ---------------------------------------------------------------------------

    def rolled_back(self, phase: Phase, phases: list[Phase]) -> str | None:
        """Why the guard rolled `phase` back, if it did (the next phase says so)."""
        later = [p for p in phases if p.id == phase.id + 1]
        marker = f"{GUARD_PREFIX} {phase.id}: "
        if later and later[0].reason.startswith(marker):
            return later[0].reason[len(marker):]
        return None

    def report_phase(self, phases: list[Phase], wanted: int | None) -> Phase:
        if wanted is not None:
            found = [p for p in phases if p.id == wanted]
            if not found:
                raise ApiError(404, f"no phase {wanted}; phases are 1 to {len(phases)}",
                               "phase_not_found")
            return found[0]
        live = [p for p in phases if p.weight_b > 0]
        return live[-1] if live else phases[-1]

    def analyse(self, wanted: int | None = None) -> dict[str, Any]:
        """The report of a phase (blocking: database queries; run it in a thread)."""
        phases = self.store.all_phases()
        phase = self.report_phase(phases, wanted)
        data = self.store.phase_data(phase.id, self.cfg.ab_kpi)
        out: dict[str, Any] = {
            "experiment": {**phase.view(), "current_phase": self.current().id,
                           "unit": "user" if phase.mode == "sticky" else "request",
                           "kpi": self.cfg.ab_kpi},
            **report(data, phase.share_b, self.analysis, self.rolled_back(phase, phases)),
            "events": self.store.event_counts(self.cfg.ab_kpi),
            "guard": self.guard.snapshot() | {"watching_phase": self.guard.phase},
        }
        if self.extra is not None:
            out.update(self.extra(out))
        return out

    async def evaluate(self, phase_id: int) -> dict[str, Any]:
        """The guard's view of a phase: its report."""
        return await asyncio.to_thread(self.analyse, phase_id)

    def config_view(self) -> dict[str, Any]:
        return {**self.current().view(), "guard": self.guard.state}


class Resources(TypedDict):
    ab: Experiment


ExperimentDep = Annotated[Experiment, Depends(from_state("ab"))]


async def predict(request: Request) -> Response:
    ab: Experiment = request.state.ab
    rid = request_id(request) or ""
    phase = ab.current()
    variant, unit = ab.choose(phase, request.headers.get(USER_HEADER), rid)
    backend = ab.backends[variant]
    body = await request.body()
    tags = {"x-ab-variant": variant, "x-ab-phase": str(phase.id)}
    try:
        reply, ms = await call_backend(ab.upstream, backend, "POST", backend.predict_url,
                                       body=body, rid=rid, timeout_s=ab.cfg.backend_timeout_ms
                                       / 1000, who=f"variant {variant}")
    except BackendFailed as exc:
        ab.exposures.labels(variant, "error").inc()
        ab.record(rid, phase, variant, unit, exc.status, exc.ms, body, {"error": exc.reason})
        exc.headers = {**exc.headers, **tags}
        raise
    if reply.status >= 400:  # the caller's bad input: passed on, not an exposure
        ab.rejected.inc()
        return Response(reply.body, reply.status, {**reply.headers, **tags})
    try:
        answer = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        answer = {}
    ab.exposures.labels(variant, "ok").inc()
    ab.record(rid, phase, variant, unit, reply.status, ms, body,
              {"prediction": answer.get("prediction")}, answer.get("model"),
              answer.get("version"))
    return Response(reply.body, reply.status, {**reply.headers, **tags})


async def add_event(body: EventIn, ab: ExperimentDep) -> Response:
    await asyncio.to_thread(ab.store.add_event, body.request_id, body.kind, body.value)
    ab.events.inc()
    return json_response({"stored": True, **body.model_dump()}, 201)


async def get_config(ab: ExperimentDep) -> Response:
    return json_response(ab.config_view())


async def put_config(body: ConfigIn, ab: ExperimentDep) -> Response:
    await ab.configure(body.weight_b, body.mode, "PUT /config")
    return json_response(ab.config_view())


async def get_report(
    ab: ExperimentDep,
    phase: Annotated[int | None, Query(ge=1, description="default: the last phase with B")]
    = None,
) -> Response:
    return json_response(await asyncio.to_thread(ab.analyse, phase))


async def get_decision(
    ab: ExperimentDep,
    phase: Annotated[int | None, Query(ge=1, description="default: the last phase with B")]
    = None,
) -> Response:
    found = await asyncio.to_thread(ab.analyse, phase)
    return json_response({**found["decision"], "phase": found["experiment"]["phase"],
                          "variant": "b", "effect": found["effect"],
                          "guardrails": {k: v["status"] for k, v in found["guardrails"].items()},
                          "srm_flagged": found["srm"]["flagged"], "guard": ab.guard.state})


async def get_guard(ab: ExperimentDep) -> Response:
    return json_response(ab.guard.snapshot())


async def get_phases(ab: ExperimentDep) -> Response:
    phases = await asyncio.to_thread(ab.store.all_phases)
    return json_response({"phases": [p.view() for p in phases], "current": ab.current().id})


USER_PARAMETER = {
    "name": "X-User-ID", "in": "header", "required": False, "schema": {"type": "string"},
    "example": "user-42",
    "description": "the user; sticky mode (the default) needs it and sends a user to the "
                   "same variant every time",
}


def create_ab_proxy(
    cfg: ABSettings, prefix: str, *, title: str, extra: ExtraReport | None = None
) -> FastAPI:
    """The A/B proxy app; `prefix` names its tables (the pattern's name), `extra` adds a
    pattern's own section to the report (e.g. QA1's offline ranking)."""
    upstream = Upstream(cfg.backend_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        async with AsyncExitStack() as stack:
            plog = await stack.enter_async_context(PredictionLog(
                cfg.database_url, prefix, service=cfg.served_by, columns=experiment_columns(),
                interval_s=cfg.log_interval_s, registry=state.metrics.registry))
            store = ExperimentStore(cfg.database_url, prefix)
            stack.callback(store.close)
            ab = Experiment(cfg, prefix, upstream, state.metrics, store, plog, extra)
            await ab.start()
            if cfg.guard_interval_s > 0:
                await stack.enter_async_context(background(
                    ab.guard.run(lambda: (ab.current().id, ab.current().weight_b > 0),
                                 ab.evaluate, ab.rollback)))
            state.metadata.update(
                backends={k: b.url for k, b in ab.backends.items()}, kpi=cfg.ab_kpi,
                tables=sorted(store.metadata.tables), guard=ab.guard.snapshot()["policy"],
            )
            yield {"ab": ab}

    app = create_service(cfg, title=title, lifespan=lifespan, upstreams={"upstream": upstream})
    add_fast_route(
        app, "/predict", predict, ["POST"], tags=["predict"],
        openapi_extra={**PREDICT_OPENAPI, "parameters": [USER_PARAMETER]},
        responses={200: {"description": "the variant's prediction (X-AB-Variant says which)",
                         "model": PredictResponse},
                   413: {}, 422: {"description": "bad input, or no X-User-ID in sticky mode"},
                   502: {}, 503: {}, 504: {}},
    )
    app.post("/events", status_code=201, tags=["experiment"])(add_event)
    app.get("/config", tags=["experiment"],
            responses={200: {"content": {"application/json": {"example": CONFIG_EXAMPLE}}}}
            )(get_config)
    app.put("/config", tags=["experiment"], responses={422: {}})(put_config)
    app.get("/ab/report", tags=["experiment"], responses={404: {}})(get_report)
    app.get("/ab/decision", tags=["experiment"], responses={404: {}})(get_decision)
    app.get("/ab/guard", tags=["experiment"])(get_guard)
    app.get("/ab/phases", tags=["experiment"])(get_phases)
    return app
