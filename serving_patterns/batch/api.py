"""The job manager of S4: users and upstream loaders talk to it; it never predicts.

`POST /rows` appends rows to `batch_input`, standing in for the upstream system that fills the
DWH: missing (null) and NaN features are stored as they come, and the batch job deals with
them. `POST /jobs` records an on-demand job and queues its planning (202 and a job id),
`GET /jobs/{id}` shows status, progress and the failed ids with reasons, and
`POST /jobs/{id}/rerun` reruns a finished job by RETRY_POLICY: `partial` its failed rows,
`all` every row, `none` refuses (409) because the next scheduled run takes the failed rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypedDict

import sqlalchemy as sa
from celery import Celery
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError as DatabaseUnavailable

from patternkit.db import in_tx, make_engine
from patternkit.jobs import QUEUE_ERRORS, connect_producer, make_celery
from patternkit.schemas import RowIdPath
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    create_service,
    error_response,
    from_state,
    json_response,
    request_id,
)
from patternkit.settings import ServiceSettings
from serving_patterns.batch import dwh
from serving_patterns.batch.worker import PLAN_TASK, QUEUE

# A feature is a number or null; NaN is accepted too: the DWH holds what upstream sends.
Feature = Annotated[float, Field(strict=True)] | None
Features = Annotated[list[Feature], Field(min_length=len(dwh.FEATURES),
                                          max_length=len(dwh.FEATURES))]


class RowsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[Features] = Field(..., min_length=1, description="rows of f1..f4")


class RowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: Features


class ApiSettings(ServiceSettings):
    service_name: str = "api"
    redis_url: str = Field(..., description="Redis: the Celery broker")
    database_url: str = Field(..., description="the DWH ({db.url} of the topology)")
    retry_policy: dwh.RetryPolicy = Field(
        "partial", description="all | partial | none: what POST /jobs/{id}/rerun covers"
    )
    max_rows_per_post: int = Field(10_000, gt=0, description="larger POST /rows get 413")


class Counts(CounterSet):
    """The API's counts, each declared once: on /metrics and, by name, on /stats."""

    PREFIX = "batch"
    rows_added: Annotated[Counter, "rows added by POST /rows"]
    jobs_submitted: Annotated[Counter, "on-demand jobs (POST /jobs)"]
    reruns_submitted: Annotated[Counter, "reruns (POST /jobs/{id}/rerun)"]


class Resources(TypedDict):
    """What the routes read from the lifespan state (`request.state.<name>`)."""

    engine: sa.Engine
    celery: Celery
    counts: Counts


Settings = Annotated[ApiSettings, Depends(from_state("settings"))]
Engine = Annotated[sa.Engine, Depends(from_state("engine"))]
Producer = Annotated[Celery, Depends(from_state("celery"))]
Counted = Annotated[Counts, Depends(from_state("counts"))]

router = APIRouter()


async def queue_plan(celery: Celery, engine: sa.Engine, job_id: str) -> None:
    """Send the job's planning to the worker; if the broker is down, forget the job."""
    try:
        await asyncio.to_thread(celery.send_task, PLAN_TASK, args=[job_id])
    except QUEUE_ERRORS as exc:
        await in_tx(engine, lambda conn: dwh.delete_job(conn, job_id))
        raise ApiError(503, f"the job queue (redis) is unavailable: {type(exc).__name__}",
                       "queue_unavailable") from None


def accepted(job_id: str, triggered_by: str, scope: str, **extra: Any) -> Response:
    url = f"/jobs/{job_id}"
    body = {"job_id": job_id, "status": dwh.PENDING, "triggered_by": triggered_by,
            "scope": scope, **extra, "job_url": url}
    return json_response(body, 202, headers={"Location": url})


def not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no job {job_id!r}", "job_not_found")


async def dwh_down(request: Request, exc: Exception) -> Response:
    orig = getattr(exc, "orig", exc)
    return error_response(503, f"the DWH is unavailable: {type(orig).__name__}",
                          "dwh_unavailable", request_id=request_id(request))


@router.post("/rows", status_code=201, tags=["dwh"],
             responses={413: {"description": "too many rows in one call"}, 422: {}})
async def add_rows(body: RowsIn, cfg: Settings, engine: Engine, counts: Counted) -> Response:
    if len(body.rows) > cfg.max_rows_per_post:
        raise ApiError(413, f"{len(body.rows)} rows exceed the limit of "
                            f"{cfg.max_rows_per_post} per call (MAX_ROWS_PER_POST)")
    ids = await in_tx(engine, lambda conn: dwh.insert_rows(conn, body.rows))
    counts.rows_added.inc(len(ids))
    return json_response({"count": len(ids), "ids": ids}, 201)


@router.get("/rows/{row_id}", tags=["dwh"], responses={404: {}})
async def get_row(row_id: RowIdPath, engine: Engine) -> Response:
    view = await in_tx(engine, lambda conn: dwh.row_view(conn, row_id))
    if view is None:
        raise ApiError(404, f"no row {row_id} in batch_input", "row_not_found")
    return json_response(view)


@router.put("/rows/{row_id}", tags=["dwh"], responses={404: {}, 422: {}})
async def correct_row(row_id: RowIdPath, body: RowIn, engine: Engine) -> Response:
    def work(conn: sa.Connection) -> dict[str, Any] | None:
        found = dwh.update_row(conn, row_id, body.features)
        return dwh.row_view(conn, row_id) if found else None

    view = await in_tx(engine, work)
    if view is None:
        raise ApiError(404, f"no row {row_id} in batch_input", "row_not_found")
    return json_response(view)


@router.post("/jobs", status_code=202, tags=["jobs"], responses={503: {}})
async def submit_job(cfg: Settings, engine: Engine, celery: Producer,
                     counts: Counted) -> Response:
    job_id, scope = uuid.uuid4().hex, dwh.new_rows_scope(cfg.retry_policy)
    await in_tx(engine, lambda conn: dwh.create_job(conn, job_id, "api", scope))
    await queue_plan(celery, engine, job_id)
    counts.jobs_submitted.inc()
    return accepted(job_id, "api", scope)


@router.get("/jobs", tags=["jobs"])
async def list_jobs(
    engine: Engine,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    triggered_by: Literal["api", "schedule", "rerun"] | None = None,
) -> Response:
    jobs = await in_tx(engine, lambda conn: dwh.list_jobs(conn, limit, triggered_by))
    return json_response({"jobs": jobs})


@router.get("/jobs/{job_id}", tags=["jobs"], responses={404: {}})
async def get_job(job_id: str, engine: Engine) -> Response:
    view = await in_tx(engine, lambda conn: dwh.job_view(conn, job_id))
    if view is None:
        raise not_found(job_id)
    return json_response(view)


@router.post("/jobs/{job_id}/rerun", status_code=202, tags=["jobs"],
             responses={404: {}, 409: {"description": "not finished, nothing failed, or "
                                                       "RETRY_POLICY=none"}})
async def rerun_job(job_id: str, cfg: Settings, engine: Engine, celery: Producer,
                    counts: Counted) -> Response:
    new_id = uuid.uuid4().hex
    scope = dwh.FAILED_ROWS if cfg.retry_policy == "partial" else dwh.ALL_ROWS

    def work(conn: sa.Connection) -> None:
        job = dwh.get_job(conn, job_id)
        if job is None:
            raise not_found(job_id)
        if cfg.retry_policy == "none":
            raise ApiError(409, "RETRY_POLICY=none: failed rows are not rerun; the next "
                                "scheduled run takes them", "rerun_disabled")
        if job["status"] in dwh.ACTIVE:
            raise ApiError(409, f"job {job_id} is {job['status']}: rerun it once it has "
                                "finished", "job_not_finished")
        if not dwh.count_failures(conn, job_id):
            raise ApiError(409, f"job {job_id} {job['status']}: it has no failed rows to "
                                "rerun", "nothing_to_rerun")
        dwh.create_job(conn, new_id, "rerun", scope, parent_id=job_id)

    await in_tx(engine, work)
    await queue_plan(celery, engine, new_id)
    counts.reruns_submitted.inc()
    return accepted(new_id, "rerun", scope, parent_id=job_id)


@router.get("/summary", tags=["dwh"])
async def summary(cfg: Settings, engine: Engine) -> Response:
    counts = await in_tx(engine, dwh.summary)
    return json_response({**counts, "retry_policy": cfg.retry_policy})


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    cfg = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = make_engine(cfg.database_url)
        await asyncio.to_thread(dwh.create_tables, engine)
        celery = make_celery(QUEUE, cfg.redis_url)
        await asyncio.to_thread(connect_producer, celery)  # fail at start, not on the first job
        state.metadata.update(
            queue=QUEUE, retry_policy=cfg.retry_policy, model=None,
            dwh=engine.url.render_as_string(hide_password=True),
        )
        try:
            yield {"engine": engine, "celery": celery, "counts": Counts(state.metrics)}
        finally:
            celery.close()
            engine.dispose()

    app = create_service(cfg, title="batch: job manager", lifespan=lifespan)
    app.add_exception_handler(DatabaseUnavailable, dwh_down)
    app.include_router(router)
    return app
