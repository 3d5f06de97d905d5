"""patternkit.discovery against a real redis-server: a ready member registers with a TTL, a
stopped one deregisters at once, one that stops beating drops out when its key expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from patternkit.discovery import Registration, key, members, registered
from tests.test_predlog_stream import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


async def until(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def test_a_member_registers_once_ready_and_deregisters_when_it_stops(
        server: RedisServer) -> None:
    ready = {"now": False}

    def describe() -> dict[str, Any] | None:
        return {"url": "http://127.0.0.1:1", "version": "1.0.0"} if ready["now"] else None

    async def scenario() -> None:
        client = aioredis.Redis.from_url(server.url)
        async with registered(server.url, "p-1", 2, describe) as reg:
            await asyncio.sleep(0.5)
            assert await members(client) == []  # not ready: not registered
            ready["now"] = True
            await until(lambda: _has(client, "p-1"), 2)
            found = await members(client)
            assert [(m["id"], m["url"], m["version"], m["ttl_s"]) for m in found] == [
                ("p-1", "http://127.0.0.1:1", "1.0.0", 2)]
            assert 0 < await client.ttl(key("p-1")) <= 2
            assert reg.stats()["registered"] is True
        assert await members(client) == []  # deleted at the end, not left to expire
        await client.aclose()

    asyncio.run(scenario())


async def _has(client: aioredis.Redis, member_id: str) -> bool:
    return member_id in {m["id"] for m in await members(client)}


def test_a_member_that_stops_beating_drops_out_after_its_ttl(server: RedisServer) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(server.url)
        reg = Registration(server.url, "p-2", 1, lambda: {"url": "http://127.0.0.1:2"})
        assert await reg.beat()
        assert await _has(client, "p-2")
        took = await until(lambda: _not(client, "p-2"), 3)  # no more beats: as if killed
        assert took <= 2.0
        await reg.client.aclose()
        await client.set(key("junk"), b"not json")
        assert await members(client) == []  # a malformed value is left out
        await client.aclose()

    asyncio.run(scenario())


async def _not(client: aioredis.Redis, member_id: str) -> bool:
    return not await _has(client, member_id)


def test_a_ttl_under_one_second_is_refused() -> None:
    with pytest.raises(ValueError, match="REGISTRY_TTL_S"):
        Registration("redis://127.0.0.1:1/0", "x", 0.5, lambda: None)
