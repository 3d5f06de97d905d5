"""The proxy of S8: answers an input it has seen before from Redis instead of the predictor.

`POST /predict` validates the body like the predictor does, looks the key
`pred:{model_version}:{sha256(canonical JSON of data)}` up in Redis and answers a HIT from
there; on a MISS it calls the predictor, stores the reply with a TTL and passes it on. The
model version comes from the predictor's `/metadata` (re-read every VERSION_REFRESH_S) and
from each reply's `X-Model-Version`; keys carry it, so a new model's answers are cached anew.
Redis is optional at run time: a Redis error makes the call a MISS served by the predictor.
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
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from patternkit.backends import RemoteModel, timed_call
from patternkit.predictor import parse_batch
from patternkit.proxy import Upstream
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
from patternkit.settings import ServiceSettings

log = logging.getLogger("prediction_cache.proxy")


class CacheProxySettings(ServiceSettings):
    """The proxy: where the predictor and Redis are, and how long a prediction stays cached."""

    service_name: str = "proxy"
    predictor_url: str = Field(..., description="base URL of the predictor")
    cache_redis_url: str = Field(..., description="Redis that holds the cached predictions")
    cache_ttl_s: float = Field(60.0, gt=0, description="lifetime of a cached prediction")
    version_refresh_s: float = Field(5.0, gt=0, description="re-read the predictor's /metadata")
    redis_timeout_ms: int = Field(200, gt=0, description="connect and socket timeout for Redis")
    cache_retry_s: float = Field(1.0, ge=0, description="after a Redis error, skip it this long")
    backend_timeout_ms: int = Field(5000, gt=0, description="predictor call timeout")
    max_batch_rows: int = Field(1000, gt=0, description="larger batches get 413")


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
        timeout = cfg.redis_timeout_ms / 1000
        self.redis = Redis.from_url(
            cfg.cache_redis_url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one bounded attempt per call; the next call retries
        )
        self.ttl_ms = max(1, round(cfg.cache_ttl_s * 1000))
        self.retry_s = cfg.cache_retry_s
        self.down_until = 0.0
        self.stats = stats  # the non-count facts /stats shows under "cache"
        self.stats.update(ttl_s=cfg.cache_ttl_s, redis_ok=True)
        self.hits = metrics.counter(
            "prediction_cache_hits", "answered from the cache", stat="cache.hits"
        )
        self.misses = metrics.counter(
            "prediction_cache_misses", "answered by the predictor", stat="cache.misses"
        )
        self.errors = metrics.counter(
            "prediction_cache_errors", "failed Redis calls", {"op": ("get", "set", "decode")},
            stat="cache.errors", total=True,
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    def _usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def _failed(self, op: str, exc: Exception) -> None:
        self.stats["redis_ok"] = False
        self.errors.labels(op).inc()
        self.down_until = time.monotonic() + self.retry_s
        log.warning("redis %s failed (%s: %s); predictor only for %.1fs",
                    op, type(exc).__name__, exc, self.retry_s)

    def _worked(self) -> None:
        if not self.stats["redis_ok"]:
            log.info("redis is back; caching resumes")
        self.stats["redis_ok"] = True

    async def get(self, key: str) -> dict[str, Any] | None:
        if not self._usable():
            return None
        try:
            raw = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        self._worked()
        if raw is None:
            return None
        try:
            payload: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError:  # not written by this proxy: count it, treat as a miss
            self.errors.labels("decode").inc()
            return None
        return payload

    async def set(self, key: str, payload: dict[str, Any]) -> None:
        if not self._usable():
            return
        try:
            await self.redis.set(key, orjson.dumps(payload), px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            self._failed("set", exc)
            return
        self._worked()


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
    cached = await cache.get(cache_key(version, X))
    if cached is not None:
        cache.hits.inc()
        cached["request_id"] = body_rid or request_id(request)
        return json_response(cached, headers={
            "x-cache": "HIT",
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
                         "description": "the prediction; X-Cache: HIT or MISS"},
                   413: {"description": "body or batch too large"}, 422: {}, 502: {}, 503: {}},
    )
    return app
