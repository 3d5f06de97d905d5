"""TA3's API: runs the tangled or the clean pipeline on request and reports what happened.

`POST /runs {"pipeline": "tangled"|"clean", "experiment": false}` runs all three jobs once
(in a thread; a second of work on iris) against the three stores (SQLite file, CSV file, the
web API service) and answers with the report: steps executed, each job's outcome, the
failed steps and their errors, the stores whose read failed, and `steps_to_find` (how many
steps a user opens, from the last failure back to the broken read). A clean declaration that
does not validate is a 422 `dag_invalid` naming the cycle, with no step run.
`GET /code-paths` counts each pipeline module's data-access code paths from its source;
`GET /declaration` shows the clean pipeline's DAG.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from antipatterns.too_many_pipes import clean, codepaths, tangled
from patternkit.dag import DagError
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    create_service,
    from_state,
    json_response,
)
from patternkit.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    service_name: str = "api"
    sqlite_path: str = Field(..., description="the SQLite store (table sepal)")
    csv_path: str = Field(..., description="the CSV store")
    webapi_url: str = Field(..., description="the web API store's rows URL")
    webapi_token: str = Field("pipes-demo-token", description="its bearer token")
    artifacts_dir: str = Field(..., description="artifacts/<pipeline>-<run>/<job>/<step>/")
    repo_dir: str = Field(..., description="the model repository the build steps publish to")


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"pipeline": "clean", "experiment": False}]})
    pipeline: Literal["tangled", "clean"] = Field(..., description="which wiring to run")
    experiment: bool = Field(False, description="add the tuning experiment's cross edges "
                                                "(a cycle)")


class Counts(CounterSet):
    PREFIX = "pipes"
    runs: Annotated[Counter, "pipeline runs (POST /runs)"]
    rejected: Annotated[Counter, "clean declarations refused before running"]


class Resources(TypedDict):
    cfg: ApiSettings
    counts: Counts


Cfg = Annotated[ApiSettings, Depends(from_state("cfg"))]
Counted = Annotated[Counts, Depends(from_state("counts"))]
router = APIRouter()


def config(cfg: ApiSettings, experiment: bool) -> dict[str, Any]:
    return {"sqlite_path": cfg.sqlite_path, "csv_path": cfg.csv_path,
            "webapi_url": cfg.webapi_url, "webapi_token": cfg.webapi_token,
            "repo_dir": cfg.repo_dir, "experiment": experiment,
            "stores": {"sqlite": f"sqlite://{cfg.sqlite_path}#sepal",
                       "csv": f"csv://{cfg.csv_path}", "webapi": cfg.webapi_url}}


@router.post("/runs", tags=["runs"], responses={422: {}})
async def start_run(body: RunIn, cfg: Cfg, counts: Counted) -> Response:
    run_id = uuid.uuid4().hex[:8]
    art = Path(cfg.artifacts_dir) / f"{body.pipeline}-{run_id}"
    module = tangled if body.pipeline == "tangled" else clean
    counts.runs.inc()
    try:
        report = await asyncio.to_thread(module.run, config(cfg, body.experiment), art)
    except DagError as exc:
        counts.rejected.inc()
        raise ApiError(422, f"the declaration is refused, no step ran: {exc}", "dag_invalid",
                       [{"loc": "declaration", "msg": str(exc), "problem": exc.problem,
                         "steps": exc.steps, "steps_executed": 0}]) from None
    return json_response({"run_id": run_id, "artifacts": str(art), **report})


@router.get("/code-paths", tags=["code"])
async def code_paths() -> Response:
    return json_response({"tangled": codepaths.data_access_paths(tangled),
                          "clean": codepaths.data_access_paths(clean)})


@router.get("/declaration", tags=["code"])
async def declaration(experiment: Annotated[bool, Query()] = False) -> Response:
    return json_response({"steps": clean.declaration(experiment)})


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    cfg = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        yield {"cfg": cfg, "counts": Counts(state.metrics)}

    app = create_service(cfg, title="tangled vs clean pipelines (TA3)", lifespan=lifespan)
    app.include_router(router)
    return app
