"""The proxy of O5 (and of OA1's two stacks): answers with the predictor, logs every answer.

`POST /predict` validates the rows, calls the predictor and passes its answer on; with
LOGGING=on each answer is a row of `<LOG_PREFIX>_prediction_log` (`patternkit.predlog`, the
`sql` backing): request id, time, input batch, output, model, version, latency. `GET /logs`
reads them back (by request id, since a time). With LOGGING=off nothing is written and
`/logs` does not exist (404): the antipattern of OA1, whose clients are served the same.
The input is logged as the client sent it (the rows of its JSON), so a repeated payload
hashes the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, TypedDict

import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import Field, field_validator

from patternkit.backends import Backend, RemoteModel, call_model, input_width, watch_models
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

TABLE_PREFIX = "prediction_monitoring"
METADATA = sa.MetaData()
LOG_TABLE = prediction_table(TABLE_PREFIX, METADATA)  # the table PredictionLog writes


class ProxySettings(BatchSettings):
    service_name: str = "proxy"
    predictor_url: str = Field(..., description="the template predictor")
    logging: Literal["on", "off"] = Field("on", description="write the prediction log")
    database_url: str = Field("", description="the prediction log's database ({db.url})")
    log_prefix: str = Field(TABLE_PREFIX, description="<prefix>_prediction_log")
    timeout_ms: int = Field(2000, gt=0, description="deadline of the predictor call")

    @field_validator("predictor_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return value.strip().rstrip("/")


class Resources(TypedDict):
    plog: PredictionLog | None
    models: list[RemoteModel]


LOGS_EXAMPLE: dict[str, Any] = {"count": 1, "rows": [{
    "request_id": "r-1", "at": "2026-01-01T00:00:00.123456+00:00", "service": "proxy",
    "model": "synthetic_lr", "version": "1.0.0", "input": [[0.1, -1.2, 0.3, 1.1, -0.4, 0.9,
                                                           0.2, -0.7]],
    "output": {"prediction": [1], "probabilities": [[0.1, 0.8, 0.1]]}, "latency_ms": 1.9}]}


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()
    if cfg.logging == "on" and not cfg.database_url:
        raise ValueError("LOGGING=on needs DATABASE_URL")
    backend = Backend("predictor", cfg.predictor_url)
    timeout_s = cfg.timeout_ms / 1000
    upstream = Upstream(timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        state.metadata.update(predictor=backend.url, logging=cfg.logging)
        async with AsyncExitStack() as stack:
            plog = None
            if cfg.logging == "on":
                plog = await stack.enter_async_context(PredictionLog(
                    cfg.database_url, cfg.log_prefix, service=cfg.service_name,
                    registry=state.registry))
                assert plog.engine is not None
                state.metadata.update(prediction_log=plog.table.name,
                                      database=show_url(plog.engine))
            models = await stack.enter_async_context(watch_models(upstream, [backend], state))
            yield {"plog": plog, "models": models}

    app = create_service(cfg, title="prediction monitoring: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)

    @fast_route(app, "/predict", tags=["predict"], openapi_extra=PREDICT_OPENAPI, responses={
        200: {"model": PredictResponse, "content": {"application/json": {
            "example": PREDICTION_EXAMPLE}}},
        413: {"description": "body or batch too large"}, 422: {},
        502: {"description": "the predictor failed"}, 504: {"description": "no answer in time"},
        503: {"description": "the predictor's model is not known yet"}})
    async def predict(request: Request) -> Response:
        plog: PredictionLog | None = request.state.plog
        body = await request.body()
        X, body_rid = parse_batch(body, input_width(request.state.models), cfg.max_batch_rows)
        rid = body_rid or request_id(request) or ""
        reply = await call_model(upstream, backend, X, rid, timeout_s)
        if plog is not None:
            plog.record(orjson.loads(body)["data"], {"prediction": reply.prediction,
                            "probabilities": reply.probabilities},
                        model=reply.model, version=reply.version, latency_ms=reply.ms,
                        request_id=rid)
        return json_response({
            "prediction": reply.prediction, "probabilities": reply.probabilities,
            "model": reply.model, "version": reply.version, "served_by": reply.served_by,
            "request_id": rid})

    if cfg.logging == "on":
        @app.get("/logs", tags=["logs"], responses={
            200: {"content": {"application/json": {"example": LOGS_EXAMPLE}}}, 422: {},
            503: {"description": "the prediction log's database cannot be read"}})
        async def logs(
            request: Request,
            request_id: Annotated[list[str] | None, Query(
                description="only these request ids (repeat the parameter)")] = None,
            since: Annotated[datetime | None, Query(
                description="only rows logged at or after this time (ISO 8601)")] = None,
            limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        ) -> Response:
            """The prediction log: the newest `limit` rows that match, oldest first."""
            plog: PredictionLog = request.state.plog
            try:
                rows = await plog.read(since=since, request_ids=request_id, limit=limit)
            except sa.exc.SQLAlchemyError as exc:
                raise ApiError(503, f"cannot read the prediction log: {type(exc).__name__}",
                               "log_unavailable") from None
            out = [{str(k): (v.isoformat() if k == "at" else v) for k, v in row.items()
                    if k != "id"} for row in rows]  # keys are str subclasses orjson refuses
            return json_response({"count": len(out), "rows": out})

    return app
