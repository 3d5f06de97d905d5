"""The log consumer: moves a prediction-log Redis Stream into its table, once per record.

Producers (`patternkit.predlog.PredictionLog` with a `redis://` URL) XADD records to the
stream `<prefix>_prediction_log`. This service reads it as a member of a consumer group
(XREADGROUP; the consumer is named after the instance, so a restart finds its own entries),
writes each batch to the table of the same name in one transaction, and XACKs the batch only
after the commit. A crash between the two leaves the entries pending: on start the consumer
reads its own pending entries first (id `0`), and every `CLAIM_INTERVAL_S` it takes over
entries another consumer left pending for longer than `CLAIM_IDLE_MS` (XAUTOCLAIM). Rows are
unique by (request id, service, kind) (`LOG_KEY`), so an entry delivered or sent twice is
stored once and counted as a duplicate. A restarted (empty) Redis loses the group: it is made
again from id 0, so what producers spooled meanwhile is read too.

Routes: `GET /logs?request_id=` (the rows of one request, every kind, oldest first), the
scaffold's `/health`, `/ready` (once the table and the group exist), `/metrics` and `/stats`
(read, stored, duplicates, malformed, trimmed, claimed, errors, lag and pending).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any, TypedDict

import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import Field
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from patternkit.db import create_tables, insert_new, make_engine, show_url
from patternkit.predlog import (
    LOG_KEY,
    STREAM_FIELD,
    decode_record,
    log_columns,
    read_predictions,
    stream_table,
)
from patternkit.redisguard import REDIS_ERRORS
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    create_service,
    json_response,
)
from patternkit.settings import ServiceSettings

log = logging.getLogger("patternkit.log_consumer")

# the DB is down, locked or gone (retry the batch), as opposed to refusing a row's data
UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError,
               sa.exc.TimeoutError)
LAG_CAP = 10_000  # undelivered entries counted at most per lag reading (Redis < 7)
Entry = tuple[bytes, dict[bytes, bytes] | None]  # (id, fields); None: trimmed while pending


def stream_entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply for one stream (RESP2's list or RESP3's dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return list(reply[0][1])


class ConsumerSettings(ServiceSettings):
    """Where the stream is, where its rows go, and how the group is read."""

    service_name: str = "consumer"
    log_redis_url: str = Field(..., description="the Redis holding the log stream")
    database_url: str = Field(..., description="the log DB ({db.url})")
    log_prefix: str = Field(..., description="the stream and table are <prefix>_prediction_log")
    consumer_group: str = Field("log-consumer", min_length=1, description="XREADGROUP group")
    read_count: int = Field(500, ge=1, le=10_000, description="entries per read and batch")
    block_ms: int = Field(1000, ge=10, description="how long a read waits for new entries")
    claim_idle_ms: int = Field(30_000, ge=0, description="take over another consumer's "
                                                          "entries pending this long")
    claim_interval_s: float = Field(5.0, gt=0, description="how often to look for them")
    redis_timeout_ms: int = Field(2000, gt=0, description="per Redis call, on top of block_ms")
    retry_s: float = Field(1.0, gt=0, description="wait after a Redis or DB error")
    logs_limit: int = Field(1000, ge=1, description="rows GET /logs returns at most")


class Counts(CounterSet):
    PREFIX = "log_consumer"
    read: Annotated[Counter, "stream entries delivered to this consumer (new or re-read)"]
    stored: Annotated[Counter, "rows inserted into the table"]
    duplicates: Annotated[Counter, "entries whose (request id, service, kind) was stored "
                                   "already: skipped"]
    malformed: Annotated[Counter, "entries that are not a log record, or that the DB refuses: "
                                  "acknowledged, skipped"]
    trimmed: Annotated[Counter, "pending entries MAXLEN trimmed before they were stored"]
    claimed: Annotated[Counter, "entries taken over from a consumer that left them pending"]
    acked: Annotated[Counter, "entries acknowledged after their batch was committed"]
    redis_errors: Annotated[Counter, "failed Redis calls (each followed by RETRY_S)"]
    db_errors: Annotated[Counter, "failed batch writes (the batch stays pending)"]


class Consumer:
    """The read -> write -> ack loop of one group member, and its gauges."""

    def __init__(self, cfg: ConsumerSettings, state: ServiceState, engine: sa.Engine) -> None:
        self.cfg = cfg
        self.state = state
        self.engine = engine
        self.metadata = sa.MetaData()
        self.table = stream_table(cfg.log_prefix, self.metadata)
        self.stream = self.table.name
        self.group = cfg.consumer_group
        self.name = cfg.served_by
        self.fields = [c.name for c in log_columns()]
        timeout = (cfg.block_ms + cfg.redis_timeout_ms) / 1000
        self.redis = Redis.from_url(cfg.log_redis_url, socket_connect_timeout=timeout,
                                    socket_timeout=timeout)
        self.counts = Counts(state.metrics)
        self.lag = 0
        self.pending = 0
        self.lag_s = 0.0
        self.redis_ok = False
        self.db_ok = True
        self.last_error = ""
        self._group_ready = False
        self._recover = True  # read this consumer's own pending entries first
        self._next_claim = 0.0
        self._next_lag = 0.0
        self._stopping = asyncio.Event()
        metrics = state.metrics
        metrics.gauge("log_consumer_lag", "entries not yet delivered to the group (at most LAG_CAP "
                      "counted before Redis 7)",
                      stat="lag").set_function(lambda: self.lag)
        metrics.gauge("log_consumer_pending", "entries delivered to the group, not yet acked",
                      stat="pending").set_function(lambda: self.pending)
        metrics.gauge("log_consumer_lag_seconds", "age of the oldest undelivered entry",
                      stat="lag_s").set_function(lambda: self.lag_s)
        metrics.computed("redis_ok", lambda: self.redis_ok)
        metrics.computed("db_ok", lambda: self.db_ok)
        metrics.computed("last_error", lambda: self.last_error)

    # -- the group ------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Make the group (and the stream) if missing, from id 0: nothing before it is skipped."""
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created group %s on %s", self.group, self.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        self._recover = True

    # -- one batch ----------------------------------------------------------------------------

    def _store(self, rows: list[dict[str, Any]]) -> int:
        with self.engine.begin() as conn:
            return insert_new(conn, self.table, rows, LOG_KEY)

    def _store_each(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """One row per transaction, after the database refused the batch for its data (not
        for being down): (stored, refused). A refused row is logged and skipped, so one bad
        entry cannot hold the stream up."""
        stored = refused = 0
        for row in rows:
            try:
                stored += self._store([row])
            except UNAVAILABLE:
                raise
            except sa.exc.SQLAlchemyError as exc:
                refused += 1
                log.warning("skipping a record of %s the DB refuses: %s", row.get("request_id"),
                            str(exc).splitlines()[0][:200])
        return stored, refused

    async def handle(self, entries: Sequence[Entry]) -> None:
        """Write a batch in one transaction, then acknowledge it; a failed write leaves it
        pending (read again after RETRY_S)."""
        if not entries:
            return
        self.counts.read.inc(len(entries))
        rows: list[dict[str, Any]] = []
        for entry_id, fields in entries:
            if fields is None:
                self.counts.trimmed.inc()
                continue
            try:
                rows.append(decode_record(fields.get(STREAM_FIELD, b""), self.fields))
            except ValueError as exc:
                self.counts.malformed.inc()
                log.warning("skipping stream entry %s: %s", entry_id.decode(), exc)
        if rows:
            refused = 0
            try:
                try:
                    stored = await asyncio.to_thread(self._store, rows)
                except UNAVAILABLE:
                    raise
                except sa.exc.SQLAlchemyError:  # the data, not the DB: find the bad rows
                    stored, refused = await asyncio.to_thread(self._store_each, rows)
            except sa.exc.SQLAlchemyError as exc:
                self.counts.db_errors.inc()
                self._failed("db", exc)
                self._recover = True
                return
            self.db_ok = True
            self.counts.stored.inc(stored)
            self.counts.malformed.inc(refused)
            self.counts.duplicates.inc(len(rows) - stored - refused)
        await self.redis.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        self.counts.acked.inc(len(entries))

    # -- the loop -----------------------------------------------------------------------------

    async def _own_pending(self) -> None:
        """This consumer's entries delivered before a crash or a failed write, until none."""
        while True:
            entries = stream_entries(await self.redis.xreadgroup(
                self.group, self.name, {self.stream: "0"}, count=self.cfg.read_count))
            if not entries:
                break
            await self.handle(entries)
            if not self.db_ok:
                return
        self._recover = False

    async def _claim(self) -> None:
        """Entries other consumers left pending for CLAIM_IDLE_MS or longer."""
        start = "0-0"
        while True:
            reply: Any = await self.redis.xautoclaim(
                self.stream, self.group, self.name, self.cfg.claim_idle_ms, start,
                count=self.cfg.read_count)
            start, entries = reply[0], reply[1]
            if entries:
                self.counts.claimed.inc(len(entries))
                await self.handle(entries)
            if start in (b"0-0", "0-0") or not entries:
                return

    async def _measure(self) -> None:
        """Pending (XINFO GROUPS), lag (entries not yet delivered to the group) and the age
        of the oldest of them. Redis 7 reports the lag itself; before, it is 0 when the group
        has been delivered the newest entry, else counted with XRANGE up to LAG_CAP."""
        groups = await self.redis.xinfo_groups(self.stream)
        mine = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
        if mine is None:
            return
        self.pending = int(mine["pending"])
        last = mine["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        info: Any = await self.redis.xinfo_stream(self.stream)
        newest = info.get("last-generated-id", b"")
        newest = newest.decode() if isinstance(newest, bytes) else str(newest)
        if newest == last:
            self.lag, self.lag_s = 0, 0.0
            return
        first: Any = await self.redis.xrange(self.stream, min=f"({last}", max="+", count=1)
        if mine.get("lag") is not None:
            self.lag = int(mine["lag"])
        else:
            newer: Any = await self.redis.xrange(self.stream, min=f"({last}", max="+",
                                                 count=LAG_CAP)
            self.lag = len(newer)
        oldest_ms = int(first[0][0].split(b"-")[0]) if first else None
        self.lag_s = round(max(0.0, time.time() - oldest_ms / 1000), 3) if oldest_ms else 0.0

    def _failed(self, what: str, exc: Exception) -> None:
        message = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        if message != self.last_error:
            log.warning("log consumer: %s; retrying every %.1fs", message, self.cfg.retry_s)
        self.last_error = message
        if what == "db":
            self.db_ok = False
        else:
            self.redis_ok = False

    async def step(self) -> None:
        await self.ensure_group()
        if self._recover:
            await self._own_pending()
            if self._recover:  # the DB refused them: read nothing new until it takes them
                return
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.cfg.claim_interval_s
            await self._claim()
        if now >= self._next_lag:
            self._next_lag = now + 1.0
            await self._measure()
        if not self.redis_ok:
            log.info("log consumer: reading %s again", self.stream)
        self.redis_ok = True
        self.state.ready = True
        await self.handle(stream_entries(await self.redis.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=self.cfg.read_count,
            block=self.cfg.block_ms)))

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.step()
                if not self.db_ok:
                    await self._pause()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty: make the group again
                    self._group_ready = False
                    log.warning("log consumer: group %s is gone; making it again", self.group)
                    continue
                self.counts.redis_errors.inc()
                self._failed("redis", exc)
                await self._pause()
            except REDIS_ERRORS as exc:
                self.counts.redis_errors.inc()
                self._failed("redis", exc)
                self._group_ready = False  # a restarted Redis has none
                await self._pause()

    async def _pause(self) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.cfg.retry_s)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Consumer]:
        """The loop for the block; at its end the batch in hand is finished (within the
        scaffold's grace), then the loop stops."""
        task = asyncio.create_task(self.run(), name=f"consumer-{self.stream}")
        try:
            yield self
        finally:
            self._stopping.set()
            try:
                await asyncio.wait_for(task, (self.cfg.block_ms + self.cfg.redis_timeout_ms)
                                       / 1000 + 1)
            except TimeoutError:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await self.redis.aclose()


class Resources(TypedDict):
    consumer: Consumer


LOGS_EXAMPLE: dict[str, Any] = {
    "request_id": "demo-1", "count": 3, "kinds": ["latency", "prediction", "event.purchase"],
    "rows": [{"service": "proxy", "kind": "latency", "latency_ms": 4.2},
             {"service": "predictor", "kind": "prediction", "model": "iris_lr",
              "version": "1.0.0", "input": [[6.3, 3.3, 6.0, 2.5]],
              "output": {"prediction": [2], "probabilities": [[0.0, 0.01, 0.99]]}},
             {"service": "client", "kind": "event.purchase", "extra": {"value": 1.0}}],
}


def create_app(settings: ConsumerSettings | None = None) -> FastAPI:
    cfg = settings or ConsumerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = make_engine(cfg.database_url)
        consumer = Consumer(cfg, state, engine)
        await asyncio.to_thread(create_tables, engine, consumer.metadata)
        state.metadata.update(stream=consumer.stream, group=consumer.group,
                              consumer=consumer.name, table=consumer.table.name,
                              database=show_url(engine), key=list(LOG_KEY))
        try:
            async with consumer.running():
                yield {"consumer": consumer}
        finally:
            engine.dispose()

    app = create_service(cfg, title="prediction log consumer", lifespan=lifespan,
                         auto_ready=False)

    @app.get("/logs", tags=["logs"], responses={
        200: {"content": {"application/json": {"example": LOGS_EXAMPLE}}},
        404: {"description": "no row for that request id (yet)"}, 422: {}})
    async def logs(
        request: Request,
        request_id: Annotated[str | None, Query(
            min_length=1, max_length=128,
            description="the request whose rows to show; none: the newest rows")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="rows at most")] = 100,
    ) -> Response:
        """The stored rows of one request (latency, prediction, client events), oldest first."""
        consumer: Consumer = request.state.consumer
        try:
            rows = await asyncio.to_thread(
                read_predictions, consumer.engine, cfg.log_prefix,
                request_ids=[request_id] if request_id else None,
                limit=min(limit, cfg.logs_limit), columns=log_columns())
        except sa.exc.SQLAlchemyError as exc:
            raise ApiError(503, f"cannot read the log DB: {type(exc).__name__}",
                           "log_unavailable") from None
        if request_id and not rows:
            raise ApiError(404, f"no log rows for request id {request_id!r} (yet: the "
                           "consumer writes within about a second)", "not_found")
        return json_response({"request_id": request_id, "count": len(rows),
                              "kinds": [r["kind"] for r in rows], "rows": rows})

    return app
