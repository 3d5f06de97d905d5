"""The retrieve stage of S5: looks feature rows up by id in the `prep_pred_features` table.

`POST /features {"ids": [0, 50]}` answers the rows in the order asked (`{"ids", "data",
"features"}`); an id with no row is a 404 naming it. The table (`features.py`) lives in
`DATABASE_URL` (the topology's `{db.url}`); start-up fails if it is missing. A database that
fails at request time is a 503 naming the feature store, never a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from patternkit.db import make_engine, show_url
from patternkit.faults import Faults
from patternkit.predictor import apply_faults
from patternkit.schemas import RowId
from patternkit.service import ApiError, ServiceState, create_service, json_response, request_id
from patternkit.settings import ServiceSettings
from serving_patterns.prep_pred.features import FEATURE_COLUMNS, FEATURES, TABLE


class RetrieveSettings(ServiceSettings):
    """Where the feature table is, and how many ids one call may ask for."""

    service_name: str = "retrieve"
    database_url: str = Field(..., description="the feature DB ({db.url} of the topology)")
    max_ids: int = Field(1000, gt=0, description="more ids in one call get 413")
    delay_ms: int = Field(0, ge=0, description="added latency per call")
    fail_mode: str = Field("none", description="none | always | first_n:N | rate:P")


class FeatureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[RowId] = Field(..., min_length=1, description="row ids of the feature table")


def fetch(engine: sa.Engine, ids: list[int]) -> dict[int, list[float]]:
    """The feature rows of `ids` that exist, by id."""
    query = sa.select(FEATURES).where(FEATURES.c.id.in_(sorted(set(ids))))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings()
        return {row["id"]: [row[c] for c in FEATURE_COLUMNS] for row in rows}


def count_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(FEATURES)).scalar_one())


class Resources(TypedDict):
    """What the route reads from the lifespan state (`request.state.<name>`)."""

    engine: sa.Engine
    faults: Faults


async def features(req: FeatureRequest, request: Request) -> Response:
    cfg: RetrieveSettings = request.state.settings
    if len(req.ids) > cfg.max_ids:
        raise ApiError(413, f"{len(req.ids)} ids exceed the limit of {cfg.max_ids} (MAX_IDS)")
    await apply_faults(request.state.faults)
    try:
        found = await asyncio.to_thread(fetch, request.state.engine, req.ids)
    except SQLAlchemyError as exc:
        raise ApiError(
            503, f"the feature store is unavailable: {type(exc).__name__}", "store_unavailable"
        ) from None
    missing = sorted({i for i in req.ids if i not in found})
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ApiError(404, f"no feature row for ids {shown} in {TABLE}", "unknown_ids",
                       [{"loc": "body.ids", "msg": f"unknown id {i}"} for i in missing[:10]])
    return json_response({
        "ids": req.ids,
        "data": [found[i] for i in req.ids],
        "features": FEATURE_COLUMNS,
        "served_by": cfg.served_by,
        "request_id": request_id(request),
    })


def create_app(settings: RetrieveSettings | None = None) -> FastAPI:
    cfg = settings or RetrieveSettings()
    faults = Faults.parse(cfg.fail_mode, cfg.delay_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = make_engine(cfg.database_url)
        rows = await asyncio.to_thread(count_rows, engine)  # no table: start-up fails here
        state.metadata.update(
            table=TABLE, rows=rows, features=list(FEATURE_COLUMNS), max_ids=cfg.max_ids,
            database=show_url(engine),
        )
        yield {"engine": engine, "faults": faults}
        engine.dispose()

    app = create_service(cfg, title="prep-pred: retrieve (features by id)", lifespan=lifespan)
    app.post("/features", tags=["retrieve"])(features)
    return app
