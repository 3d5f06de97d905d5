"""A Redis that a proxy may lose: a client that fails fast, and a guard that skips it a while.

A cache in front of a slower source (S8's predictions, S9's features) must never turn a Redis
failure into a 500: `async_redis` makes one bounded attempt per call, and `RedisGuard` counts
each failed call (one counter, by operation, shown as `cache.errors` on /stats), shows
`cache.redis_ok`, logs the change both ways and skips Redis for `retry_s` after an error, so
that a hung server costs one timeout per `retry_s`, not one per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from pydantic import Field
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from patternkit.service import Metrics
from patternkit.settings import ServiceSettings

log = logging.getLogger("patternkit.redisguard")

# what a failed Redis call raises (a refused or dropped connection is an OSError too)
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


class RedisCacheSettings(ServiceSettings):
    """A service with a Redis cache it may lose: where it is, how long an entry lives (set the
    default per service), the per-call timeout and how long Redis is skipped after an error."""

    cache_redis_url: str = Field(..., description="Redis that holds the cache")
    cache_ttl_s: float = Field(60.0, gt=0, description="lifetime of a cached entry")
    redis_timeout_ms: int = Field(200, gt=0, description="connect and socket timeout for Redis")
    cache_retry_s: float = Field(1.0, ge=0, description="after a Redis error, skip it this long")


def async_redis(url: str, timeout_ms: int) -> Redis:
    """An asyncio Redis client that fails fast: one bounded attempt per call, no retries."""
    timeout = timeout_ms / 1000
    return Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class RedisGuard:
    """Whether to ask Redis now, and the bookkeeping of its failures.

    `metric` names the error counter (`{metric}_errors`, labelled by `ops`); `stats` is the
    dict /stats shows under "cache" (this guard keeps `redis_ok` there); `fallback` says in
    the log what answers while Redis is skipped.
    """

    def __init__(
        self, metrics: Metrics, metric: str, ops: Iterable[str], stats: dict[str, Any],
        retry_s: float, fallback: str,
    ) -> None:
        self.errors = metrics.counter(
            f"{metric}_errors", "failed Redis calls", {"op": tuple(ops)},
            stat="cache.errors", total=True,
        )
        self.stats = stats
        self.stats["redis_ok"] = True
        self.retry_s = retry_s
        self.fallback = fallback
        self.down_until = 0.0

    def usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self, op: str, exc: Exception) -> None:
        self.stats["redis_ok"] = False
        self.errors.labels(op).inc()
        self.down_until = time.monotonic() + self.retry_s
        log.warning("redis %s failed (%s: %s); %s only for %.1fs",
                    op, type(exc).__name__, exc, self.fallback, self.retry_s)

    def worked(self) -> None:
        if not self.stats["redis_ok"]:
            log.info("redis is back; caching resumes")
        self.stats["redis_ok"] = True
