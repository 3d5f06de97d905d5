"""The proxy of S9: `POST /predict {"item_id"}` fetches the item's features, then predicts.

The features come from Redis when the item is cached (`X-Data-Source: cache`), else from the
slow DWH (`X-Data-Source: dwh`), after which they are cached with `CACHE_TTL_S`; the template
predictor then classifies them. Concurrent misses for one item share one DWH query. Redis is
optional at run time: when it fails, every call is read from the DWH, never answered with a 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from patternkit.backends import RemoteModel, timed_call
from patternkit.proxy import Upstream, error_message
from patternkit.redisguard import RedisCacheSettings
from patternkit.service import (
    ApiError,
    Metrics,
    ServiceState,
    create_service,
    json_response,
    request_id,
)
from serving_patterns.data_cache.cache import FeatureCache
from serving_patterns.data_cache.items import MAX_ID, N_FEATURES

log = logging.getLogger("data_cache.proxy")


class ProxySettings(RedisCacheSettings):
    """The proxy: where the predictor and the DWH are (Redis: RedisCacheSettings)."""

    service_name: str = "proxy"
    predictor_url: str = Field(..., description="base URL of the predictor")
    dwh_url: str = Field(..., description="base URL of the DWH's item API")
    cache_ttl_s: float = Field(300.0, gt=0, description="lifetime of a cached item")
    backend_timeout_ms: int = Field(5000, gt=0, description="DWH and predictor call timeout")


class ItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: StrictInt = Field(..., ge=1, le=MAX_ID, description="the item to classify")
    request_id: str | None = Field(None, max_length=128)


class Resources(TypedDict):
    """What the routes read from the lifespan state (`request.state.<name>`)."""

    features: Features
    model: RemoteModel  # the predictor, as a backend whose failures name it


class Features:
    """An item's features: from the cache, else from one DWH read shared by concurrent misses.

    DWH reads in flight are kept by (item id, stamp seen): a later miss joins a read only if
    no write has invalidated the item since that read began.
    """

    def __init__(self, cfg: ProxySettings, upstream: Upstream, cache: FeatureCache,
                 metrics: Metrics) -> None:
        self.dwh = cfg.dwh_url.rstrip("/")
        self.upstream = upstream
        self.cache = cache
        self.reads: dict[tuple[int, str], asyncio.Task[dict[str, Any]]] = {}
        self.dwh_reads = metrics.counter("data_cache_dwh_reads", "queries sent to the DWH",
                                         stat="dwh_reads")

    async def read_dwh(self, item_id: int, stamp: str | None, rid: str) -> dict[str, Any]:
        """One DWH query for the item, cached if the item was not written meanwhile."""
        self.dwh_reads.inc()
        reply, _ = await timed_call(self.upstream, "GET", f"{self.dwh}/items/{item_id}",
                                    rid=rid, name="DWH")
        if reply.status == 404:
            raise ApiError(404, f"item {item_id} is not in the DWH", "item_not_found",
                           headers={"x-data-source": "dwh"})
        if reply.status != 200:
            raise ApiError(502, f"the DWH answered {reply.status}: {error_message(reply.body)}",
                           "backend_error")
        row: Any = reply.json()
        features = row.get("features") if isinstance(row, dict) else None
        if not isinstance(features, list) or len(features) != N_FEATURES:
            raise ApiError(502, f"the DWH sent item {item_id} without {N_FEATURES} features",
                           "backend_error")
        await self.cache.fill(item_id, row, stamp)
        return dict(row)

    def _forget(self, key: tuple[int, str], done: asyncio.Task[dict[str, Any]]) -> None:
        self.reads.pop(key, None)
        if not done.cancelled():
            done.exception()  # each waiting caller raised it; mark it seen

    async def get(self, item_id: int, rid: str) -> tuple[dict[str, Any], str]:
        """(the item's row, where it came from: "cache" or "dwh")."""
        cached, stamp = await self.cache.lookup(item_id)
        if cached is not None:
            self.cache.hit()
            return cached, "cache"
        if stamp is None:  # Redis is unavailable: no stamp to guard a shared read, read alone
            self.cache.miss()
            return await self.read_dwh(item_id, None, rid), "dwh"
        key = (item_id, stamp)
        task = self.reads.get(key)
        self.cache.miss(coalesced=task is not None)
        if task is None:
            # a task of its own: a caller that goes away does not cancel the others' read
            task = self.reads[key] = asyncio.create_task(self.read_dwh(item_id, stamp, rid))
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task), "dwh"


async def predict(body: ItemRequest, request: Request) -> Response:
    features: Features = request.state.features
    model: RemoteModel = request.state.model
    rid = body.request_id or request_id(request) or ""
    row, source = await features.get(body.item_id, rid)
    X = np.asarray([row["features"]], dtype=np.float32)
    answer = await model.predict(X, rid, model.upstream.timeout_s)
    out = {
        "prediction": answer.prediction, "probabilities": answer.probabilities,
        "model": answer.model, "version": answer.version, "served_by": answer.served_by,
        "request_id": rid, "item_id": body.item_id, "features": row["features"],
        "features_updated_at": row.get("updated_at"), "data_source": source,
    }
    return json_response(out, headers={"x-served-by": answer.served_by,
                                       "x-model-version": answer.version,
                                       "x-data-source": source})


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()
    upstream = Upstream(cfg.backend_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        cache = FeatureCache(
            cfg.cache_redis_url, cfg.cache_ttl_s, cfg.redis_timeout_ms, cfg.cache_retry_s,
            state.metrics, state.stats.setdefault("cache", {}),
        )
        state.metadata.update(dwh=cfg.dwh_url.rstrip("/"), predictor=cfg.predictor_url,
                              cache_ttl_s=cfg.cache_ttl_s)
        try:
            yield {"features": Features(cfg, upstream, cache, state.metrics),
                   "model": RemoteModel(upstream, cfg.predictor_url, name="the predictor")}
        finally:
            await cache.aclose()

    app = create_service(cfg, title="data cache: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream})
    app.post(
        "/predict", tags=["predict"], responses={404: {}, 422: {}, 502: {}, 504: {}},
        openapi_extra={
            "requestBody": {"content": {"application/json": {"example": {"item_id": 7}}}},
            "responses": {"200": {"content": {"application/json": {"example": {
                "prediction": [0], "probabilities": [[0.98685384, 0.013145363, 7.216843e-07]],
                "model": "iris_lr", "version": "1.0.0", "served_by": "predictor",
                "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9", "item_id": 7,
                "features": [4.6, 3.4, 1.4, 0.3],
                "features_updated_at": "2026-12-01T21:20:01.300611+00:00",
                "data_source": "dwh"}}}}},
        },
    )(predict)
    return app
