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
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from patternkit.proxy import Reply, Upstream
from patternkit.service import ApiError, ServiceState, create_service, json_response, request_id
from patternkit.settings import ServiceSettings
from serving_patterns.data_cache.cache import FeatureCache
from serving_patterns.data_cache.items import MAX_ID, N_FEATURES

log = logging.getLogger("data_cache.proxy")

PASS_HEADERS = ("x-served-by", "x-model-version")


class ProxySettings(ServiceSettings):
    """The proxy: where the predictor, the DWH and the cache are, and how long entries live."""

    service_name: str = "proxy"
    predictor_url: str = Field(..., description="base URL of the predictor")
    dwh_url: str = Field(..., description="base URL of the DWH's item API")
    cache_redis_url: str = Field(..., description="Redis that holds the cached features")
    cache_ttl_s: float = Field(300.0, gt=0, description="lifetime of a cached item")
    redis_timeout_ms: int = Field(200, gt=0, description="connect and socket timeout for Redis")
    cache_retry_s: float = Field(1.0, ge=0, description="after a Redis error, skip it this long")
    backend_timeout_ms: int = Field(5000, gt=0, description="DWH and predictor call timeout")


class ItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: StrictInt = Field(..., ge=1, le=MAX_ID, description="the item to classify")
    request_id: str | None = Field(None, max_length=128)


async def call(upstream: Upstream, what: str, method: str, url: str, **kwargs: Any) -> Reply:
    """A backend call whose timeout (504) or refusal (502) names the backend's role."""
    try:
        return await upstream.call(method, url, **kwargs)
    except ApiError as exc:
        raise ApiError(exc.status, f"{what}: {exc.message}", exc.error) from None


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    cfg = settings or ProxySettings()
    dwh = cfg.dwh_url.rstrip("/")
    predict_url = cfg.predictor_url.rstrip("/") + "/predict"
    res: dict[str, Any] = {}
    # DWH reads in flight, by (item id, stamp seen): a later miss joins a read only if no
    # write has invalidated the item since that read began.
    reads: dict[tuple[int, str], asyncio.Task[dict[str, Any]]] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        res["upstream"] = Upstream(cfg.backend_timeout_ms / 1000)
        cache = res["cache"] = FeatureCache(
            cfg.cache_redis_url, cfg.cache_ttl_s, cfg.redis_timeout_ms, cfg.cache_retry_s,
            state.registry,
        )
        state.stats["cache"] = cache.stats
        state.stats["dwh_reads"] = 0
        state.metadata.update(dwh=dwh, predictor=cfg.predictor_url, cache_ttl_s=cfg.cache_ttl_s)
        try:
            yield
        finally:
            await cache.aclose()
            await res["upstream"].aclose()

    app = create_service(cfg, title="data cache: proxy", lifespan=lifespan)
    state: ServiceState = app.state.service

    async def read_dwh(item_id: int, stamp: str | None, rid: str) -> dict[str, Any]:
        """One DWH query for the item, cached if the item was not written meanwhile."""
        state.stats["dwh_reads"] += 1
        reply = await call(res["upstream"], "the DWH", "GET", f"{dwh}/items/{item_id}", rid=rid)
        if reply.status == 404:
            raise ApiError(404, f"item {item_id} is not in the DWH", "item_not_found",
                           headers={"x-data-source": "dwh"})
        if reply.status != 200:
            raise ApiError(502, f"the DWH answered {reply.status}: {reply.body[:200]!r}",
                           "backend_error")
        row: Any = reply.json()
        features = row.get("features") if isinstance(row, dict) else None
        if not isinstance(features, list) or len(features) != N_FEATURES:
            raise ApiError(502, f"the DWH sent item {item_id} without {N_FEATURES} features",
                           "backend_error")
        await res["cache"].fill(item_id, row, stamp)
        return dict(row)

    def forget(key: tuple[int, str], done: asyncio.Task[dict[str, Any]]) -> None:
        reads.pop(key, None)
        if not done.cancelled():
            done.exception()  # each waiting caller raised it; mark it seen

    async def features_for(item_id: int, rid: str) -> tuple[dict[str, Any], str]:
        """(the item's row, where it came from: "cache" or "dwh")."""
        cache: FeatureCache = res["cache"]
        cached, stamp = await cache.lookup(item_id)
        if cached is not None:
            cache.hit()
            return cached, "cache"
        if stamp is None:  # Redis is unavailable: no stamp to guard a shared read, read alone
            cache.miss()
            return await read_dwh(item_id, None, rid), "dwh"
        key = (item_id, stamp)
        task = reads.get(key)
        cache.miss(coalesced=task is not None)
        if task is None:
            # a task of its own: a caller that goes away does not cancel the others' read
            task = reads[key] = asyncio.create_task(read_dwh(item_id, stamp, rid))
            task.add_done_callback(lambda done: forget(key, done))
        return await asyncio.shield(task), "dwh"

    @app.post(
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
    )
    async def predict(body: ItemRequest, request: Request) -> Response:
        rid = body.request_id or request_id(request) or ""
        row, source = await features_for(body.item_id, rid)
        reply = await call(
            res["upstream"], "the predictor", "POST", predict_url,
            body=orjson.dumps({"data": [row["features"]], "request_id": rid}), rid=rid,
        )
        if reply.status != 200:
            raise ApiError(502, f"the predictor answered {reply.status}: {reply.body[:200]!r}",
                           "backend_error")
        out: Any = reply.json()
        out.update(item_id=body.item_id, features=row["features"],
                   features_updated_at=row.get("updated_at"), data_source=source)
        headers = {k: v for k, v in reply.headers.items() if k in PASS_HEADERS}
        return json_response(out, headers={**headers, "x-data-source": source})

    return app
