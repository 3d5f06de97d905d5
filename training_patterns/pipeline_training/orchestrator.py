"""T2's orchestrator: the API that starts pipeline runs, and the dispatcher that moves them.

`POST /runs` validates each step's parameters and records a run with every step pending;
a dispatcher task (every DISPATCH_INTERVAL_S) sends each pending step whose upstreams are all
done to its own queue (`pipeline.<step>` on queue `<step>`), marks a run failed at the first
failed step and succeeded once every step is done. `GET /runs/{id}` shows each step: state,
cache hit or run and why, the worker and queue that handled it, times, and how often it
executed. `POST /runs/{id}/retry` resumes a failed run at its failed step (finished steps
are not sent again); `POST /runs/{id}/steps/{step}` re-runs one step of a finished run alone
(or with everything downstream of it). `GET /runs/{id}/executions` lists every handling of
its steps; `GET /steps` counts executions over all runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
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
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    background,
    create_service,
    from_state,
    json_response,
)
from patternkit.settings import ServiceSettings
from training_patterns.pipeline_training import steps, store
from training_patterns.pipeline_training.steps import PIPELINE, StepName
from training_patterns.pipeline_training.worker import task_name

log = logging.getLogger("pipeline.orchestrator")
RETRYABLE: tuple[type[Exception], ...] = (sa.exc.OperationalError, *QUEUE_ERRORS)


class ParamsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gather: steps.GatherParams = Field(default_factory=steps.GatherParams)
    prep: steps.PrepParams = Field(default_factory=steps.PrepParams)
    train: steps.TrainParams = Field(default_factory=steps.TrainParams)
    evaluate: steps.EvaluateParams = Field(default_factory=steps.EvaluateParams)
    build: steps.BuildParams = Field(default_factory=steps.BuildParams)


class FaultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_times: int = Field(0, ge=0, le=10, description="fail the step's first N executions "
                                                         "in this run")
    delay_ms: int = Field(0, ge=0, le=10_000, description="hold each execution this long first")


EXAMPLE: dict[str, Any] = {"params": {"prep": {"test_size": 0.3}, "train": {"kind": "lr"}},
                           "faults": {"train": {"fail_times": 1}}}


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})
    params: ParamsIn = Field(default_factory=ParamsIn,
                             description="each step's parameters (part of its cache key)")
    always_run: list[StepName] = Field(
        default_factory=list, description="steps never restored from cache in this run")
    faults: dict[StepName, FaultIn] = Field(
        default_factory=dict, description="injected failures or delays (not in the cache key)")


class OrchestratorSettings(ServiceSettings):
    service_name: str = "orchestrator"
    redis_url: str = Field(..., description="the Celery broker: one queue per step")
    database_url: str = Field(..., description="runs, steps, executions, cache ({db.url})")
    artifacts_dir: str = Field(..., description="artifacts/<run>/<step>/")
    data_dir: str = Field(..., description="the DWH tables gather may read")
    dispatch_interval_s: float = Field(0.1, gt=0, le=5)


class Counts(CounterSet):
    PREFIX = "pipeline"
    runs_submitted: Annotated[Counter, "runs started (POST /runs)"]
    runs_retried: Annotated[Counter, "failed runs resumed (POST /runs/{id}/retry)"]
    steps_rerun: Annotated[Counter, "single steps re-run (POST /runs/{id}/steps/{step})"]
    steps_dispatched: Annotated[Counter, "step messages sent to their queues"]
    dispatcher_ticks: Annotated[Counter, "dispatcher passes over the running runs"]


class Dispatcher:
    """Sends ready steps to their queues and settles finished runs."""

    def __init__(self, engine: sa.Engine, celery: Celery, counts: Counts) -> None:
        self.engine = engine
        self.celery = celery
        self.counts = counts

    def tick(self) -> None:
        with self.engine.begin() as conn:
            runs = store.active_runs(conn)
        for run in runs:
            self.advance(run["id"])
        self.counts.dispatcher_ticks.inc()

    def advance(self, run_id: str) -> None:
        with self.engine.begin() as conn:
            rows = store.step_rows(conn, run_id)
            failed = [s for s in PIPELINE.order if rows[s]["state"] == store.STEP_FAILED]
            if failed:
                store.finish_run(conn, run_id, store.FAILED, failed[0], rows[failed[0]]["error"])
                return
            if all(rows[s]["state"] == store.DONE for s in PIPELINE.order):
                store.finish_run(conn, run_id, store.SUCCEEDED)
                return
            ready = [s for s in PIPELINE.order if rows[s]["state"] == store.PENDING
                     and all(rows[u]["state"] == store.DONE for u in PIPELINE.upstream(s))]
            sent = [s for s in ready if store.set_step(
                conn, run_id, s, (store.PENDING,), state=store.QUEUED, queued_ts=time.time())]
        for step in sent:  # after the commit, so a fast worker finds the step queued
            queue = PIPELINE.steps[step].queue_name
            self.celery.send_task(task_name(step), args=[run_id], queue=queue,
                                  routing_key=queue)
            self.counts.steps_dispatched.inc()
            log.info("run %s: %s sent to queue %s", run_id[:8], step, queue)

    async def forever(self, interval_s: float) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except RETRYABLE as exc:
                log.warning("dispatcher: %s; trying again", exc)
            await asyncio.sleep(interval_s)


class Resources(TypedDict):
    engine: sa.Engine
    counts: Counts
    data_dir: Path
    artifacts_dir: Path


Engine = Annotated[sa.Engine, Depends(from_state("engine"))]
Counted = Annotated[Counts, Depends(from_state("counts"))]
DataDir = Annotated[Path, Depends(from_state("data_dir"))]
Artifacts = Annotated[Path, Depends(from_state("artifacts_dir"))]
RunId = Annotated[str, PathParam(max_length=64)]
router = APIRouter()


def duration(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start and end else None


def step_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": row["step"],
        "state": row["state"],
        "upstream": list(PIPELINE.upstream(row["step"])),
        "cache": row["cache"],
        "reason": row["reason"],
        "key": row["key"],
        "worker": row["worker"],
        "queue": row["queue"],
        "pid": row["pid"],
        "executions": row["executions"],
        "queued_ts": row["queued_ts"],
        "started_ts": row["started_ts"],
        "finished_ts": row["finished_ts"],
        "waited_s": duration(row["queued_ts"], row["started_ts"]),
        "duration_s": duration(row["started_ts"], row["finished_ts"]),
        "error": row["error"],
        "digest": row["digest"],
        "inputs": row["inputs"],
        "outputs": row["outputs"],
    }


def registered(artifacts: Path, run_id: str) -> dict[str, Any] | None:
    """The model this run's build step registered (or restored: the same version)."""
    path = artifacts / run_id / "build" / "registered.json"
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found


def run_view(conn: sa.Connection, run_id: str, artifacts: Path) -> dict[str, Any] | None:
    run = store.run_row(conn, run_id)
    if run is None:
        return None
    rows = store.step_rows(conn, run_id)
    current = next((s for s in PIPELINE.order if rows[s]["state"] in (
        store.QUEUED, store.STEP_RUNNING, store.STEP_FAILED)), None)
    return {
        "run_id": run_id,
        "state": run["state"],
        "current_step": current,
        "failed_step": run["failed_step"],
        "error": run["error"],
        "retries": run["retries"],
        "created_ts": run["created_ts"],
        "finished_ts": run["finished_ts"],
        "took_s": duration(run["created_ts"], run["finished_ts"]),
        "executions": {s: rows[s]["executions"] for s in PIPELINE.order},
        "cache": {s: rows[s]["cache"] for s in PIPELINE.order},
        "request": run["request"],
        "steps": [step_view(rows[s]) for s in PIPELINE.order],
        "model": registered(artifacts, run_id) if rows["build"]["state"] == store.DONE
        else None,
    }


def not_found(run_id: str) -> ApiError:
    return ApiError(404, f"no run {run_id!r}", "run_not_found")


async def read_run(engine: sa.Engine, run_id: str, artifacts: Path) -> dict[str, Any]:
    view = await db.in_tx(engine, lambda conn: run_view(conn, run_id, artifacts))
    if view is None:
        raise not_found(run_id)
    return view


def accepted(view: dict[str, Any]) -> Response:
    url = f"/runs/{view['run_id']}"
    return json_response(view, 202, headers={"Location": url})


@router.post("/runs", status_code=202, tags=["runs"], responses={422: {}})
async def submit_run(body: RunIn, engine: Engine, counts: Counted, data_dir: DataDir,
                     artifacts: Artifacts) -> Response:
    source = data_dir / body.params.gather.source
    if not source.is_file():
        have = ", ".join(sorted(p.name for p in data_dir.glob("*.csv"))) or "none"
        raise ApiError(422, f"no table {body.params.gather.source!r} in the DWH ({have})",
                       "validation_error", [{"loc": "body.params.gather.source",
                                             "msg": f"expected one of: {have}"}])
    run_id = uuid.uuid4().hex
    request = {"params": body.params.model_dump(), "always_run": body.always_run,
               "faults": {k: v.model_dump() for k, v in body.faults.items()}}
    await db.in_tx(engine, lambda conn: store.create_run(conn, run_id, request, PIPELINE.order))
    counts.runs_submitted.inc()
    return accepted(await read_run(engine, run_id, artifacts))


@router.get("/runs", tags=["runs"])
async def list_runs(engine: Engine, limit: Annotated[int, Query(ge=1, le=200)] = 20
                    ) -> Response:
    runs = await db.in_tx(engine, lambda conn: store.list_runs(conn, limit))
    return json_response({"runs": [
        {"run_id": r["id"], "state": r["state"], "failed_step": r["failed_step"],
         "retries": r["retries"], "created_ts": r["created_ts"]} for r in runs]})


@router.get("/runs/{run_id}", tags=["runs"], responses={404: {}})
async def get_run(run_id: RunId, engine: Engine, artifacts: Artifacts) -> Response:
    return json_response(await read_run(engine, run_id, artifacts))


@router.get("/runs/{run_id}/executions", tags=["runs"], responses={404: {}})
async def run_executions(run_id: RunId, engine: Engine) -> Response:
    """Every time a worker handled a step of this run: ran, restored or failed, and when."""

    def read(conn: sa.Connection) -> list[dict[str, Any]]:
        if store.run_row(conn, run_id) is None:
            raise not_found(run_id)
        return store.executions(conn, run_id)

    return json_response({"run_id": run_id, "executions": await db.in_tx(engine, read)})


@router.post("/runs/{run_id}/retry", status_code=202, tags=["runs"],
             responses={404: {}, 409: {}})
async def retry_run(run_id: RunId, engine: Engine, counts: Counted,
                    artifacts: Artifacts) -> Response:
    """Resume a failed run at its failed step: steps that finished are not run again."""

    def reopen(conn: sa.Connection) -> str | None:
        run = store.run_row(conn, run_id)
        if run is None:
            raise not_found(run_id)
        if run["state"] != store.FAILED:
            raise ApiError(409, f"run {run_id} is {run['state']}: only a failed run is retried",
                           "run_not_failed")
        for name, row in store.step_rows(conn, run_id).items():
            if row["state"] != store.DONE:
                store.set_step(conn, run_id, name, (row["state"],), state=store.PENDING,
                               **store.CLEARED)
        store.reopen_run(conn, run_id, retry=True)
        return str(run["failed_step"])

    failed_step = await db.in_tx(engine, reopen)
    counts.runs_retried.inc()
    log.info("run %s resumed at %s", run_id[:8], failed_step)
    return accepted(await read_run(engine, run_id, artifacts))


@router.post("/runs/{run_id}/steps/{step}", status_code=202, tags=["runs"],
             responses={404: {}, 409: {}})
async def rerun_step(run_id: RunId, step: StepName, engine: Engine, counts: Counted,
                     artifacts: Artifacts,
                     downstream: Annotated[bool, Query(
                         description="re-run every step downstream of it too")] = False
                     ) -> Response:
    """Re-run one step of a finished run (never restored from cache), its upstream
    artifacts as they are; with `downstream=true`, what depends on it runs again too."""

    def reopen(conn: sa.Connection) -> None:
        run = store.run_row(conn, run_id)
        if run is None:
            raise not_found(run_id)
        if run["state"] == store.RUNNING:
            raise ApiError(409, f"run {run_id} is still running", "run_running")
        rows = store.step_rows(conn, run_id)
        missing = [u for u in PIPELINE.upstream(step) if rows[u]["state"] != store.DONE]
        if missing:
            raise ApiError(409, f"{step} needs its upstream done first: {', '.join(missing)}",
                           "upstream_not_done")
        for name in (step, *(PIPELINE.downstream(step) if downstream else ())):
            store.set_step(conn, run_id, name, (rows[name]["state"],), state=store.PENDING,
                           force=True, **store.CLEARED)
        store.reopen_run(conn, run_id, retry=False)

    await db.in_tx(engine, reopen)
    counts.steps_rerun.inc()
    return accepted(await read_run(engine, run_id, artifacts))


@router.get("/steps", tags=["steps"])
async def step_totals(engine: Engine) -> Response:
    """The pipeline's declaration and every step's executions over all runs."""
    totals = await db.in_tx(engine, store.totals)
    return json_response({"pipeline": PIPELINE.describe(), "executions": {
        s: {"ran": totals.get(s, {}).get("ran", 0),
            "restored": totals.get(s, {}).get("restored", 0),
            "failed": totals.get(s, {}).get("failed", 0)} for s in PIPELINE.order}})


def create_app(settings: OrchestratorSettings | None = None) -> FastAPI:
    cfg = settings or OrchestratorSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = db.make_engine(cfg.database_url)
        await asyncio.to_thread(db.create_tables, engine, store.METADATA)
        celery = make_celery("pipeline", cfg.redis_url)
        await asyncio.to_thread(connect_producer, celery)
        counts = Counts(state.metrics)
        state.metadata.update(pipeline=PIPELINE.describe(), database=db.show_url(engine),
                              code={s: steps.code_hash(s)[:12] for s in PIPELINE.order})
        dispatcher = Dispatcher(engine, celery, counts)
        try:
            async with background(dispatcher.forever(cfg.dispatch_interval_s)):
                yield {"engine": engine, "counts": counts, "data_dir": Path(cfg.data_dir),
                       "artifacts_dir": Path(cfg.artifacts_dir)}
        finally:
            celery.close()
            engine.dispose()

    app = create_service(cfg, title="pipeline orchestrator (T2)", lifespan=lifespan)
    app.include_router(router)
    return app
