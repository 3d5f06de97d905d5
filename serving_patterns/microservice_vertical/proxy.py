"""The proxy of S6: runs the chain of stages in order and answers with the final label and trace.

Stage 1 (`iris_setosa`) sees every row; a row it calls setosa is done. Only the other rows go
on to stage 2 (`versicolor_vs_virginica`), which tells them apart, so a setosa row costs one
stage and any other row two. The reply carries the 3-class label, which stage decided each row
and a trace of the stage calls (name, served_by, model, version, rows, ms). A stage that fails
turns the request into a 502/503/504 naming that stage.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from patternkit.backends import Backend, RemoteModel, call_model, input_width, watch_models
from patternkit.predictor import parse_batch
from patternkit.proxy import Upstream
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import ServiceState, create_service, fast_route, json_response, request_id
from patternkit.settings import BatchSettings

CLASSES = ("setosa", "versicolor", "virginica")
SETOSA = 1  # stage 1's positive label: the row is setosa


class ChainProxySettings(BatchSettings):
    """Where the two stages are and how long each may take."""

    service_name: str = "proxy"
    stage1_url: str = Field(..., description="base URL of stage 1 (iris_setosa)")
    stage2_url: str = Field(..., description="base URL of stage 2 (versicolor_vs_virginica)")
    stage_timeout_ms: int = Field(2000, gt=0, description="deadline of each stage call")


STAGES = ("stage1", "stage2")


def create_app(settings: ChainProxySettings | None = None) -> FastAPI:
    cfg = settings or ChainProxySettings()
    stage1 = Backend("stage1", cfg.stage1_url.rstrip("/"))
    stage2 = Backend("stage2", cfg.stage2_url.rstrip("/"))
    timeout_s = cfg.stage_timeout_ms / 1000
    upstream = Upstream(timeout_s)

    @asynccontextmanager
    async def lifespan(
        app: FastAPI, state: ServiceState
    ) -> AsyncIterator[dict[str, list[RemoteModel]]]:
        state.metadata.update(stages=[stage1.url, stage2.url],
                              stage_timeout_ms=cfg.stage_timeout_ms, classes=list(CLASSES))
        # the row width comes from the models' /metadata: ready once one of them is known
        async with watch_models(upstream, [stage1, stage2], state) as models:
            yield {"models": models}

    app = create_service(cfg, title="microservice vertical: chain proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)
    metrics = app.state.service.metrics  # on /metrics, and on /stats under "chain"
    calls = metrics.counter("chain_stage_calls", "calls to each stage", {"stage": STAGES})
    rows_done = metrics.counter("chain_rows_decided", "rows decided by each stage",
                                {"stage": STAGES})
    for stage in STAGES:
        metrics.view(f"chain.{stage}_calls", calls.labels(stage))
        metrics.view(f"chain.rows_done_at_{stage}", rows_done.labels(stage))

    @fast_route(
        app, "/predict",
        tags=["predict"],
        openapi_extra=PREDICT_OPENAPI,
        responses={200: {"content": {"application/json": {"example": {
                       "prediction": [0], "labels": ["setosa"], "decided_by": ["stage1"],
                       "trace": [{"name": "stage1", "served_by": "stage1", "model": "iris_setosa",
                                  "version": "1.0.0", "ms": 2.1, "rows": [0]}],
                       "ms": 2.6, "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9"}}}},
                   413: {"description": "body or batch too large"}, 422: {},
                   502: {"description": "a stage failed; the message names it"},
                   503: {}, 504: {"description": "a stage missed STAGE_TIMEOUT_MS"}},
    )
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        X, body_rid = parse_batch(await request.body(), input_width(request.state.models),
                                   cfg.max_batch_rows)
        rid = body_rid or request_id(request)
        upstream: Upstream = request.state.upstream

        calls.labels("stage1").inc()
        first = await call_model(upstream, stage1, X, rid, timeout_s)
        labels = np.zeros(len(X), dtype=np.int64)  # setosa unless stage 2 says otherwise
        decided_by = ["stage1"] * len(X)
        trace: list[dict[str, Any]] = [first.trace(rows=list(range(len(X))))]

        onward = np.flatnonzero(np.asarray(first.prediction) != SETOSA)
        if onward.size:
            calls.labels("stage2").inc()
            second = await call_model(upstream, stage2, X[onward], rid, timeout_s)
            labels[onward] = 1 + np.asarray(second.prediction)  # 0 versicolor, 1 virginica
            for i in onward:
                decided_by[i] = "stage2"
            trace.append(second.trace(rows=onward.tolist()))
        rows_done.labels("stage1").inc(len(X) - onward.size)
        rows_done.labels("stage2").inc(onward.size)

        return json_response({
            "prediction": labels,
            "labels": [CLASSES[i] for i in labels],
            "decided_by": decided_by,
            "trace": trace,
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "request_id": rid,
        })

    return app
