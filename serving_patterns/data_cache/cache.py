"""The feature cache of S9: Redis entries for DWH rows, filled so that an update always wins.

An entry `data_cache:item:{id}` holds the row as the DWH returned it, with a TTL. Every write
to a row sets a fresh stamp `data_cache:stamp:{id}` and deletes the entry (`invalidate`); a
reader notes the stamp before it queries the DWH and stores what it read only if the stamp is
unchanged (`FILL_LUA`), so a slow read that raced an update can never put the old row back.
The proxy, the DWH and the warm-up job all share these keys.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("data_cache.cache")

PREFIX = "data_cache"
# A stamp must outlive any DWH read in flight; an hour is far beyond every timeout here.
STAMP_TTL_S = 3600

# KEYS: entry, stamp. ARGV: the stamp seen before the DWH read ('' = none), value, TTL in ms.
FILL_LUA = """
local now = redis.call('GET', KEYS[2]) or ''
if now ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def item_key(item_id: int) -> str:
    return f"{PREFIX}:item:{item_id}"


def stamp_key(item_id: int) -> str:
    return f"{PREFIX}:stamp:{item_id}"


def stamp_text(raw: bytes | str | None) -> str:
    """A stamp as the fill script compares it: '' when the item was never invalidated."""
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


def new_stamp() -> str:
    return uuid.uuid4().hex


def async_redis(url: str, timeout_ms: int) -> Redis:
    """An asyncio Redis client that fails fast: one bounded attempt per call, no retries."""
    timeout = timeout_ms / 1000
    return Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


async def invalidate(redis: Redis, item_id: int) -> None:
    """After a write to the row: a new stamp refuses fills begun before it; the entry goes."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(stamp_key(item_id), new_stamp(), ex=STAMP_TTL_S)
        pipe.delete(item_key(item_id))
        await pipe.execute()


class FeatureCache:
    """The proxy's side: lookups and guarded fills that never raise.

    A Redis error is counted and makes the call a miss; Redis is then skipped for
    `retry_s`, so a hung server costs one timeout per `retry_s`, not one per request.
    """

    def __init__(
        self, url: str, ttl_s: float, timeout_ms: int, retry_s: float,
        registry: CollectorRegistry,
    ) -> None:
        self.redis = async_redis(url, timeout_ms)
        self.fill_script = self.redis.register_script(FILL_LUA)
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.retry_s = retry_s
        self.down_until = 0.0
        self.stats: dict[str, Any] = {
            "hits": 0, "misses": 0, "coalesced": 0, "fills": 0, "fills_refused": 0,
            "errors": 0, "ttl_s": ttl_s, "redis_ok": True,
        }
        self._hits = Counter("data_cache_hits", "features answered from Redis", registry=registry)
        self._misses = Counter(
            "data_cache_misses", "features read from the DWH", registry=registry
        )
        self._refused = Counter(
            "data_cache_fills_refused", "reads not cached: the row changed meanwhile",
            registry=registry,
        )
        self._errors = Counter(
            "data_cache_errors", "failed Redis calls", ["op"], registry=registry
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    def hit(self) -> None:
        self.stats["hits"] += 1
        self._hits.inc()

    def miss(self, coalesced: bool = False) -> None:
        self.stats["misses"] += 1
        self._misses.inc()
        if coalesced:
            self.stats["coalesced"] += 1

    def _usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def _failed(self, op: str, exc: Exception) -> None:
        self.stats["errors"] += 1
        self.stats["redis_ok"] = False
        self._errors.labels(op).inc()
        self.down_until = time.monotonic() + self.retry_s
        log.warning("redis %s failed (%s: %s); DWH only for %.1fs",
                    op, type(exc).__name__, exc, self.retry_s)

    def _worked(self) -> None:
        if not self.stats["redis_ok"]:
            log.info("redis is back; caching resumes")
        self.stats["redis_ok"] = True

    async def lookup(self, item_id: int) -> tuple[dict[str, Any] | None, str | None]:
        """(cached row or None, stamp now); the stamp is None when Redis could not be asked."""
        if not self._usable():
            return None, None
        try:
            raw, stamp = await self.redis.mget(item_key(item_id), stamp_key(item_id))
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None, None
        self._worked()
        if raw is None:
            return None, stamp_text(stamp)
        try:
            row: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError:  # not written by this pattern: a miss, counted
            self.stats["errors"] += 1
            self._errors.labels("decode").inc()
            return None, stamp_text(stamp)
        return row, stamp_text(stamp)

    async def fill(self, item_id: int, row: dict[str, Any], stamp: str | None) -> None:
        """Store a row read from the DWH, unless it was invalidated since `stamp` was read."""
        if stamp is None or not self._usable():
            return
        try:
            stored = await self.fill_script(
                keys=[item_key(item_id), stamp_key(item_id)],
                args=[stamp, orjson.dumps(row), self.ttl_ms],
            )
        except (RedisError, OSError) as exc:
            self._failed("fill", exc)
            return
        self._worked()
        if stored:
            self.stats["fills"] += 1
        else:
            self.stats["fills_refused"] += 1
            self._refused.inc()
            log.info("item %d changed during its DWH read: not cached", item_id)
