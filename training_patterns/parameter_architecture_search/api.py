"""The search API of T3: takes searches, shows their trials and the registered best model.

`POST /searches {space, strategy, pruner, max_trials, time_budget_s, seed}` creates an
Optuna study in the shared RDB storage and a row in `parameter_architecture_search_runs`
(202 and an id); the worker replicas run its trials. `GET /searches/{id}` reads the trials
back from Optuna's tables (state, value, parameters, per-fold intermediate values, which
worker ran it) with the best trial and the registry's record of the exported model.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypedDict

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from patternkit import db
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    create_service,
    from_state,
    json_response,
)
from patternkit.settings import ServiceSettings
from training_patterns.parameter_architecture_search import store
from training_patterns.parameter_architecture_search.space import SPACES, SpaceName

EXAMPLE: dict[str, Any] = {"space": "families", "strategy": "tpe", "pruner": "halving",
                           "max_trials": 12, "time_budget_s": 60, "seed": 42}


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    space: SpaceName = Field("families", description="; ".join(
        f"{k}: {v}" for k, v in SPACES.items()))
    strategy: Literal["tpe", "random"] = Field(
        "tpe", description="Optuna's sampler: TPE (Bayesian) or random")
    pruner: Literal["halving", "hyperband", "none"] = Field(
        "halving", description="stops trials whose per-fold score lags (successive halving, "
                               "Hyperband) or none")
    max_trials: int = Field(12, ge=1, le=500, description="finished + pruned trials, exactly")
    time_budget_s: float = Field(60.0, gt=0, le=3600,
                                 description="no trial starts after this; one may finish")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the samplers' seed")


class ApiSettings(ServiceSettings):
    service_name: str = "api"
    database_url: str = Field(..., description="runs, registry and Optuna's tables ({db.url})")


class Counts(CounterSet):
    PREFIX = "search"
    searches_submitted: Annotated[Counter, "searches started (POST /searches)"]


class Resources(TypedDict):
    engine: sa.Engine
    storage: Any
    counts: Counts


Engine = Annotated[sa.Engine, Depends(from_state("engine"))]
Storage = Annotated[Any, Depends(from_state("storage"))]
Counted = Annotated[Counts, Depends(from_state("counts"))]

router = APIRouter()


def trial_view(trial: Any) -> dict[str, Any]:
    started, completed = trial.datetime_start, trial.datetime_complete
    return {
        "number": trial.number,
        "slot": trial.user_attrs.get("slot"),
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "worker": trial.user_attrs.get("worker"),
        "pid": trial.user_attrs.get("pid"),
        "claimed_at": trial.user_attrs.get("claimed_at"),
        "started": started.timestamp() if started else None,
        "completed": completed.timestamp() if completed else None,
        "duration_s": round((completed - started).total_seconds(), 4)
        if started and completed else None,
    }


def search_view(run: dict[str, Any], model: dict[str, Any] | None, trials: list[Any]
                ) -> dict[str, Any]:
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = store.best_of(trials)
    end = run["finished_ts"]
    return {
        "search_id": run["id"],
        "status": run["status"],
        "request": {k: run[k] for k in ("space", "strategy", "pruner", "max_trials",
                                        "time_budget_s", "seed")},
        "study": store.study_name(run["id"]),
        "claimed": run["claimed"],
        "stop_reason": run["stop_reason"],
        "error": run["error"],
        "created": run["created_ts"],
        "deadline": run["deadline_ts"],
        "finished": end,
        "took_s": round(end - run["created_ts"], 3) if end else None,
        "states": states,
        "workers": sorted({str(t.user_attrs.get("worker")) for t in trials
                           if "worker" in t.user_attrs}),
        "best": trial_view(best) if best is not None else None,
        "model": model,
        "trials": [trial_view(t) for t in trials],
    }


def not_found(search_id: str) -> ApiError:
    return ApiError(404, f"no search {search_id!r}", "search_not_found")


@router.post("/searches", status_code=202, tags=["searches"], responses={422: {}})
async def submit_search(body: SearchIn, engine: Engine, storage: Storage,
                        counts: Counted) -> Response:
    import optuna

    search_id = uuid.uuid4().hex

    def create() -> None:
        optuna.create_study(study_name=store.study_name(search_id), storage=storage,
                            direction="maximize")
        with engine.begin() as conn:
            store.create_run(conn, search_id, body.model_dump())

    await asyncio.to_thread(create)
    counts.searches_submitted.inc()
    url = f"/searches/{search_id}"
    return json_response({"search_id": search_id, "status": store.RUNNING, "search_url": url,
                          "request": body.model_dump()}, 202, headers={"Location": url})


@router.get("/searches", tags=["searches"])
async def list_searches(engine: Engine,
                        limit: Annotated[int, Query(ge=1, le=200)] = 20) -> Response:
    runs = await db.in_tx(engine, lambda conn: store.list_runs(conn, limit))
    return json_response({"searches": [
        {"search_id": r["id"], "status": r["status"], "space": r["space"],
         "strategy": r["strategy"], "max_trials": r["max_trials"],
         "stop_reason": r["stop_reason"]} for r in runs]})


@router.get("/searches/{search_id}", tags=["searches"], responses={404: {}})
async def get_search(search_id: Annotated[str, PathParam(max_length=64)], engine: Engine,
                     storage: Storage) -> Response:
    import optuna

    def read() -> dict[str, Any] | None:
        with engine.begin() as conn:
            run = store.run_row(conn, search_id)
            model = store.model_row(conn, search_id)
        if run is None:
            return None
        trials = optuna.load_study(study_name=store.study_name(search_id),
                                   storage=storage).get_trials(deepcopy=False)
        return search_view(run, model, trials)

    view = await asyncio.to_thread(read)
    if view is None:
        raise not_found(search_id)
    return json_response(view)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    cfg = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = db.make_engine(cfg.database_url)
        await asyncio.to_thread(db.create_tables, engine, store.METADATA)
        optuna_storage = await asyncio.to_thread(store.storage, cfg.database_url)
        state.metadata.update(spaces=SPACES, database=db.show_url(engine))
        try:
            yield {"engine": engine, "storage": optuna_storage,
                   "counts": Counts(state.metrics)}
        finally:
            engine.dispose()
            optuna_storage.remove_session()

    app = create_service(cfg, title="search API (T3)", lifespan=lifespan)
    app.include_router(router)
    return app
