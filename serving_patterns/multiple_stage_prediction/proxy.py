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
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypedDict

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field

from patternkit.backends import timed_call
from patternkit.jobs import QUEUE_ERRORS, JobQueue
from patternkit.models import input_schema
from patternkit.predictor import parse_batch
from patternkit.proxy import Upstream, error_message
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    add_fast_route,
    create_service,
    json_response,
    request_id,
)
from patternkit.settings import BatchSettings
from serving_patterns.multiple_stage_prediction.worker import QUEUE, TASK_NAME


class StageProxySettings(BatchSettings):
    """The proxy: where the light predictor and Redis are, and how long the light stage may take."""

    service_name: str = "proxy"
    light_url: str = Field(..., description="base URL of the light predictor")
    redis_url: str = Field(..., description="Redis: the Celery broker and the job records")
    model_path: str = Field(
        ..., description="the heavy model's directory; only its manifest is read"
    )
    light_timeout_ms: int = Field(500, gt=0, description="the light stage's time budget")
    job_ttl_s: int = Field(86_400, gt=0, description="how long a heavy job's record is kept")


def iso(ts: float) -> str:
    """A UTC timestamp as the job records show theirs (ISO 8601, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def stage_error(status: int, error: str, message: str) -> dict[str, Any]:
    return {"status": status, "error": error, "message": message}


class Counts(CounterSet):
    """The proxy's counts, each declared once: on /metrics and, by name, on /stats."""

    PREFIX = "multiple_stage"
    light_answers: Annotated[Counter, "requests the light model answered"]
    light_failures: Annotated[Counter, "requests the light predictor failed"]
    submitted: Annotated[Counter, "heavy jobs queued"]
    queue_failures: Annotated[Counter, "requests whose heavy job the queue refused"]


class Resources(TypedDict):
    """What the routes read from the lifespan state (`request.state.<name>`)."""

    queue: JobQueue
    n_features: int
    light_url: str
    counts: Counts


async def ask_light(
    request: Request, body: bytes, rid: str
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The light predictor's answer, or None and what went wrong (naming the predictor)."""
    url: str = request.state.light_url
    try:
        reply, _ = await timed_call(request.state.upstream, "POST", url, body=body, rid=rid,
                                    name="light predictor")
    except ApiError as exc:  # 504 timeout or 502 unreachable, naming the predictor and URL
        return None, stage_error(exc.status, exc.error, exc.message)
    if reply.status == 200:
        answer: dict[str, Any] = orjson.loads(reply.body)
        return answer, {}
    message = f"light predictor {url} answered {reply.status}: {error_message(reply.body)}"
    return None, stage_error(502, "light_failed", message)


async def enqueue(
    queue: JobQueue, rows: list[list[float]], rid: str
) -> tuple[str | None, dict[str, Any]]:
    """Record and queue the heavy job; its id, or None and why the queue refused it."""
    try:
        return await asyncio.to_thread(queue.submit, rows, rid), {}
    except QUEUE_ERRORS as exc:
        return None, stage_error(
            503, "queue_unavailable",
            f"heavy stage: the job queue (Redis) is unavailable: {type(exc).__name__}",
        )


async def predict(request: Request) -> Response:
    cfg: StageProxySettings = request.state.settings
    counts: Counts = request.state.counts
    body = await request.body()
    X, body_rid = parse_batch(body, request.state.n_features, cfg.max_batch_rows)
    rid = body_rid or request_id(request) or ""
    light, light_error = await ask_light(request, body, rid)
    # stamped before the job exists, so the heavy answer is always later than this
    answered_at = time.time()
    job_id, heavy_error = await enqueue(request.state.queue, X.tolist(), rid)
    (counts.light_answers if light else counts.light_failures).inc()
    (counts.submitted if job_id else counts.queue_failures).inc()
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


async def result(job_id: str, request: Request) -> Response:
    queue: JobQueue = request.state.queue
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


def create_app(settings: StageProxySettings | None = None) -> FastAPI:
    cfg = settings or StageProxySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        # The input width comes from the heavy model's manifest, on purpose, not from the
        # light predictor's /metadata (RemoteModel): the proxy must validate a request and
        # queue its heavy job (202) while the light predictor is down.
        schema = input_schema(cfg.model_path)
        queue = await asyncio.to_thread(  # connected now: fail at start, not on a request
            JobQueue.open, QUEUE, cfg.redis_url, TASK_NAME, cfg.job_ttl_s
        )
        state.metadata.update(
            light_predictor=cfg.light_url, light_timeout_ms=cfg.light_timeout_ms,
            queue=QUEUE, task=TASK_NAME, input_schema=schema,
        )
        try:
            yield {"queue": queue, "n_features": int(schema["n_features"]),
                   "light_url": cfg.light_url.rstrip("/") + "/predict",
                   "counts": Counts(state.metrics)}
        finally:
            queue.close()

    app = create_service(cfg, title="multiple stage prediction: proxy", lifespan=lifespan,
                         upstreams={"upstream": Upstream(cfg.light_timeout_ms / 1000)})
    add_fast_route(
        app, "/predict", predict, ["POST"],
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
    app.get("/predict/{job_id}", tags=["predict"], responses={404: {}, 503: {}})(result)
    return app
