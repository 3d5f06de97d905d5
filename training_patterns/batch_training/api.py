"""The trainer API of T1: start a training run, follow it, list the registered models.

`POST /jobs {seed?, params?, min_accuracy?, max_regression?, fail_step?}` records a run in
`batch_training_runs` and sends `batch_training.train` (202 and the run id); every field is
optional (the worker's settings decide). `GET /jobs/{id}` shows the step it is at, the rows
dropped by reason, the metrics, and for a failure the step and its error;
`POST /jobs/{id}/rerun` re-kicks a failed run (409 otherwise). `GET /models` lists the
versions published in the model repository with the run that registered each one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

import sqlalchemy as sa
from celery import Celery
from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from patternkit import db
from patternkit.jobs import QUEUE_ERRORS, connect_producer, make_celery
from patternkit.model_repository import ModelStore
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    create_service,
    from_state,
    json_response,
)
from patternkit.settings import ServiceSettings
from training_patterns.batch_training import dwh, store, train
from training_patterns.batch_training.worker import QUEUE, TRAIN_TASK

EXAMPLE: dict[str, Any] = {"seed": 0, "params": {"C": 1.0}}
RunId = Annotated[str, PathParam(max_length=64)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    C: float = Field(1.0, gt=0, le=1e6, description="inverse regularisation strength")
    max_iter: int = Field(1000, ge=10, le=100_000)


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="split and estimator seed")
    params: Params | None = Field(None, description="LogisticRegression's parameters")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="this run's bar")
    max_regression: float | None = Field(None, ge=0, le=1,
                                         description="this run's margin to the current model")
    fail_step: train.StepName | None = Field(
        None, description="fault drill: the step fails on the first attempt")


class ApiSettings(ServiceSettings):
    service_name: str = "api"
    redis_url: str = Field(..., description="Redis: the Celery broker")
    database_url: str = Field(..., description="the DWH and the runs table ({db.url})")
    repo_dir: str = Field(..., description="the model repository folder")


class Counts(CounterSet):
    PREFIX = "batch_training"
    jobs_submitted: Annotated[Counter, "training runs started (POST /jobs)"]
    rekicks: Annotated[Counter, "failed runs re-kicked (POST /jobs/{id}/rerun)"]


class Resources(TypedDict):
    engine: sa.Engine
    celery: Celery
    counts: Counts


Engine = Annotated[sa.Engine, Depends(from_state("engine"))]
Producer = Annotated[Celery, Depends(from_state("celery"))]
Counted = Annotated[Counts, Depends(from_state("counts"))]
Settings = Annotated[ApiSettings, Depends(from_state("settings"))]

router = APIRouter()


def not_found(run_id: str) -> ApiError:
    return ApiError(404, f"no training run {run_id!r}", "job_not_found")


async def send(celery: Celery, run_id: str) -> None:
    try:
        await asyncio.to_thread(celery.send_task, TRAIN_TASK, args=[run_id])
    except QUEUE_ERRORS as exc:
        raise ApiError(503, f"the job queue (redis) is unavailable: {type(exc).__name__}",
                       "queue_unavailable") from None


def accepted(run: dict[str, Any]) -> Response:
    url = f"/jobs/{run['id']}"
    return json_response({"job_id": run["id"], "status": run["status"],
                          "triggered_by": run["triggered_by"], "request": run["request"],
                          "job_url": url}, 202, headers={"Location": url})


@router.post("/jobs", status_code=202, tags=["jobs"], responses={422: {}, 503: {}})
async def submit_job(engine: Engine, celery: Producer, counts: Counted,
                     body: JobIn | None = None) -> Response:
    request = (body or JobIn()).model_dump(exclude_none=True)

    def create(conn: sa.Connection) -> dict[str, Any]:
        run = store.get(conn, store.create_run(conn, "api", request))
        assert run is not None
        return run

    run = await db.in_tx(engine, create)
    try:
        await send(celery, run["id"])
    except ApiError:
        await db.in_tx(engine, lambda conn: store.delete_run(conn, run["id"]))
        raise
    counts.jobs_submitted.inc()
    return accepted(run)


@router.get("/jobs", tags=["jobs"])
async def list_jobs(engine: Engine, limit: Annotated[int, Query(ge=1, le=200)] = 20,
                    status: store.Status | None = None) -> Response:
    runs = await db.in_tx(engine, lambda conn: store.list_runs(conn, limit, status))
    return json_response({"jobs": [store.view(r) for r in runs]})


@router.get("/jobs/{job_id}", tags=["jobs"], responses={404: {}})
async def get_job(job_id: RunId, engine: Engine) -> Response:
    run = await db.in_tx(engine, lambda conn: store.get(conn, job_id))
    if run is None:
        raise not_found(job_id)
    return json_response(store.view(run))


@router.post("/jobs/{job_id}/rerun", status_code=202, tags=["jobs"],
             responses={404: {}, 409: {"description": "the run has not failed"}})
async def rerun_job(job_id: RunId, engine: Engine, celery: Producer,
                    counts: Counted) -> Response:
    def kick(conn: sa.Connection) -> dict[str, Any]:
        run = store.get(conn, job_id)
        if run is None:
            raise not_found(job_id)
        if not store.rekick(conn, job_id):
            raise ApiError(409, f"run {job_id} is {run['status']}: only a failed run is "
                                "re-kicked (start a new one with POST /jobs)", "not_failed")
        kicked = store.get(conn, job_id)
        assert kicked is not None
        return kicked

    run = await db.in_tx(engine, kick)
    await send(celery, job_id)
    counts.rekicks.inc()
    return accepted(run)


@router.get("/models", tags=["models"])
async def list_models(engine: Engine, cfg: Settings) -> Response:
    repo = ModelStore(Path(cfg.repo_dir) / train.MODEL_NAME, name=train.MODEL_NAME)
    published = await asyncio.to_thread(repo.published)
    runs = await db.in_tx(engine, store.by_version)
    versions = []
    for p in published:
        run = runs.get(p.version) or {}
        versions.append({"version": p.version, "sha256": p.sha256,
                         "created": p.manifest.get("created"),
                         "metrics": p.manifest.get("metrics", {}),
                         "provenance": p.manifest.get("provenance", {}),
                         "job_id": run.get("id"), "triggered_by": run.get("triggered_by")})
    return json_response({"name": train.MODEL_NAME,
                          "latest": versions[0]["version"] if versions else None,
                          "versions": versions})


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    cfg = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = db.make_engine(cfg.database_url)
        await asyncio.to_thread(dwh.create_tables, engine)
        await asyncio.to_thread(db.create_tables, engine, store.METADATA)
        celery = make_celery(QUEUE, cfg.redis_url)
        await asyncio.to_thread(connect_producer, celery)
        state.metadata.update(queue=QUEUE, model=train.MODEL_NAME, steps=train.STEPS,
                              database=db.show_url(engine), repository=cfg.repo_dir)
        try:
            yield {"engine": engine, "celery": celery, "counts": Counts(state.metrics)}
        finally:
            celery.close()
            engine.dispose()

    app = create_service(cfg, title="trainer API (T1)", lifespan=lifespan)
    app.include_router(router)
    return app
