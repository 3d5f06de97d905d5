"""The proxy of Q1: the client gets model A's answer; B and A' get a mirrored copy later.

`POST /predict` validates the rows, waits for A only and passes A's reply through (status,
body, `X-Served-By`), with `X-Shadow` saying what became of the copy: `mirrored`, `skipped`
(MIRROR_FRACTION) or `dropped` (the mirror queue was full). The copy goes to B and to A' (a
retrain of A, the noise floor) from the bounded queue of `mirror.py`, so B's latency, errors
and timeouts never reach the client. Every answer and failure is a prediction-log row
(`patternkit.predlog`, the `sql` backing) keyed by request id; `GET /shadow/report` compares
them (`report.py`). `PUT /config` changes MIRROR_FRACTION at runtime.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, TypedDict

import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from patternkit.backends import (
    Backend,
    BackendFailed,
    RemoteModel,
    call_backend,
    input_width,
    watch_models,
)
from patternkit.db import show_url
from patternkit.predictor import parse_batch
from patternkit.predlog import PredictionLog, prediction_table
from patternkit.proxy import Upstream
from patternkit.schemas import PREDICT_OPENAPI, PREDICTION_EXAMPLE, PredictResponse
from patternkit.service import (
    ApiError,
    ServiceState,
    create_service,
    fast_route,
    json_response,
    request_id,
)
from patternkit.settings import BatchSettings
from qa_patterns.shadow_ab_test.mirror import Mirror
from qa_patterns.shadow_ab_test.report import A_PRIME, A, B, Rules, build_report

log = logging.getLogger("shadow_ab_test.proxy")

TABLE_PREFIX = "shadow_ab_test"
METADATA = sa.MetaData()
LOG_TABLE = prediction_table(TABLE_PREFIX, METADATA)  # the table PredictionLog writes


class ShadowSettings(BatchSettings):
    """The live model, the shadows, the mirror's bounds and the report's rules."""

    service_name: str = "proxy"
    a_url: str = Field(..., description="model A, the live one: its reply goes to the client")
    b_url: str = Field(..., description="model B, the shadow under test")
    a_prime_url: str = Field("", description="A', a retrain of A mirrored for the noise "
                                             "floor; empty: no floor")
    database_url: str = Field(..., description="the prediction log's database ({db.url})")
    a_timeout_ms: int = Field(2000, gt=0, description="deadline of the call to A")
    mirror_fraction: float = Field(1.0, ge=0, le=1, description="share of requests mirrored")
    mirror_queue: int = Field(1000, ge=1, description="mirrored requests that may wait; "
                                                      "more are dropped and counted")
    mirror_concurrency: int = Field(32, ge=1, le=256, description="mirrored requests sent at "
                                                                  "once")
    mirror_timeout_ms: int = Field(2000, gt=0, description="deadline of each shadow call")
    noise_quantile: float = Field(0.99, gt=0, le=1, description="the floor: this quantile of "
                                                                "the A-vs-A' differences")
    relative_threshold_pct: float = Field(20.0, ge=0, description="Diffy's relative threshold")
    absolute_threshold_pct: float = Field(0.03, ge=0, description="Diffy's absolute threshold")
    report_max_rows: int = Field(30_000, ge=1, description="log rows a report reads at most")

    @field_validator("a_url", "b_url", "a_prime_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return value.strip().rstrip("/")


class ConfigChange(BaseModel):
    """What `PUT /config` may change while the proxy runs."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"mirror_fraction": 0.5}]})

    mirror_fraction: float = Field(..., ge=0, le=1, allow_inf_nan=False,
                                   description="share of requests mirrored to the shadows")


class Resources(TypedDict):
    plog: PredictionLog
    mirror: Mirror
    models: list[RemoteModel]


def config_view(cfg: ShadowSettings, mirror: Mirror) -> dict[str, Any]:
    return {"mirror_fraction": mirror.fraction, "mirror_queue": cfg.mirror_queue,
            "mirror_concurrency": cfg.mirror_concurrency,
            "mirror_timeout_ms": cfg.mirror_timeout_ms, "a_timeout_ms": cfg.a_timeout_ms}


REPORT_EXAMPLE: dict[str, Any] = {
    "requests": 150, "mirror_decisions": {"mirrored": 150}, "pending": 0,
    "compared_requests": 150, "compared_rows": 150,
    "labels": {"agreement_a_b": 0.98, "agreement_a_a_prime": 1.0, "raw": 3, "noise": 0,
               "relative_pct": 100.0, "absolute_pct": 2.0, "flagged": True},
    "probabilities": {"diff_a_b": {"p50": 0.064, "p90": 0.2372, "p99": 0.3342, "max": 0.419},
                      "noise_floor": 0.0623, "raw": 78, "noise": 2, "flagged": True},
    "verdict": "B differs from A beyond A's retrain noise in: labels, probabilities",
}


def create_app(settings: ShadowSettings | None = None) -> FastAPI:
    cfg = settings or ShadowSettings()
    live = Backend(A, cfg.a_url)
    shadows = [Backend(B, cfg.b_url)] + ([Backend(A_PRIME, cfg.a_prime_url)]
                                         if cfg.a_prime_url else [])
    rules = Rules(cfg.noise_quantile, cfg.relative_threshold_pct, cfg.absolute_threshold_pct)
    a_timeout_s = cfg.a_timeout_ms / 1000
    upstream = Upstream(a_timeout_s)  # the request path's pool: A only
    mirror_upstream = Upstream(cfg.mirror_timeout_ms / 1000,
                               max_connections=cfg.mirror_concurrency * len(shadows))

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        state.metadata.update(
            live={live.name: live.url}, shadows={s.name: s.url for s in shadows},
            prediction_log=LOG_TABLE.name, rules=rules.__dict__,
        )
        async with PredictionLog(cfg.database_url, TABLE_PREFIX, service="proxy",
                                 registry=state.registry) as plog:
            assert plog.engine is not None
            state.metadata["database"] = show_url(plog.engine)
            mirror = Mirror(mirror_upstream, shadows, plog, state.metrics,
                            fraction=cfg.mirror_fraction, queue_bound=cfg.mirror_queue,
                            concurrency=cfg.mirror_concurrency,
                            timeout_s=cfg.mirror_timeout_ms / 1000)
            # ready once A's input width is known; the shadows are never waited for
            async with watch_models(upstream, [live], state) as models, mirror.running():
                yield {"plog": plog, "mirror": mirror, "models": models}

    app = create_service(cfg, title="shadow AB test: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream, "mirror_upstream": mirror_upstream},
                         auto_ready=False)
    live_errors = app.state.service.metrics.counter(
        "shadow_live_errors", "requests A did not answer (the client got the 502/504)",
        stat="live.errors")

    @fast_route(
        app, "/predict", tags=["predict"], openapi_extra=PREDICT_OPENAPI,
        responses={200: {"description": "A's reply, passed through; X-Shadow says what became "
                                        "of the mirrored copy",
                         "model": PredictResponse,
                         "content": {"application/json": {"example": {
                             **PREDICTION_EXAMPLE, "served_by": "a"}}}},
                   413: {"description": "body or batch too large"}, 422: {},
                   502: {"description": "A failed; the message names it"},
                   503: {"description": "A's model is not known yet"},
                   504: {"description": "A missed A_TIMEOUT_MS"}},
    )
    async def predict(request: Request) -> Response:
        plog: PredictionLog = request.state.plog
        mirror: Mirror = request.state.mirror
        body = await request.body()
        X, body_rid = parse_batch(body, input_width(request.state.models), cfg.max_batch_rows)
        rid = body_rid or request_id(request) or ""
        rows = orjson.loads(body)["data"]
        try:
            reply, ms = await call_backend(upstream, live, "POST", live.predict_url, body=body,
                                           rid=rid, timeout_s=a_timeout_s, who="model A")
            if reply.status != 200:  # A refused the input: the client hears why, no mirror
                return reply.response()
            try:
                out = PredictResponse.model_validate_json(reply.body)
            except ValidationError as exc:
                raise BackendFailed(live, 502, "backend_bad_reply",
                                    f"sent a malformed reply: {exc.errors()[0]}", ms) from None
        except BackendFailed as exc:
            live_errors.inc()
            plog.record(rows, None, latency_ms=exc.ms, request_id=rid, service=A,
                        extra={"error": exc.error, "reason": exc.reason, "status": exc.status})
            raise
        decision = mirror.offer(rid, X)
        plog.record(rows, {"prediction": out.prediction, "probabilities": out.probabilities},
                    model=out.model, version=out.version, latency_ms=ms, request_id=rid,
                    service=A, extra={"served_by": out.served_by, "shadow": decision})
        response = reply.response()
        response.headers["x-shadow"] = decision
        return response

    @app.get("/shadow/report", tags=["shadow"], responses={
        200: {"content": {"application/json": {"example": REPORT_EXAMPLE}}},
        422: {}, 503: {"description": "the prediction log's database cannot be read"}})
    async def shadow_report(
        request: Request,
        since: Annotated[datetime | None, Query(
            description="only requests logged at or after this time (ISO 8601 or Unix "
                        "seconds); default: the last REPORT_MAX_ROWS log rows")] = None,
    ) -> Response:
        """A against B row by row, against the A-vs-A' noise floor; latency and errors."""
        plog: PredictionLog = request.state.plog
        mirror: Mirror = request.state.mirror
        try:
            rows = await plog.read(since=since, limit=cfg.report_max_rows)
        except sa.exc.SQLAlchemyError as exc:
            raise ApiError(503, f"cannot read the prediction log: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}", "log_unavailable") from None
        report = build_report(rows, rules, noise=bool(cfg.a_prime_url))
        report["since"] = since.isoformat() if since else None
        report["mirror"] = {**mirror.snapshot(), **request.state.service.stats_view()["mirror"]}
        report["prediction_log"] = plog.stats()
        return json_response(report)

    @app.get("/config", tags=["shadow"])
    async def get_config(request: Request) -> Response:
        """The mirror's settings now (MIRROR_FRACTION may have changed since start-up)."""
        return json_response(config_view(cfg, request.state.mirror))

    @app.put("/config", tags=["shadow"], responses={
        200: {"content": {"application/json": {"example": {"mirror_fraction": 0.5}}}},
        422: {}})
    async def put_config(change: ConfigChange, request: Request) -> Response:
        """Change MIRROR_FRACTION at once, without a restart (a restart reads the env again)."""
        mirror: Mirror = request.state.mirror
        old, mirror.fraction = mirror.fraction, change.mirror_fraction
        log.info("MIRROR_FRACTION %s -> %s", old, mirror.fraction)
        return json_response(config_view(cfg, mirror))

    return app
