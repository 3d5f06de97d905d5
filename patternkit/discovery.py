"""A service registry in Redis: members announce themselves with a heartbeat that expires.

What Consul's agent (a TTL check) or a Kubernetes Endpoints object does, in one key per
member: a ready server writes `service:<id>` (a JSON description: url, model, version, pid,
since) with `SET ... EX ttl` every `ttl/3` seconds (`Registration`, a lifespan task), and
deletes it when it stops; a server that dies without stopping drops out when its key expires.
A reader (a proxy) lists the members with `SCAN service:*` and `MGET` (`members`), so no one
keeps a list that a dead member must remove itself from. The template predictor registers
itself when REGISTRY_URL is set (`patternkit.predictor`), once its model has loaded, with
the model and version it serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("patternkit.discovery")

PREFIX = "service:"


def key(member_id: str) -> str:
    return f"{PREFIX}{member_id}"


async def members(client: aioredis.Redis, prefix: str = PREFIX) -> list[dict[str, Any]]:
    """Every registered member (the JSON each wrote), ordered by id; a key that expires
    between the SCAN and the MGET is left out."""
    keys = sorted([k async for k in client.scan_iter(match=f"{prefix}*", count=500)])
    if not keys:
        return []
    found = []
    for raw in await client.mget(keys):
        if raw is None:
            continue
        with suppress(orjson.JSONDecodeError):
            doc = orjson.loads(raw)
            if isinstance(doc, dict) and "id" in doc and "url" in doc:
                found.append(doc)
    return found


class Registration:
    """Keep `service:<id>` alive while `describe()` returns a description (None: not ready,
    so not registered); delete it at the end."""

    def __init__(
        self, url: str, member_id: str, ttl_s: float, describe: Callable[[], dict[str, Any] | None]
    ) -> None:
        if ttl_s < 1:
            raise ValueError("REGISTRY_TTL_S must be at least 1 s (Redis EX is whole seconds)")
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.member_id = member_id
        self.ttl_s = int(ttl_s)
        self.describe = describe
        self.since = time.time()
        self.beats = 0
        self.errors = 0
        self.registered = False

    def stats(self) -> dict[str, Any]:
        return {"id": self.member_id, "ttl_s": self.ttl_s, "beats": self.beats,
                "errors": self.errors, "registered": self.registered}

    async def beat(self) -> bool:
        doc = self.describe()
        if doc is None:
            return False
        doc = {"id": self.member_id, "pid": os.getpid(), "since": self.since,
               "beat_at": time.time(), "ttl_s": self.ttl_s, **doc}
        await self.client.set(key(self.member_id), orjson.dumps(doc), ex=self.ttl_s)
        if not self.registered:
            log.info("registered %s as %s (TTL %d s)", doc.get("url"), key(self.member_id),
                     self.ttl_s)
        self.registered = True
        self.beats += 1
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:  # the key expires; the next beat re-adds it
                self.errors += 1
                log.warning("registry heartbeat failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.ttl_s / 3 if self.registered else 0.2)

    async def aclose(self) -> None:
        if self.registered:
            with suppress(RedisError, OSError):
                await self.client.delete(key(self.member_id))
                log.info("deregistered %s", key(self.member_id))
        await self.client.aclose()


@asynccontextmanager
async def registered(
    url: str, member_id: str, ttl_s: float, describe: Callable[[], dict[str, Any] | None]
) -> AsyncIterator[Registration]:
    """The registration as a lifespan context: beating in a task, deregistered at the end."""
    reg = Registration(url, member_id, ttl_s, describe)
    task = asyncio.create_task(reg.run(), name="registry-heartbeat")
    try:
        yield reg
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await reg.aclose()
