"""The feature cache of S9: Redis entries for DWH rows, filled so that an update always wins.

An entry `data_cache:item:{id}` holds the row as the DWH returned it, with a TTL. Every write
to a row sets a fresh stamp `data_cache:stamp:{id}` and deletes the entry (`invalidate`); a
reader notes the stamp before it queries the DWH and stores what it read only if the stamp is
unchanged (`FILL_LUA`), so a slow read that raced an update can never put the old row back.
The proxy, the DWH and the warm-up job all share these keys.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from patternkit.redisguard import REDIS_ERRORS, RedisGuard, async_redis
from patternkit.service import Metrics

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


async def invalidate(redis: Redis, item_id: int) -> None:
    """After a write to the row: a new stamp refuses fills begun before it; the entry goes."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(stamp_key(item_id), new_stamp(), ex=STAMP_TTL_S)
        pipe.delete(item_key(item_id))
        await pipe.execute()


class FeatureCache:
    """The proxy's side: lookups and guarded fills that never raise.

    A Redis error is counted and makes the call a miss; Redis is then skipped for
    `retry_s` (`patternkit.redisguard`). Each count is declared once, on /metrics and under
    "cache" on /stats.
    """

    def __init__(
        self, url: str, ttl_s: float, timeout_ms: int, retry_s: float, metrics: Metrics,
        stats: dict[str, Any],
    ) -> None:
        self.redis = async_redis(url, timeout_ms)
        self.fill_script = self.redis.register_script(FILL_LUA)
        self.ttl_ms = max(1, round(ttl_s * 1000))
        stats["ttl_s"] = ttl_s
        self.guard = RedisGuard(metrics, "data_cache", ("get", "fill", "decode"), stats,
                                retry_s, "DWH")
        self.hits = metrics.counter("data_cache_hits", "features answered from Redis",
                                    stat="cache.hits")
        self.misses = metrics.counter("data_cache_misses", "features read from the DWH",
                                      stat="cache.misses")
        self.coalesced = metrics.counter(
            "data_cache_coalesced", "misses that joined a DWH read already in flight",
            stat="cache.coalesced",
        )
        self.fills = metrics.counter("data_cache_fills", "DWH reads stored in Redis",
                                     stat="cache.fills")
        self.refused = metrics.counter(
            "data_cache_fills_refused", "reads not cached: the row changed meanwhile",
            stat="cache.fills_refused",
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    def hit(self) -> None:
        self.hits.inc()

    def miss(self, coalesced: bool = False) -> None:
        self.misses.inc()
        if coalesced:
            self.coalesced.inc()

    async def lookup(self, item_id: int) -> tuple[dict[str, Any] | None, str | None]:
        """(cached row or None, stamp now); the stamp is None when Redis could not be asked."""
        if not self.guard.usable():
            return None, None
        try:
            raw, stamp = await self.redis.mget(item_key(item_id), stamp_key(item_id))
        except REDIS_ERRORS as exc:
            self.guard.failed("get", exc)
            return None, None
        self.guard.worked()
        if raw is None:
            return None, stamp_text(stamp)
        try:
            row: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError:  # not written by this pattern: a miss, counted
            self.guard.errors.labels("decode").inc()
            return None, stamp_text(stamp)
        return row, stamp_text(stamp)

    async def fill(self, item_id: int, row: dict[str, Any], stamp: str | None) -> None:
        """Store a row read from the DWH, unless it was invalidated since `stamp` was read."""
        if stamp is None or not self.guard.usable():
            return
        try:
            stored = await self.fill_script(
                keys=[item_key(item_id), stamp_key(item_id)],
                args=[stamp, orjson.dumps(row), self.ttl_ms],
            )
        except REDIS_ERRORS as exc:
            self.guard.failed("fill", exc)
            return
        self.guard.worked()
        if stored:
            self.fills.inc()
        else:
            self.refused.inc()
            log.info("item %d changed during its DWH read: not cached", item_id)
