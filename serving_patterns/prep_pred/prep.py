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
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from patternkit.faults import Faults
from patternkit.predictor import apply_faults, parse_batch
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import (
    ServiceState,
    add_fast_route,
    create_service,
    json_response,
    request_id,
)
from patternkit.settings import BatchSettings
from patternkit.transform import OnnxTransform
from serving_patterns.prep_pred.lineage import publish_run_id


class PrepSettings(BatchSettings):
    """Which scaler artifact to load and which faults to inject."""

    service_name: str = "prep"
    model_path: str = Field(..., description="the scaler's directory (model.onnx + manifest)")
    delay_ms: int = Field(0, ge=0, description="added latency per /transform call")
    fail_mode: str = Field("none", description="none | always | first_n:N | rate:P")


class TransformResponse(BaseModel):
    data: list[list[float]]
    transform: str
    version: str
    train_run_id: str
    served_by: str
    request_id: str | None = None


class Resources(TypedDict):
    """What the route reads from the lifespan state (`request.state.<name>`)."""

    scaler: OnnxTransform
    run_id: str
    faults: Faults


async def transform(request: Request) -> Response:
    cfg: PrepSettings = request.state.settings
    scaler: OnnxTransform = request.state.scaler
    X, rid = parse_batch(await request.body(), scaler.n_features, cfg.max_batch_rows)
    await apply_faults(request.state.faults)
    return json_response({
        "data": scaler.transform(X),
        "transform": scaler.name,
        "version": scaler.version,
        "train_run_id": request.state.run_id,
        "served_by": cfg.served_by,
        "request_id": rid or request_id(request),
    })


def create_app(settings: PrepSettings | None = None) -> FastAPI:
    cfg = settings or PrepSettings()
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        scaler = await asyncio.to_thread(OnnxTransform, cfg.model_path)  # raises: no start
        run_id = publish_run_id(state, scaler.manifest)
        state.model_version = scaler.version
        state.metadata.update(transform=scaler.manifest, model_path=str(scaler.path),
                              n_features=scaler.n_features, max_batch_rows=cfg.max_batch_rows)
        yield {"scaler": scaler, "run_id": run_id, "faults": faults}

    app = create_service(cfg, title="prep-pred: prep (scaler)", lifespan=lifespan)
    add_fast_route(
        app, "/transform", transform, ["POST"],
        tags=["prep"], response_model=TransformResponse, openapi_extra=PREDICT_OPENAPI,
        responses={413: {"description": "body or batch too large"}, 422: {}},
    )
    return app
