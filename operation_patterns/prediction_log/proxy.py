"""The proxy of O4: forwards predictions, logs their latency, and takes client events.

`POST /predict` validates the rows (a 422/413 never reaches the predictor), forwards the body
with the request id (`X-Request-ID`, or the body's `request_id`) and passes the predictor's
reply through. Each answered or failed request is a `latency` record (status, the proxy's
whole time, the backend's time, the error if any); the predictor itself logs the `prediction`
record (rows, output, model version) under the same request id. `POST /events` takes a client
event (`{"request_id", "event", "value"?, "properties"?}`), a record of kind `event.<name>`
joined to its prediction by the request id. Every record goes through the core writer
(`patternkit.predlog`) to the Redis stream PREDICTION_LOG_URL names: an O(1) append to a
bounded spool on the request path, pipelined XADDs in the background; what the spool cannot
hold while Redis is down is dropped and counted (`/stats` `prediction_log`, `/metrics`
`prediction_log_dropped_total`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import sqlalchemy as sa
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
from patternkit.predlog import PredictionLog, open_log, stream_table
from patternkit.proxy import Upstream
from patternkit.schemas import PREDICT_OPENAPI, passthrough_responses
from patternkit.service import (
    ServiceState,
    create_service,
    fast_route,
    json_response,
    request_id,
)
from patternkit.settings import PredictionLogSettings

TABLE_PREFIX = "prediction_log"
METADATA = sa.MetaData()
LOG_TABLE = stream_table(TABLE_PREFIX, METADATA)  # what the consumer writes, the stream's name


class LogProxySettings(PredictionLogSettings):
    """The predictor, the log (PredictionLogSettings: a stream here) and the deadline."""

    service_name: str = "proxy"
    predictor_url: str = Field(..., description="the predictor the proxy forwards to")
    prediction_log_url: str = Field(..., description="the log: a redis:// URL (a stream) or "
                                                     "a database URL")
    prediction_log_prefix: str = Field(TABLE_PREFIX, description="the log is "
                                                                     "<prefix>_prediction_log")
    timeout_ms: int = Field(2000, gt=0, description="deadline of the predictor's answer")


class Event(BaseModel):
    """A client event about a prediction: what happened after the answer (a click, a
    purchase, a correction), joined to the prediction by its request id."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"request_id": "demo-1", "event": "purchase", "value": 19.9}]})

    request_id: str = Field(..., min_length=1, max_length=128,
                            description="the request id of the prediction it is about")
    event: str = Field(..., pattern=r"^[a-z][a-z0-9_]{0,39}$",
                       description="what happened: lower case, digits and _ (e.g. click)")
    value: float | None = Field(None, allow_inf_nan=False, description="a number, if any")
    properties: dict[str, Any] | None = Field(None, description="anything else, as JSON")


class Resources(TypedDict):
    plog: PredictionLog
    models: list[RemoteModel]


def create_app(settings: LogProxySettings | None = None) -> FastAPI:
    cfg = settings or LogProxySettings()
    predictor = Backend("predictor", cfg.predictor_url.rstrip("/"))
    timeout_s = cfg.timeout_ms / 1000
    upstream = Upstream(timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        async with open_log(cfg, state) as plog:
            state.metadata.update(predictor=predictor.url)
            async with watch_models(upstream, [predictor], state) as models:
                yield {"plog": plog, "models": models}

    app = create_service(cfg, title="prediction log: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)

    @fast_route(
        app, "/predict", tags=["predict"], openapi_extra=PREDICT_OPENAPI,
        responses=passthrough_responses("TIMEOUT_MS"),
    )
    async def predict(request: Request) -> Response:
        began = time.perf_counter()
        plog: PredictionLog = request.state.plog
        body = await request.body()
        _, body_rid = parse_batch(body, input_width(request.state.models), cfg.max_batch_rows)
        rid = body_rid or request_id(request) or ""
        try:
            reply, backend_ms = await call_backend(
                upstream, predictor, "POST", predictor.predict_url, body=body, rid=rid,
                timeout_s=timeout_s)
        except BackendFailed as exc:
            plog.record_latency(rid, began, status=exc.status, backend_ms=exc.ms,
                                error=exc.error)
            raise
        plog.record_latency(rid, began, status=reply.status, backend_ms=backend_ms,
                            version=reply.headers.get("x-model-version"))
        return reply.response()

    @app.post("/events", status_code=202, tags=["events"], responses={
        202: {"description": "taken: buffered for the log (`buffered: false`: the spool was "
                             "full, the event is dropped and counted)",
              "content": {"application/json": {"example": {
                  "request_id": "demo-1", "kind": "event.purchase", "buffered": True}}}},
        422: {}})
    async def add_event(request: Request, event: Event) -> Response:
        """A client event about an earlier prediction, logged by its request id."""
        plog: PredictionLog = request.state.plog
        kind = f"event.{event.event}"
        buffered = plog.record(None, None, request_id=event.request_id, service="client",
                               fields={"kind": kind},
                               extra={"value": event.value, "properties": event.properties})
        return json_response({"request_id": event.request_id, "kind": kind,
                              "buffered": buffered}, 202)

    return app
