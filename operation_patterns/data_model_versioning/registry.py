"""The registry of O3: dataset versions and model versions, `name X.Y.Z-DATA.SPLIT`, over HTTP.

`POST /datasets` materialises a query's rows as a dataset version; `POST /models` computes the
next model version from what changed; promotion, evaluation runs and aliases complete the
model registry (what MLflow's Model Registry does, here in SQLAlchemy tables of the topology's
database). Every refusal is a 4xx JSON error naming the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import sqlalchemy as sa
from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field

from operation_patterns.data_model_versioning import datasets, model_versions
from operation_patterns.data_model_versioning.datasets import DatasetRequest
from operation_patterns.data_model_versioning.model_versions import (
    AliasRequest,
    ModelRegistration,
    RunRecord,
)
from operation_patterns.data_model_versioning.tables import DWH_IRIS, METADATA, DatabaseSettings
from patternkit.db import create_tables, make_engine, show_url
from patternkit.service import CounterSet, ServiceState, create_service, from_state, json_response

log = logging.getLogger("data_model_versioning.registry")


class RegistrySettings(DatabaseSettings):
    service_name: str = "registry"
    max_dataset_rows: int = Field(100_000, gt=0, description="a larger query result is a 413")


class Counts(CounterSet):
    PREFIX = "data_model_versioning_registry"
    datasets_created: Annotated[Counter, "dataset versions materialised"]
    models_registered: Annotated[Counter, "model versions registered (promotions excluded)"]
    promotions: Annotated[Counter, "prerelease versions promoted to a release"]
    runs_recorded: Annotated[Counter, "evaluation runs kept"]
    alias_changes: Annotated[Counter, "aliases set, moved or deleted"]


class Resources(TypedDict):
    engine: sa.Engine
    counts: Counts


EngineDep = Annotated[sa.Engine, Depends(from_state("engine"))]
CountsDep = Annotated[Counts, Depends(from_state("counts"))]
SettingsDep = Annotated[RegistrySettings, Depends(from_state("settings"))]
ERRORS: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 422: {}}


async def post_dataset(body: DatasetRequest, engine: EngineDep, counts: CountsDep,
                       cfg: SettingsDep) -> Response:
    found, created = await asyncio.to_thread(datasets.materialise, engine, body,
                                             cfg.max_dataset_rows)
    if created:
        counts.datasets_created.inc()
        log.info("dataset %s: %d train / %d test rows", found["version"],
                 found["rows"]["train"], found["rows"]["test"])
    return json_response({**found, "created": created}, 201 if created else 200)


async def get_datasets(engine: EngineDep) -> Response:
    return json_response({"datasets": await asyncio.to_thread(datasets.list_datasets, engine)})


async def get_dataset(version: str, engine: EngineDep) -> Response:
    return json_response(await asyncio.to_thread(datasets.require_dataset, engine, version))


async def get_part(version: str, part: str, engine: EngineDep) -> Response:
    return json_response(await asyncio.to_thread(datasets.read_part, engine, version, part))


async def post_model(body: ModelRegistration, engine: EngineDep, counts: CountsDep) -> Response:
    found, created = await asyncio.to_thread(model_versions.register, engine, body)
    if created:
        counts.models_registered.inc()
        log.info("registered %s (%s changed)", found["full_version"], found["changed"])
    return json_response({**found, "created": created}, 201 if created else 200)


async def get_models(engine: EngineDep) -> Response:
    return json_response({"models": await asyncio.to_thread(model_versions.list_models, engine)})


async def get_model(name: str, engine: EngineDep) -> Response:
    return json_response(await asyncio.to_thread(model_versions.list_versions, engine, name))


async def get_version(name: str, version: str, engine: EngineDep) -> Response:
    return json_response(await asyncio.to_thread(model_versions.get_version, engine, name,
                                                 version))


async def promote(name: str, version: str, engine: EngineDep, counts: CountsDep) -> Response:
    found = await asyncio.to_thread(model_versions.promote, engine, name, version)
    counts.promotions.inc()
    log.info("promoted %s %s to %s", name, version, found["version"])
    return json_response(found, 201)


async def post_run(name: str, version: str, body: RunRecord, engine: EngineDep,
                   counts: CountsDep) -> Response:
    found = await asyncio.to_thread(model_versions.add_run, engine, name, version, body)
    counts.runs_recorded.inc()
    return json_response(found, 201)


async def put_alias(name: str, alias: str, body: AliasRequest, engine: EngineDep,
                    counts: CountsDep) -> Response:
    found = await asyncio.to_thread(model_versions.set_alias, engine, name, alias, body.version)
    counts.alias_changes.inc()
    log.info("alias %s@%s -> %s (was %s)", name, alias, body.version, found["previous"])
    return json_response(found)


async def get_alias(name: str, alias: str, engine: EngineDep) -> Response:
    return json_response(await asyncio.to_thread(model_versions.resolve_alias, engine, name,
                                                 alias))


async def delete_alias(name: str, alias: str, engine: EngineDep, counts: CountsDep) -> Response:
    found = await asyncio.to_thread(model_versions.delete_alias, engine, name, alias)
    counts.alias_changes.inc()
    return json_response(found)


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    cfg = settings or RegistrySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = make_engine(cfg.database_url)
        await asyncio.to_thread(create_tables, engine, METADATA)
        state.metadata.update(database=show_url(engine), dwh_table=DWH_IRIS.name,
                              version_scheme="name X.Y.Z-DATA.SPLIT",
                              max_dataset_rows=cfg.max_dataset_rows)
        try:
            yield {"engine": engine, "counts": Counts(state.metrics)}
        finally:
            engine.dispose()

    app = create_service(cfg, title="data model versioning: registry", lifespan=lifespan)
    tags = ["datasets"]
    app.post("/datasets", tags=tags, status_code=201, responses={200: {}, **ERRORS, 413: {}})(
        post_dataset)
    app.get("/datasets", tags=tags)(get_datasets)
    app.get("/datasets/{version}", tags=tags, responses=ERRORS)(get_dataset)
    app.get("/datasets/{version}/{part}", tags=tags, responses=ERRORS)(get_part)
    tags = ["models"]
    app.post("/models", tags=tags, status_code=201, responses={200: {}, **ERRORS})(post_model)
    app.get("/models", tags=tags)(get_models)
    app.get("/models/{name}", tags=tags, responses=ERRORS)(get_model)
    app.get("/models/{name}/versions/{version}", tags=tags, responses=ERRORS)(get_version)
    app.post("/models/{name}/versions/{version}/promote", tags=tags, status_code=201,
             responses=ERRORS)(promote)
    app.post("/models/{name}/versions/{version}/runs", tags=tags, status_code=201,
             responses=ERRORS)(post_run)
    tags = ["aliases"]
    app.put("/models/{name}/aliases/{alias}", tags=tags, responses=ERRORS)(put_alias)
    app.get("/models/{name}/aliases/{alias}", tags=tags, responses=ERRORS)(get_alias)
    app.delete("/models/{name}/aliases/{alias}", tags=tags, responses=ERRORS)(delete_alias)
    return app
