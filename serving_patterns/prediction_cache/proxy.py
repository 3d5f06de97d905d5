"""The proxy of S8: answers an input it has seen before from Redis instead of the predictor.

`POST /predict` validates the body like the predictor does, looks the key
`pred:{model_version}:{sha256 of the rows' shape and float32 bytes}` up in Redis and answers a
HIT from there (`X-Cache: HIT`, `Age`); on a MISS it calls the predictor, stores the reply
with a TTL and passes it on. The model version comes from the predictor's `/metadata`
(re-read every VERSION_REFRESH_S) and from each reply's `X-Model-Version`; keys carry it, so a
new model's answers are cached anew. Redis is optional at run time: a Redis error makes the
call a MISS served by the predictor.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from patternkit.backends import RemoteModel, timed_call
from patternkit.predictor import parse_batch
from patternkit.proxy import Upstream
from patternkit.redisguard import REDIS_ERRORS, RedisCacheSettings, RedisGuard, async_redis
from patternkit.schemas import PREDICT_OPENAPI, PredictResponse
from patternkit.service import (
    ApiError,
    Metrics,
    ServiceState,
    add_fast_route,
    background,
    create_service,
    json_response,
    request_id,
)
from patternkit.settings import BatchSettings

log = logging.getLogger("prediction_cache.proxy")


class CacheProxySettings(RedisCacheSettings, BatchSettings):
    """The proxy: where the predictor is (Redis: RedisCacheSettings, CACHE_TTL_S 60 s)."""

    service_name: str = "proxy"
    predictor_url: str = Field(..., description="base URL of the predictor")
    version_refresh_s: float = Field(5.0, gt=0, description="re-read the predictor's /metadata")
    backend_timeout_ms: int = Field(5000, gt=0, description="predictor call timeout")


def cache_key(version: str, X: np.ndarray) -> str:
    """`pred:{version}:{sha256}` of the validated rows as the model sees them (float32).

    Any spelling of the same numbers (`5` or `5.0`, spaces, key order, a request id) gives the
    same key, because the key is taken after parsing, from the exact model input.
    """
    canonical = f"{X.shape}".encode() + np.ascontiguousarray(X, dtype=np.float32).tobytes()
    return f"pred:{version}:{hashlib.sha256(canonical).hexdigest()}"


class PredictionCache:
    """Redis get/set that never raise: an error is counted and the cache skipped for a while."""

    def __init__(self, cfg: CacheProxySettings, metrics: Metrics, stats: dict[str, Any]) -> None:
        self.redis = async_redis(cfg.cache_redis_url, cfg.redis_timeout_ms)
        self.ttl_ms = max(1, round(cfg.cache_ttl_s * 1000))
        stats["ttl_s"] = cfg.cache_ttl_s  # the non-count facts /stats shows under "cache"
        self.guard = RedisGuard(metrics, "prediction_cache", ("get", "set", "decode"), stats,
                                cfg.cache_retry_s, "predictor")
        self.hits = metrics.counter(
            "prediction_cache_hits", "answered from the cache", stat="cache.hits"
        )
        self.misses = metrics.counter(
            "prediction_cache_misses", "answered by the predictor", stat="cache.misses"
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def get(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The stored reply and when it was stored (epoch seconds), or None on a miss."""
        if not self.guard.usable():
            return None
        try:
            raw = await self.redis.get(key)
        except REDIS_ERRORS as exc:
            self.guard.failed("get", exc)
            return None
        self.guard.worked()
        if raw is None:
            return None
        try:
            entry = orjson.loads(raw)
            reply, stored_at = entry["reply"], float(entry["stored_at"])
            if not isinstance(reply, dict):
                raise TypeError("reply is not an object")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # not written by this proxy: count it, treat it as a miss
            self.guard.errors.labels("decode").inc()
            return None
        return reply, stored_at

    async def set(self, key: str, payload: dict[str, Any]) -> None:
        """Store a reply with the time it was stored (a HIT's `Age`), for CACHE_TTL_S."""
        if not self.guard.usable():
            return
        entry = {"stored_at": time.time(), "reply": payload}
        try:
            await self.redis.set(key, orjson.dumps(entry), px=self.ttl_ms)
        except REDIS_ERRORS as exc:
            self.guard.failed("set", exc)
            return
        self.guard.worked()


class Resources(TypedDict):
    """What the routes read from the lifespan state (`request.state.<name>`)."""

    cache: PredictionCache
    model: RemoteModel


async def predict(request: Request) -> Response:
    """A HIT from Redis, or the predictor's answer (then cached under its model version)."""
    cfg: CacheProxySettings = request.state.settings
    state: ServiceState = request.state.service
    model: RemoteModel = request.state.model
    cache: PredictionCache = request.state.cache
    version, n_features = model.version, model.n_features
    if version is None or n_features is None:
        raise ApiError(503, "the proxy does not know the model version yet", "not_ready")
    body = await request.body()
    X, body_rid = parse_batch(body, n_features, cfg.max_batch_rows)  # 422/413, never cached
    # Look up first and only then call the predictor: running both at once would make a
    # HIT cost a prediction anyway, and the point of the cache is to spare the predictor.
    found = await cache.get(cache_key(version, X))
    if found is not None:
        # The body is the stored reply: `served_by` and `version` name the predictor and model
        # that computed it. The headers describe this answer, as an HTTP cache's do: the proxy
        # served it (X-Served-By), from the cache (X-Cache), stored `Age` seconds ago; the
        # request id is this request's (the body's own, else X-Request-ID), as the predictor's.
        cached, stored_at = found
        cache.hits.inc()
        cached["request_id"] = body_rid or request_id(request)
        return json_response(cached, headers={
            "x-cache": "HIT",
            "age": str(max(0, int(time.time() - stored_at))),
            "x-served-by": state.served_by,
            "x-model-version": str(cached.get("version", version)),
        })
    cache.misses.inc()
    reply, _ = await timed_call(
        model.upstream, "POST", model.backend.predict_url, body=body, rid=request_id(request)
    )
    if reply.status == 200:
        # store under the version that computed the reply, which may be newer than ours
        computed_by = reply.headers.get("x-model-version") or version
        model.learn(computed_by)
        payload: Any = reply.json()
        payload.pop("request_id", None)
        await cache.set(cache_key(computed_by, X), payload)
    return Response(reply.body, status_code=reply.status,
                    headers={**reply.headers, "x-cache": "MISS"})


def create_app(settings: CacheProxySettings | None = None) -> FastAPI:
    cfg = settings or CacheProxySettings()
    upstream = Upstream(cfg.backend_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        def changed(old: str | None, new: str) -> None:
            state.model_version = new
            if not state.ready:
                state.ready = True  # ready (200 on /ready) only once the model is known
                log.info("ready: model version %s", new)

        model = RemoteModel(upstream, cfg.predictor_url, refresh_s=cfg.version_refresh_s,
                            on_change=changed)
        cache = PredictionCache(cfg, state.metrics, state.stats.setdefault("cache", {}))
        state.metadata.update(predictor=model.backend.url, cache_ttl_s=cfg.cache_ttl_s,
                              version_refresh_s=cfg.version_refresh_s)
        try:
            async with background(model.run()):
                yield {"cache": cache, "model": model}
        finally:
            await cache.aclose()

    app = create_service(cfg, title="prediction cache: proxy", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)
    add_fast_route(
        app, "/predict", predict, ["POST"], tags=["predict"], openapi_extra=PREDICT_OPENAPI,
        responses={200: {"model": PredictResponse,
                         "description": "the prediction; X-Cache: MISS, or HIT with Age "
                                        "(seconds since it was stored)"},
                   413: {"description": "body or batch too large"}, 422: {}, 502: {}, 503: {}},
    )
    return app
