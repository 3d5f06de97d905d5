"""The API of S3: accepts a prediction job, queues it and answers 202 at once; results come later.

`POST /predict` validates the body exactly like the sync predictor (row width from the model's
manifest, finite numbers, batch size), records the job as pending in Redis, sends it to the
Celery queue and returns `{"job_id", "status": "pending", "result_url"}`. `GET /result/{id}`
shows pending, running, done (the predictor's output) or failed (error, attempts); an id that
was never submitted is a 404. The API never loads the model: the worker does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.responses import Response
from kombu.exceptions import OperationalError
from pydantic import Field

from patternkit.jobs import JobQueue, JobStore, make_celery
from patternkit.models import resolve_artifact
from patternkit.predictor import parse_batch
from patternkit.schemas import PREDICT_OPENAPI
from patternkit.service import ApiError, ServiceState, create_service, json_response, request_id
from patternkit.settings import ServiceSettings
from serving_patterns.asynchronous.worker import QUEUE, TASK_NAME


class ApiSettings(ServiceSettings):
    service_name: str = "api"
    redis_url: str = Field(..., description="Redis: the Celery broker and the job records")
    model_path: str = Field(..., description="model directory; only its manifest is read")
    max_batch_rows: int = Field(1000, gt=0, description="larger batches get 413")
    job_ttl_s: int = Field(86_400, gt=0, description="how long a job's record is kept")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    cfg = settings or ApiSettings()
    held: dict[str, JobQueue] = {}
    schema: dict[str, int] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        _, manifest_path = resolve_artifact(cfg.model_path)
        manifest = json.loads(manifest_path.read_text())
        schema["n_features"] = int(manifest["input_schema"]["n_features"])
        store = JobStore.from_url(cfg.redis_url, QUEUE, cfg.job_ttl_s)
        queue = JobQueue(make_celery(QUEUE, cfg.redis_url), store, TASK_NAME)
        await asyncio.to_thread(queue.connect)  # fail at start, not on the first job
        held["queue"] = queue
        state.metadata.update(queue=QUEUE, task=TASK_NAME, input_schema=manifest["input_schema"])
        state.stats["submitted"] = 0
        yield
        held.pop("queue").close()

    app = create_service(cfg, title="asynchronous: job API", lifespan=lifespan)
    state: ServiceState = app.state.service

    @app.post(
        "/predict",
        status_code=202,
        tags=["jobs"],
        openapi_extra=PREDICT_OPENAPI,
        responses={202: {"description": "queued; poll result_url (also the Location header)",
                         "content": {"application/json": {"example": {
                             "job_id": "7c47cd0f8e97457c87dbd9d0c23a04fc", "status": "pending",
                             "result_url": "/result/7c47cd0f8e97457c87dbd9d0c23a04fc",
                             "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9"}}}},
                   413: {"description": "body or batch too large"}, 422: {}, 503: {}},
    )
    async def submit(request: Request) -> Response:
        X, rid = parse_batch(await request.body(), schema["n_features"], cfg.max_batch_rows)
        rid = rid or request_id(request)
        try:
            job_id = await asyncio.to_thread(held["queue"].submit, X.tolist(), rid)
        except (redis.RedisError, OperationalError) as exc:  # the broker is down: not accepted
            raise ApiError(
                503, f"the job queue is unavailable: {type(exc).__name__}", "queue_unavailable"
            ) from None
        state.stats["submitted"] += 1
        url = f"/result/{job_id}"
        return json_response(
            {"job_id": job_id, "status": "pending", "result_url": url, "request_id": rid},
            202,
            headers={"Location": url},
        )

    @app.get("/result/{job_id}", tags=["jobs"])
    async def result(job_id: str) -> Response:
        job = await asyncio.to_thread(held["queue"].store.get, job_id)
        if job is None:
            raise ApiError(
                404, f"no job {job_id!r}: it was never submitted, or it expired (JOB_TTL_S)",
                "job_not_found",
            )
        return json_response(job.view())

    return app
