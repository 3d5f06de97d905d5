"""patternkit.predlog: records land as rows (SQLite and PostgreSQL), a full buffer drops and
counts, and a database that is down neither fails nor slows the caller."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest

from patternkit.db import make_engine
from patternkit.predlog import PredictionLog, log_columns, prediction_table, read_predictions

DOWN_DELAY_S = 0.5  # every write attempt while the database is down takes this, then fails


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def engine(db_url: str, prefix: str) -> Iterator[sa.Engine]:
    eng = make_engine(db_url)
    yield eng
    prediction_table(prefix).drop(eng, checkfirst=True)
    eng.dispose()


def rows(engine: sa.Engine, prefix: str) -> list[dict[str, Any]]:
    table = prediction_table(prefix)
    if not sa.inspect(engine).has_table(table.name):
        return []
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def metric(registry: CollectorRegistry, line_start: str) -> float:
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith(line_start + " "))
    return float(line.split()[-1])


def test_records_land_as_rows_on_the_interval_and_at_shutdown(
    engine: sa.Engine, prefix: str
) -> None:
    registry = CollectorRegistry()

    async def scenario() -> None:
        before = datetime.now(UTC)
        async with PredictionLog(engine, prefix, service="pred", interval_s=0.05, batch_size=40,
                                 registry=registry) as plog:
            assert plog.record(np.array([[5.1, 3.5, 1.4, 0.2]]), {"label": np.int64(0)},
                               model="iris_lr", version="1.2.3", latency_ms=1.25,
                               request_id="first", extra={"variant": "a", "nan": float("nan")})
            for i in range(99):
                assert plog.record([[i]], [i % 3], model="iris_lr", version="1.2.3",
                                   latency_ms=float(i), request_id=f"r{i}")

            async def landed() -> bool:
                return len(await asyncio.to_thread(rows, engine, prefix)) == 100

            await until(landed, 20, "the interval flush writing 100 rows")  # while running
            for i in range(30):  # these land only through the flush at shutdown
                plog.record([[i]], [0], request_id=f"late{i}")
            plog.interval_s = 3600.0  # (the next interval flush is already scheduled)
        after = datetime.now(UTC)
        got = rows(engine, prefix)
        assert len(got) == 130
        first = got[0]
        assert first["request_id"] == "first"
        assert (first["service"], first["model"], first["version"]) == ("pred", "iris_lr",
                                                                         "1.2.3")
        assert first["input"] == [[5.1, 3.5, 1.4, 0.2]]
        assert first["output"] == {"label": 0}
        assert first["latency_ms"] == 1.25
        assert first["extra"] == {"variant": "a", "nan": None}
        at = first["at"] if first["at"].tzinfo else first["at"].replace(tzinfo=UTC)
        assert before <= at <= after
        assert [r["request_id"] for r in got[1:100]] == [f"r{i}" for i in range(99)]
        assert [r["output"] for r in got[1:4]] == [[0], [1], [2]]
        assert {r["request_id"] for r in got[100:]} == {f"late{i}" for i in range(30)}
        assert plog.stats()["written"] == 130
        assert plog.stats()["dropped"] == 0

    asyncio.run(scenario())
    assert metric(registry, "prediction_log_written_total") == 130
    assert metric(registry, 'prediction_log_dropped_total{reason="buffer_full"}') == 0


def test_a_full_buffer_drops_and_counts_instead_of_blocking(
    engine: sa.Engine, prefix: str
) -> None:
    registry = CollectorRegistry()
    plog = PredictionLog(engine, prefix, max_buffer=100, registry=registry)
    accepted: list[bool] = []
    # no writer runs yet: a blocking buffer would hang here; this one must return at once
    caller = threading.Thread(
        target=lambda: accepted.extend(plog.record([[i]], [0], request_id=f"r{i}")
                                       for i in range(150)))
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive(), "record() blocked on a full buffer"
    assert accepted == [True] * 100 + [False] * 50
    assert plog.stats()["dropped"] == 50
    assert plog.stats()["buffered"] == 100
    assert metric(registry, 'prediction_log_dropped_total{reason="buffer_full"}') == 50
    assert metric(registry, "prediction_log_buffered") == 100

    async def drain() -> None:
        async with plog:
            pass

    asyncio.run(drain())
    assert [r["request_id"] for r in rows(engine, prefix)] == [f"r{i}" for i in range(100)]
    assert plog.stats()["written"] == 100


def test_a_database_that_is_down_neither_fails_nor_slows_the_caller(
    engine: sa.Engine, prefix: str
) -> None:
    down = threading.Event()

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _outage(*_args: Any) -> None:
        if down.is_set():  # a database that takes its time to answer, then fails
            time.sleep(DOWN_DELAY_S)
            raise sa.exc.OperationalError("INSERT", {}, ConnectionError("database is down"))

    registry = CollectorRegistry()
    sent: list[str] = []
    accepted: set[str] = set()
    record_s = 0.0

    async def scenario() -> None:
        nonlocal record_s
        async with PredictionLog(engine, prefix, max_buffer=200, batch_size=50,
                                 interval_s=0.05, registry=registry) as plog:

            def burst(n: int) -> None:
                nonlocal record_s
                for _ in range(n):
                    rid = f"r{len(sent)}"
                    sent.append(rid)
                    started = time.perf_counter()
                    if plog.record([[len(sent)]], [1], request_id=rid, model="m"):
                        accepted.add(rid)
                    record_s += time.perf_counter() - started

            burst(40)

            async def written() -> bool:
                return plog.stats()["written"] == 40

            await until(written, 20, "the first records while the database is up")
            down.set()

            def failed(n: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return int(plog.stats()["write_errors"]) >= n
                return check

            loop_started = time.perf_counter()
            for _ in range(3):  # requests keep coming through three failed write attempts
                errors = int(plog.stats()["write_errors"])
                burst(100)
                await until(failed(errors + 1), 30, "a failed write attempt")
            outage_s = time.perf_counter() - loop_started
            stats = plog.stats()
            assert stats["writing"] is False and "database is down" in stats["last_error"]
            assert stats["buffered"] == 200  # full: the rest was dropped and counted
            down.clear()

            async def complete() -> bool:
                return plog.stats()["written"] == len(accepted)

            await until(complete, 30, "every buffered record landing once it is back")
            assert plog.stats()["writing"] is True
        # three failed attempts took >= 3 x the injected delay; the caller spent a sliver
        assert outage_s >= 3 * DOWN_DELAY_S
        assert record_s < DOWN_DELAY_S / 5, f"340 record() calls took {record_s:.3f}s"

    asyncio.run(scenario())
    got = [r["request_id"] for r in rows(engine, prefix)]
    dropped = metric(registry, 'prediction_log_dropped_total{reason="buffer_full"}')
    assert len(sent) == 340
    assert dropped == len(sent) - len(accepted) == 100  # 40 written, 200 held, 100 dropped
    assert len(got) == len(set(got)) == len(accepted)  # complete, and nothing twice
    assert set(got) == accepted
    assert got[:40] == sent[:40]
    assert metric(registry, "prediction_log_write_errors_total") >= 3
    assert metric(registry, 'prediction_log_dropped_total{reason="shutdown"}') == 0


def test_what_the_database_refuses_at_shutdown_is_counted(
    tmp_path: Any, prefix: str
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _outage(*_args: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, ConnectionError("database is down"))

    registry = CollectorRegistry()

    async def scenario() -> None:
        async with PredictionLog(engine, prefix, interval_s=3600, shutdown_timeout_s=2,
                                 registry=registry) as plog:
            for i in range(25):
                plog.record([[i]], [0])

    asyncio.run(scenario())
    assert metric(registry, 'prediction_log_dropped_total{reason="shutdown"}') == 25
    assert metric(registry, "prediction_log_written_total") == 0
    engine.dispose()


def test_rows_read_back_by_time_service_and_request_id(engine: sa.Engine, prefix: str) -> None:
    assert read_predictions(engine, prefix) == []  # nothing written yet: no table, no rows

    async def scenario() -> None:
        async with PredictionLog(engine, prefix, interval_s=3600) as plog:
            for i in range(6):
                plog.record([[i]], {"label": i}, request_id=f"r{i // 2}",
                            service="a" if i % 2 == 0 else "b", latency_ms=float(i))
            early = await plog.read()  # flushed first: the interval is an hour away
            assert [(r["request_id"], r["service"]) for r in early] == [
                ("r0", "a"), ("r0", "b"), ("r1", "a"), ("r1", "b"), ("r2", "a"), ("r2", "b")]
            assert early[0]["output"] == {"label": 0}
            assert early[0]["at"].tzinfo is not None
            cut = datetime.now(UTC)
            plog.record([[9]], {"label": 9}, request_id="late", service="a")
            assert [r["request_id"] for r in await plog.read(since=cut)] == ["late"]
            naive = cut.replace(tzinfo=None)  # taken as UTC
            assert [r["request_id"] for r in await plog.read(since=naive)] == ["late"]
            assert [r["latency_ms"] for r in await plog.read(services=["b"])] == [1.0, 3.0, 5.0]
            picked = await plog.read(request_ids=["r1", "late"], services=["a"])
            assert [r["request_id"] for r in picked] == ["r1", "late"]
            newest = await plog.read(limit=2)  # the newest two, oldest first
            assert [(r["request_id"], r["service"]) for r in newest] == [("r2", "b"),
                                                                         ("late", "a")]

    asyncio.run(scenario())


def test_the_table_carries_the_prefix() -> None:
    assert prediction_table("shadow_ab").name == "shadow_ab_prediction_log"
    with pytest.raises(ValueError, match="prefix"):
        prediction_table("Shadow-AB")


def test_extra_columns_take_their_fields(engine: sa.Engine, prefix: str) -> None:
    """A pattern's own typed columns (an A/B test's variant and phase) are filled per record."""

    def columns() -> list[sa.Column[Any]]:
        return [sa.Column("variant", sa.String(16), index=True), sa.Column("phase", sa.Integer)]

    assert [c.name for c in prediction_table(prefix, columns=columns()).columns][-2:] == [
        "variant", "phase"]

    async def scenario() -> None:
        async with PredictionLog(engine, prefix, interval_s=0.05, columns=columns()) as plog:
            assert plog.record([[1.0]], [0], request_id="r1", fields={"variant": "b", "phase": 3})
            assert plog.record([[1.0]], [0], request_id="r2")
            with pytest.raises(ValueError, match="no column colour"):
                plog.record([[1.0]], [0], fields={"colour": "red"})

    asyncio.run(scenario())
    table = prediction_table(prefix, columns=columns())
    with engine.connect() as conn:
        got = conn.execute(sa.select(table.c.request_id, table.c.variant, table.c.phase)
                           .order_by(table.c.id)).all()
    assert [tuple(r) for r in got] == [("r1", "b", 3), ("r2", None, None)]


def test_a_proxy_latency_record_has_its_kind_status_and_times(
    engine: sa.Engine, prefix: str
) -> None:
    async def scenario() -> None:
        async with PredictionLog(engine, prefix, interval_s=3600, service="proxy",
                                 columns=log_columns()) as plog:
            began = time.perf_counter() - 0.25  # a request that began 250 ms ago
            assert plog.record_latency("ok", began, status=200, backend_ms=12.5,
                                       version="1.0.1")
            assert plog.record_latency("bad", time.perf_counter(), status=504,
                                       backend_ms=2000.0, error="backend_timeout")
            await plog.read()  # flushed

    asyncio.run(scenario())
    got = {r["request_id"]: r for r in read_predictions(engine, prefix, columns=log_columns())}
    ok, bad = got["ok"], got["bad"]
    assert (ok["kind"], ok["service"], ok["version"]) == ("latency", "proxy", "1.0.1")
    assert ok["extra"] == {"status": 200, "backend_ms": 12.5}
    assert 250 <= ok["latency_ms"] < 250 + 60_000
    assert bad["extra"] == {"status": 504, "backend_ms": 2000.0, "error": "backend_timeout"}
    assert bad["version"] is None and bad["input"] is None
