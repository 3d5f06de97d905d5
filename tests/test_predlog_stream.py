"""patternkit.predlog's Redis Stream sink (a real redis-server): records become entries that
decode to rows, the buffer spools while Redis is down and drains when it is back, the excess
is dropped and counted exactly; `db.insert_new` stores a key once and counts what it skipped."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest

from patternkit.db import create_tables, insert_new, make_engine
from patternkit.infra import free_port, redis_command, redis_ping
from patternkit.predlog import (
    LOG_KEY,
    STREAM_FIELD,
    PredictionLog,
    decode_record,
    log_columns,
    stream_table,
)


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(redis_command(self.port, self.tmp),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_ping(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    yield srv
    srv.stop()


def dropped(registry: CollectorRegistry) -> float:
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines()
                if x.startswith('prediction_log_dropped_total{reason="buffer_full"}'))
    return float(line.split()[-1])


async def until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_records_are_stream_entries_that_decode_to_rows(server: RedisServer) -> None:
    server.start()

    async def main() -> dict[str, object]:
        async with PredictionLog(server.url, "unit", service="svc", interval_s=0.05,
                                 columns=log_columns()) as plog:
            assert plog.record([[1.0, 2.0]], {"prediction": [1]}, model="m", version="1",
                               latency_ms=2.5, request_id="r1", fields={"kind": "prediction"})
            await until(lambda: plog.stats()["written"] == 1, 5)
            with pytest.raises(RuntimeError, match="stream"):
                await plog.read()
            return plog.stats()

    stats = asyncio.run(main())
    assert (stats["sink"], stats["target"]) == ("redis_stream", "unit_prediction_log")
    client = redis.Redis.from_url(server.url)
    [(_, fields)] = client.xrange("unit_prediction_log")
    row = decode_record(fields[STREAM_FIELD], ["kind"])
    assert row["request_id"] == "r1" and row["kind"] == "prediction"
    assert row["input"] == [[1.0, 2.0]] and row["output"] == {"prediction": [1]}
    assert row["at"].tzinfo is UTC and row["latency_ms"] == 2.5
    with pytest.raises(ValueError, match="JSON"):
        decode_record(b"{nope")
    with pytest.raises(ValueError, match="service"):
        decode_record(b'{"at": 1}')
    odd = decode_record(b'{"at": 1, "service": "s", "model": [1], "version": 2, "kind": null}',
                        ["kind"])  # what the table's string columns can hold, whatever came
    assert (odd["model"], odd["version"], odd["kind"]) == ("[1]", "2", "")


def test_redis_down_spools_up_to_the_bound_drops_the_rest_and_drains_later(
    server: RedisServer,
) -> None:
    """No server yet: 150 records into a spool of 100; the 50 newest are dropped and counted,
    `record` never blocks; once Redis starts, the 100 oldest arrive."""
    registry = CollectorRegistry()

    async def main() -> tuple[list[bool], float, dict[str, object]]:
        async with PredictionLog(server.url, "unit", max_buffer=100, interval_s=0.05,
                                 max_retry_s=0.2, registry=registry,
                                 columns=log_columns()) as plog:
            began = time.perf_counter()
            taken = [plog.record(None, None, request_id=f"r{i:03d}",
                                 fields={"kind": "latency"}) for i in range(150)]
            took = time.perf_counter() - began
            await asyncio.sleep(0.3)  # some writes were tried and failed
            assert plog.stats()["write_errors"] > 0 and plog.stats()["buffered"] == 100
            await asyncio.to_thread(server.start)
            await until(lambda: plog.stats()["buffered"] == 0, 10)
            return taken, took, plog.stats()

    taken, took, stats = asyncio.run(main())
    assert taken == [True] * 100 + [False] * 50
    assert took < 0.5  # 150 appends; no record waited on the dead Redis
    assert (stats["written"], stats["dropped"], dropped(registry)) == (100, 50, 50)
    entries = redis.Redis.from_url(server.url).xrange("unit_prediction_log")
    ids = [decode_record(f[STREAM_FIELD], ["kind"])["request_id"] for _, f in entries]
    assert ids == [f"r{i:03d}" for i in range(100)]


def test_insert_new_stores_each_key_once_and_returns_what_it_inserted(db_url: str) -> None:
    engine = make_engine(db_url)
    metadata = sa.MetaData()
    table = stream_table(f"t{uuid.uuid4().hex[:10]}", metadata)
    create_tables(engine, metadata)

    def row(rid: str, kind: str) -> dict[str, object]:
        return {"request_id": rid, "at": datetime.now(UTC), "service": "s", "kind": kind,
                "model": None, "version": None, "input": None, "output": None,
                "latency_ms": None, "extra": None}

    with engine.begin() as conn:
        assert insert_new(conn, table, [row("a", "x"), row("b", "x"), row("a", "x")],
                          LOG_KEY) == 2
    with engine.begin() as conn:
        assert insert_new(conn, table, [row("a", "x"), row("a", "y")], LOG_KEY) == 1
        assert insert_new(conn, table, [], LOG_KEY) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 3
    table.drop(engine)
    engine.dispose()


def test_the_consumer_skips_a_row_the_db_refuses_and_stores_the_rest(tmp_path: Path) -> None:
    """A batch the DB refuses for its data (here a NULL service) is stored row by row: the bad
    row is counted as malformed, the others land, and nothing waits for it."""
    from patternkit.log_consumer import Consumer, ConsumerSettings
    from patternkit.service import ServiceState

    url = f"sqlite:///{tmp_path / 'log.db'}"
    cfg = ConsumerSettings(log_redis_url="redis://127.0.0.1:1/0", database_url=url,
                           log_prefix="unit")
    engine = make_engine(url)
    consumer = Consumer(cfg, ServiceState(cfg), engine)
    create_tables(engine, consumer.metadata)
    good = decode_record(b'{"at": 1, "service": "s", "request_id": "a", "kind": "x"}', ["kind"])
    bad = {**good, "request_id": "b", "service": None}
    with pytest.raises(sa.exc.IntegrityError):
        consumer._store([good, bad])
    assert consumer._store_each([good, bad, {**good, "request_id": "c"}]) == (2, 1)
    assert consumer._store_each([good]) == (0, 0)  # stored already: a duplicate, not refused
    engine.dispose()
