"""The proxy of S11: answers at once with the light model and queues the heavy model for later.

`POST /predict` validates the body against the heavy model's input schema, asks the light
predictor over REST (bounded by LIGHT_TIMEOUT_MS), then records and queues a heavy job, and
replies `{"stage": "light", prediction, probabilities, model, version, job_id, request_id,
answered_at}`. A missing stage is reported, not hidden: light predictor down -> 202 with
`light_error` and the job id; queue down -> 200 with the light answer and `heavy_error`; both
down -> 503. `GET /predict/{job_id}` serves the job: pending, running, then `stage: "heavy"`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from fastapi import FastAPI, Request
from fastapi.responses import Response
from kombu.exceptions import OperationalError
from pydantic import Field

from patternkit.jobs import JobQueue, JobStore, make_celery
from patternkit.models import resolve_artifact
from patternkit.predictor import parse_batch
from patternkit.proxy import Upstream
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import (
    ApiError,
    ServiceState,
    create_service,
    fast_route,
    json_response,
    request_id,
)
from patternkit.settings import ServiceSettings
from serving_patterns.multiple_stage_prediction.worker import QUEUE, TASK_NAME

QUEUE_ERRORS = (redis.RedisError, OperationalError)


class StageProxySettings(ServiceSettings):
    """The proxy: where the light predictor and Redis are, and how long the light stage may take."""

    service_name: str = "proxy"
    light_url: str = Field(..., description="base URL of the light predictor")
    redis_url: str = Field(..., description="Redis: the Celery broker and the job records")
    model_path: str = Field(
        ..., description="the heavy model's directory; only its manifest is read"
    )
    light_timeout_ms: int = Field(500, gt=0, description="the light stage's time budget")
    max_batch_rows: int = Field(1000, gt=0, description="larger batches get 413")
    job_ttl_s: int = Field(86_400, gt=0, description="how long a heavy job's record is kept")


def iso(ts: float) -> str:
    """A UTC timestamp as the job records show theirs (ISO 8601, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def stage_error(status: int, error: str, message: str) -> dict[str, Any]:
    return {"status": status, "error": error, "message": message}


def create_app(settings: StageProxySettings | None = None) -> FastAPI:
    cfg = settings or StageProxySettings()
    light_predict = cfg.light_url.rstrip("/") + "/predict"
    held: dict[str, Any] = {}  # the light client, the job queue and the input width

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        _, manifest_path = resolve_artifact(cfg.model_path)
        schema = json.loads(manifest_path.read_text())["input_schema"]
        held["n_features"] = int(schema["n_features"])
        store = JobStore.from_url(cfg.redis_url, QUEUE, cfg.job_ttl_s)
        queue = JobQueue(make_celery(QUEUE, cfg.redis_url), store, TASK_NAME)
        await asyncio.to_thread(queue.connect)  # fail at start, not on the first request
        held["queue"] = queue
        held["light"] = Upstream(cfg.light_timeout_ms / 1000)
        state.metadata.update(
            light_predictor=cfg.light_url, light_timeout_ms=cfg.light_timeout_ms,
            queue=QUEUE, task=TASK_NAME, input_schema=schema,
        )
        state.stats.update(light_answers=0, light_failures=0, submitted=0, queue_failures=0)
        yield
        await held.pop("light").aclose()
        held.pop("queue").close()

    app = create_service(cfg, title="multiple stage prediction: proxy", lifespan=lifespan)
    state: ServiceState = app.state.service

    async def ask_light(body: bytes, rid: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The light predictor's answer, or None and what went wrong (naming the predictor)."""
        upstream: Upstream = held["light"]
        try:
            reply = await upstream.call(
                "POST", light_predict, body=body, rid=rid, name="light predictor"
            )
        except ApiError as exc:  # 504 timeout or 502 unreachable, naming the predictor and URL
            return None, stage_error(exc.status, exc.error, exc.message)
        if reply.status == 200:
            answer: dict[str, Any] = orjson.loads(reply.body)
            return answer, {}
        try:
            detail = orjson.loads(reply.body).get("message", "")
        except (orjson.JSONDecodeError, AttributeError):
            detail = reply.body[:200].decode(errors="replace")
        message = f"light predictor {light_predict} answered {reply.status}: {detail}"
        return None, stage_error(502, "light_failed", message)

    async def enqueue(rows: list[list[float]], rid: str) -> tuple[str | None, dict[str, Any]]:
        """Record and queue the heavy job; its id, or None and why the queue refused it."""
        queue: JobQueue = held["queue"]
        try:
            return await asyncio.to_thread(queue.submit, rows, rid), {}
        except QUEUE_ERRORS as exc:
            return None, stage_error(
                503, "queue_unavailable",
                f"heavy stage: the job queue (Redis) is unavailable: {type(exc).__name__}",
            )

    @fast_route(
        app, "/predict",
        tags=["predict"],
        openapi_extra=PREDICT_OPENAPI,
        responses={
            200: {"content": {"application/json": {"example": {
                "stage": "light", "prediction": [0],
                "probabilities": [[0.978716, 0.021283142, 8.2392006e-07]], "model": "iris_lr",
                "version": "1.0.0", "served_by": "light",
                "job_id": "531a6e2d248346869d5488778e920689",
                "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9",
                "answered_at": "2026-12-01T21:19:52.940+00:00",
                "result_url": "/predict/531a6e2d248346869d5488778e920689"}}}},
            202: {"description": "light stage missing (light_error); the heavy job is queued"},
            413: {"description": "body or batch too large"}, 422: {},
            503: {"description": "neither stage is available"},
        },
    )
    async def predict(request: Request) -> Response:
        body = await request.body()
        X, body_rid = parse_batch(body, held["n_features"], cfg.max_batch_rows)
        rid = body_rid or request_id(request) or ""
        light, light_error = await ask_light(body, rid)
        # stamped before the job exists, so the heavy answer is always later than this
        answered_at = time.time()
        job_id, heavy_error = await enqueue(X.tolist(), rid)
        state.stats["light_answers" if light else "light_failures"] += 1
        state.stats["submitted" if job_id else "queue_failures"] += 1
        if light is None and job_id is None:
            raise ApiError(
                503, f"no stage is available: {light_error['message']}; {heavy_error['message']}",
                "stages_unavailable",
            )
        light = light or {}
        out: dict[str, Any] = {
            "stage": "light" if light else None,
            "prediction": light.get("prediction"),
            "probabilities": light.get("probabilities"),
            "model": light.get("model"),
            "version": light.get("version"),
            "served_by": light.get("served_by"),
            "job_id": job_id,
            "request_id": rid,
            "answered_at": iso(answered_at),
            "result_url": f"/predict/{job_id}" if job_id else None,
        }
        if light_error:
            out["light_error"] = light_error
        if heavy_error:
            out["heavy_error"] = heavy_error
        if light:
            return json_response(out, 200, {"x-model-version": str(light["version"])})
        return json_response(out, 202, {"location": out["result_url"]})

    @app.get("/predict/{job_id}", tags=["predict"], responses={404: {}, 503: {}})
    async def result(job_id: str) -> Response:
        queue: JobQueue = held["queue"]
        try:
            job = await asyncio.to_thread(queue.store.get, job_id)
        except QUEUE_ERRORS as exc:
            raise ApiError(
                503, f"the job store (Redis) is unavailable: {type(exc).__name__}",
                "queue_unavailable",
            ) from None
        if job is None:
            raise ApiError(
                404, f"no heavy job {job_id!r}: it was never queued, or it expired (JOB_TTL_S)",
                "job_not_found",
            )
        view = job.view()  # a done job carries the worker's answer, `stage: "heavy"` included
        return json_response({"stage": view.pop("stage", None), **view})

    return app
