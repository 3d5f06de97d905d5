"""The API of S3: accepts a prediction job, queues it and answers 202 at once; results come later.

`POST /predict` validates the body exactly like the sync predictor (row width from the model's
manifest, finite numbers, batch size), records the job as pending in Redis, sends it to the
Celery queue and returns `{"job_id", "status": "pending", "result_url"}`. `GET /result/{id}`
shows pending, running, done (the predictor's output) or failed (error, attempts); an id that
was never submitted is a 404. The API never loads the model: the worker does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field

from patternkit.jobs import QUEUE_ERRORS, JobQueue
from patternkit.models import input_schema
from patternkit.predictor import parse_batch
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import ApiError, ServiceState, create_service, json_response, request_id
from patternkit.settings import BatchSettings
from serving_patterns.asynchronous.worker import QUEUE, TASK_NAME


class ApiSettings(BatchSettings):
    service_name: str = "api"
    redis_url: str = Field(..., description="Redis: the Celery broker and the job records")
    model_path: str = Field(..., description="model directory; only its manifest is read")
    job_ttl_s: int = Field(86_400, gt=0, description="how long a job's record is kept")


class Resources(TypedDict):
    """What the routes read from the lifespan state (`request.state.<name>`)."""

    queue: JobQueue
    n_features: int  # the model's row width, from its manifest: the API never loads it
    submitted: Counter


async def submit(request: Request) -> Response:
    cfg: ApiSettings = request.state.settings
    queue: JobQueue = request.state.queue
    X, rid = parse_batch(await request.body(), request.state.n_features, cfg.max_batch_rows)
    rid = rid or request_id(request)
    try:
        job_id = await asyncio.to_thread(queue.submit, X.tolist(), rid)
    except QUEUE_ERRORS as exc:  # the broker is down: not accepted
        raise ApiError(
            503, f"the job queue is unavailable: {type(exc).__name__}", "queue_unavailable"
        ) from None
    request.state.submitted.inc()
    url = f"/result/{job_id}"
    return json_response(
        {"job_id": job_id, "status": "pending", "result_url": url, "request_id": rid},
        202,
        headers={"Location": url},
    )


async def result(job_id: str, request: Request) -> Response:
    queue: JobQueue = request.state.queue
    job = await asyncio.to_thread(queue.store.get, job_id)
    if job is None:
        raise ApiError(
            404, f"no job {job_id!r}: it was never submitted, or it expired (JOB_TTL_S)",
            "job_not_found",
        )
    return json_response(job.view())


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    cfg = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        schema = input_schema(cfg.model_path)
        queue = await asyncio.to_thread(  # connected now: fail at start, not on the first job
            JobQueue.open, QUEUE, cfg.redis_url, TASK_NAME, cfg.job_ttl_s
        )
        state.metadata.update(queue=QUEUE, task=TASK_NAME, input_schema=schema)
        submitted = state.metrics.counter(
            "asynchronous_jobs_submitted", "jobs accepted (202)", stat="submitted"
        )
        try:
            yield {"queue": queue, "n_features": int(schema["n_features"]),
                   "submitted": submitted}
        finally:
            queue.close()

    app = create_service(cfg, title="asynchronous: job API", lifespan=lifespan)
    app.post(
        "/predict", status_code=202, tags=["jobs"], openapi_extra=PREDICT_OPENAPI,
        responses={202: {"description": "queued; poll result_url (also the Location header)",
                         "content": {"application/json": {"example": {
                             "job_id": "7c47cd0f8e97457c87dbd9d0c23a04fc", "status": "pending",
                             "result_url": "/result/7c47cd0f8e97457c87dbd9d0c23a04fc",
                             "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9"}}}},
                   413: {"description": "body or batch too large"}, 422: {}, 503: {}},
    )(submit)
    app.get("/result/{job_id}", tags=["jobs"])(result)
    return app
