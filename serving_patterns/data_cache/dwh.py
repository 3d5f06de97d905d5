"""The DWH of S9: the item table behind a small query API that is slow on purpose.

`GET /items/{id}` answers `DWH_DELAY_MS` after it read the row, like a warehouse query, and
`/stats` counts the queries, so tests can prove that a cache hit never reached here.
`PUT /items/{id}` writes (or creates) a row and then invalidates its cache entry; should Redis
be down, the write still lands and the entry's TTL bounds how long the old row is served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, TypedDict

import sqlalchemy as sa
from fastapi import FastAPI, Path, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from patternkit.db import create_tables, make_engine
from patternkit.redisguard import REDIS_ERRORS, async_redis
from patternkit.schemas import FiniteFloat
from patternkit.service import ApiError, CounterSet, ServiceState, create_service, json_response
from serving_patterns.data_cache.cache import invalidate
from serving_patterns.data_cache.items import (
    ITEMS,
    MAX_ID,
    METADATA,
    N_FEATURES,
    DatabaseSettings,
    count_items,
    read_items,
    write_item,
)

log = logging.getLogger("data_cache.dwh")

ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="the item's id")]


class DwhSettings(DatabaseSettings):
    """How slow a read is, and which Redis holds the cache that a write invalidates."""

    service_name: str = "dwh"
    dwh_delay_ms: int = Field(200, ge=0, description="added latency of every read query")
    cache_redis_url: str = Field(..., description="the feature cache; a write drops its entry")
    redis_timeout_ms: int = Field(500, gt=0, description="connect and socket timeout for Redis")


class ItemWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: Annotated[list[FiniteFloat], Field(min_length=N_FEATURES, max_length=N_FEATURES)]


class Counts(CounterSet):
    """The DWH's counts, each declared once: on /metrics and, by name, on /stats."""

    PREFIX = "data_cache_dwh"
    queries: Annotated[Counter, "read queries"]
    rows_read: Annotated[Counter, "rows the read queries returned"]
    writes: Annotated[Counter, "rows written (PUT /items/{id})"]
    invalidations: Annotated[Counter, "cache entries invalidated after a write"]
    invalidation_errors: Annotated[Counter, "writes whose cache entry could not be invalidated"]


class Resources(TypedDict):
    """What the routes read from the lifespan state (`request.state.<name>`)."""

    engine: sa.Engine
    redis: Redis
    counts: Counts


async def get_item(item_id: ItemId, request: Request) -> Response:
    cfg: DwhSettings = request.state.settings
    counts: Counts = request.state.counts
    rows = await asyncio.to_thread(read_items, request.state.engine, [item_id])
    counts.queries.inc()
    counts.rows_read.inc(len(rows))
    await asyncio.sleep(cfg.dwh_delay_ms / 1000)  # the slow part: the answer comes after the read
    if not rows:
        raise ApiError(404, f"item {item_id} is not in {ITEMS.name}", "item_not_found")
    return json_response(rows[0])


async def put_item(item_id: ItemId, body: ItemWrite, request: Request) -> Response:
    """Write the row, then invalidate its cache entry; the TTL covers a failed invalidation."""
    counts: Counts = request.state.counts
    created, row = await asyncio.to_thread(write_item, request.state.engine, item_id,
                                           body.features)
    counts.writes.inc()
    try:
        await invalidate(request.state.redis, item_id)
    except REDIS_ERRORS as exc:
        counts.invalidation_errors.inc()
        log.warning("item %d written, but its cache entry was not invalidated (%s: %s); "
                    "it is served until its TTL ends", item_id, type(exc).__name__, exc)
        invalidated = False
    else:
        counts.invalidations.inc()
        invalidated = True
    return json_response({**row, "created": created, "cache_invalidated": invalidated},
                         201 if created else 200)


def create_app(settings: DwhSettings | None = None) -> FastAPI:
    cfg = settings or DwhSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = make_engine(cfg.database_url)
        await asyncio.to_thread(create_tables, engine, METADATA)
        n_items = await asyncio.to_thread(count_items, engine)
        redis = async_redis(cfg.cache_redis_url, cfg.redis_timeout_ms)
        where = engine.url.render_as_string(hide_password=True)
        state.metadata.update(table=ITEMS.name, items=n_items, dwh_delay_ms=cfg.dwh_delay_ms,
                              database=where)
        log.info("DWH %s: %d items in %s", where, n_items, ITEMS.name)
        try:
            yield {"engine": engine, "redis": redis, "counts": Counts(state.metrics)}
        finally:
            await redis.aclose()
            engine.dispose()

    app = create_service(cfg, title="data cache: DWH", lifespan=lifespan)
    app.get("/items/{item_id}", tags=["items"], responses={404: {}, 422: {}})(get_item)
    app.put("/items/{item_id}", tags=["items"], responses={201: {}, 422: {}})(put_item)
    return app
