"""The prep stage of S5: `POST /transform` applies the fitted StandardScaler, nothing else.

It loads the scaler's ONNX artifact (sha256-verified, onnxruntime only) in the lifespan and
answers `{"data": [[scaled...]], "transform", "version", "train_run_id"}`. It validates raw
rows like a predictor does (finite numbers, row width from its manifest, batch size). Its
`train_run_id` is on /metadata and in `X-Train-Run-Id`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from patternkit.faults import Faults, InjectedFault
from patternkit.predictor import parse_batch
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import (
    ApiError,
    ServiceState,
    add_fast_route,
    create_service,
    json_response,
    request_id,
)
from patternkit.settings import ServiceSettings
from patternkit.transform import OnnxTransform
from serving_patterns.prep_pred.lineage import publish_run_id


class PrepSettings(ServiceSettings):
    """Which scaler artifact to load and which faults to inject."""

    service_name: str = "prep"
    model_path: str = Field(..., description="the scaler's directory (model.onnx + manifest)")
    delay_ms: int = Field(0, ge=0, description="added latency per /transform call")
    fail_mode: str = Field("none", description="none | always | first_n:N | rate:P")
    max_batch_rows: int = Field(1000, gt=0, description="larger batches get 413")


class TransformResponse(BaseModel):
    data: list[list[float]]
    transform: str
    version: str
    train_run_id: str
    served_by: str
    request_id: str | None = None


def create_app(settings: PrepSettings | None = None) -> FastAPI:
    cfg = settings or PrepSettings()
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms)
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        scaler = await asyncio.to_thread(OnnxTransform, cfg.model_path)  # raises: no start
        holder["scaler"] = scaler
        holder["run_id"] = publish_run_id(state, scaler.manifest)
        state.model_version = scaler.version
        state.metadata.update(transform=scaler.manifest, model_path=str(scaler.path),
                              n_features=scaler.n_features, max_batch_rows=cfg.max_batch_rows)
        yield

    app = create_service(cfg, title="prep-pred: prep (scaler)", lifespan=lifespan)
    state: ServiceState = app.state.service

    async def transform(request: Request) -> Response:
        scaler: OnnxTransform = holder["scaler"]
        X, rid = parse_batch(await request.body(), scaler.n_features, cfg.max_batch_rows)
        try:
            await faults.apply()
        except InjectedFault as exc:
            raise ApiError(500, str(exc), "injected_fault") from None
        return json_response({
            "data": scaler.transform(X),
            "transform": scaler.name,
            "version": scaler.version,
            "train_run_id": holder["run_id"],
            "served_by": state.served_by,
            "request_id": rid or request_id(request),
        })

    add_fast_route(
        app, "/transform", transform, ["POST"],
        tags=["prep"], response_model=TransformResponse, openapi_extra=PREDICT_OPENAPI,
        responses={413: {"description": "body or batch too large"}, 422: {}},
    )
    return app
