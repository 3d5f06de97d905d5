"""The proxy of L1: the one entry clients call, whichever model version serves behind it.

`POST /predict` validates the rows (a 422/413 never reaches the predictor), forwards them to
the predictor and passes its reply through, `X-Model-Version` included: a deploy or a
rollback changes that header and nothing else a client sees. Its parameters are O6's
(`patternkit.runtime_config`): `timeout_ms` and `attempts` (a 502/503 from a predictor being
restarted is tried again within the same request), from the environment at start, changed
by `PUT /config`, audited on `GET /config/history`. Every request is an O4 `latency` record
(status, version, the proxy's and the backend's time) in the Redis stream PREDICTION_LOG_URL
names; the predictor logs the `prediction` record under the same request id, and the log
consumer stores both, once each.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from patternkit.backends import (
    Backend,
    BackendFailed,
    RemoteModel,
    call_backend,
    input_width,
    watch_models,
)
from patternkit.predictor import parse_batch
from patternkit.predlog import PredictionLog, open_log
from patternkit.proxy import Reply, Upstream
from patternkit.runtime_config import RuntimeConfig, add_config_routes
from patternkit.schemas import PREDICT_OPENAPI, passthrough_responses
from patternkit.service import ServiceState, create_service, fast_route, request_id
from patternkit.settings import PredictionLogSettings

PREFIX = "train_then_serve"


class ProxyParams(BaseModel):
    """What the proxy reads on each request (O6): changed at runtime, validated whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_ms: int = Field(2000, gt=0, le=60_000, description="deadline of each attempt")
    attempts: int = Field(2, ge=1, le=5, description="tries of a 502/503 within one request")


class ProxySettings(PredictionLogSettings):
    service_name: str = "proxy"
    predictor_url: str = Field(..., description="the predictor the proxy forwards to")
    prediction_log_url: str = Field(..., description="the log: a redis:// URL (a stream)")
    prediction_log_prefix: str = Field(PREFIX, description="the log is <prefix>_prediction_log")
    timeout_ms: int = Field(2000, gt=0, description="the starting ProxyParams.timeout_ms")
    attempts: int = Field(2, ge=1, description="the starting ProxyParams.attempts")


class Resources(TypedDict):
    plog: PredictionLog
    models: list[RemoteModel]
    config: RuntimeConfig[ProxyParams]


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()
    predictor = Backend("predictor", cfg.predictor_url.rstrip("/"))
    upstream = Upstream(60.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        config = RuntimeConfig(ProxyParams, {"timeout_ms": cfg.timeout_ms,
                                             "attempts": cfg.attempts},
                               name="config", state=state)
        async with open_log(cfg, state) as plog:
            state.metadata.update(predictor=predictor.url)
            async with watch_models(upstream, [predictor], state) as models:
                yield {"plog": plog, "models": models, "config": config}

    app = create_service(cfg, title="train-then-serve: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)

    async def forward(body: bytes, rid: str, params: ProxyParams) -> tuple[Reply, float]:
        failed: BackendFailed | None = None
        for _ in range(params.attempts):
            try:
                return await call_backend(upstream, predictor, "POST", predictor.predict_url,
                                          body=body, rid=rid,
                                          timeout_s=params.timeout_ms / 1000)
            except BackendFailed as exc:
                failed = exc
                if not exc.retryable:
                    break
        assert failed is not None
        raise failed

    @fast_route(
        app, "/predict", tags=["predict"], openapi_extra=PREDICT_OPENAPI,
        responses=passthrough_responses("timeout_ms"),
    )
    async def predict(request: Request) -> Response:
        began = time.perf_counter()
        plog: PredictionLog = request.state.plog
        params: ProxyParams = request.state.config.current  # one read per request
        body = await request.body()
        _, body_rid = parse_batch(body, input_width(request.state.models), cfg.max_batch_rows)
        rid = body_rid or request_id(request) or ""
        try:
            reply, backend_ms = await forward(body, rid, params)
        except BackendFailed as exc:
            plog.record_latency(rid, began, status=exc.status, backend_ms=exc.ms,
                                error=exc.error)
            raise
        plog.record_latency(rid, began, status=reply.status, backend_ms=backend_ms,
                            version=reply.headers.get("x-model-version"))
        return reply.response()

    add_config_routes(app, "/config", "config", what="proxy parameters",
                      example={"timeout_ms": 1500, "attempts": 3})
    return app
