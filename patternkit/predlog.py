"""The prediction log: one row per prediction, written in batches, off the request path.

A service calls `log.record(...)` per prediction (request id, time, service, model, version,
input, output, latency, extra JSON): an O(1) append to a bounded in-memory buffer that never
blocks and never raises; a full buffer drops the record and counts it. A background task of
the service's lifespan (`async with PredictionLog(url, prefix) as log:`) writes the buffer to
the `<prefix>_prediction_log` table of the `sql` backing every `interval_s`, in batches. A
database that fails or hangs only delays the writes: a batch leaves the buffer once it is
written, so it is tried again until it lands; what the buffer cannot hold meanwhile is counted
as dropped. At shutdown the rest is flushed within a deadline, and what is left is counted too.
`read_predictions` (or `await log.read(...)`, which flushes first) reads the rows back, newest
`limit` first chosen, oldest first returned, e.g. to join several services' rows by request id.
A pattern that queries its log by more than the request id (an A/B test groups by variant and
phase) declares typed `columns` beside the standard ones and passes their values per record as
`fields`.

The writer's target is chosen by the URL. A SQL URL (`{db.url}`) writes the table itself; a
`redis://` URL (`{redis.url}`) appends each record to the Redis Stream `<prefix>_prediction_log`
(one pipelined XADD per batch, `MAXLEN ~ stream_maxlen`), and `patternkit.log_consumer` moves
the stream into the same table through a consumer group, idempotently by `LOG_KEY`. Either
way the bounded buffer is the local spool: while the sink is down records wait there and are
written once it is back; beyond `max_buffer` they are dropped and counted (`buffer_full`),
so memory stays flat and `record` never waits. `log_columns()` adds the `kind` column
(`latency`, `prediction`, `event.<name>`) of the streamed log, whose rows are unique by
(request id, service, kind); `encode_record` / `decode_record` are the stream's entry format.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from patternkit.db import ROW_ID, create_tables, make_engine, show_url

if TYPE_CHECKING:
    from patternkit.service import ServiceState
    from patternkit.settings import PredictionLogSettings

log = logging.getLogger("patternkit.predlog")

DROP_REASONS = ("buffer_full", "shutdown")
STANDARD_COLUMNS = frozenset({"id", "request_id", "at", "service", "model", "version", "input",
                              "output", "latency_ms", "extra"})
MAX_RETRY_S = 5.0
STREAM_SCHEMES = ("redis://", "rediss://", "unix://")
LOG_KEY = ("request_id", "service", "kind")  # what makes a streamed row unique
STREAM_FIELD = b"r"  # the one field of a stream entry: the record as JSON


def is_stream_url(url: object) -> bool:
    """Whether a log URL names a Redis Stream (else it is a database)."""
    return isinstance(url, str) and url.startswith(STREAM_SCHEMES)


def log_columns() -> list[sa.Column[Any]]:
    """The streamed log's extra column: what a row records (`latency`, `prediction`,
    `event.<name>`); part of `LOG_KEY`. New Column objects on every call."""
    return [sa.Column("kind", sa.String(64), nullable=False, server_default="")]


class Prediction(NamedTuple):
    """One buffered record; converted to a row only by the writer."""

    request_id: str | None
    at: float  # time.time()
    service: str
    model: str | None
    version: str | None
    input: Any
    output: Any
    latency_ms: float | None
    extra: dict[str, Any] | None
    fields: Mapping[str, Any] | None = None  # values of the table's extra columns


def prediction_table(
    prefix: str, metadata: sa.MetaData | None = None, columns: Iterable[sa.Column[Any]] = (),
    unique: Sequence[str] = (),
) -> sa.Table:
    """The table `<prefix>_prediction_log`; the prefix (a pattern's name) keeps patterns that
    share one database apart. `columns` (new Column objects: a column belongs to one table)
    are added after the standard ones; `unique` names columns whose values together are
    unique (the streamed log's `LOG_KEY`, which makes its consumer idempotent)."""
    if not prefix.isidentifier() or prefix != prefix.lower():
        raise ValueError(f"the table prefix must be a lower-case identifier, not {prefix!r}")
    constraints = [sa.UniqueConstraint(*unique, name=f"uq_{prefix}_prediction_log_key")
                   ] if unique else []
    return sa.Table(
        f"{prefix}_prediction_log",
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=True, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("input", sa.JSON, nullable=True),
        sa.Column("output", sa.JSON, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("extra", sa.JSON, nullable=True),
        *columns,
        *constraints,
    )


def stream_table(prefix: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """The table a streamed log lands in: the standard columns, `kind`, unique by `LOG_KEY`
    (what `patternkit.log_consumer` writes and `read_predictions(..., columns=log_columns())`
    reads)."""
    return prediction_table(prefix, metadata, log_columns(), unique=LOG_KEY)


def jsonable(value: Any) -> Any:
    """`value` as plain JSON: arrays as lists, non-finite floats as null, the unknown as str."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def _row(p: Prediction, fields: Iterable[str] = ()) -> dict[str, Any]:
    """The row of one record; every extra column is given (None when the record left it out:
    one multi-row INSERT needs the same keys in every row)."""
    given = p.fields or {}
    return {
        "request_id": p.request_id,
        "at": datetime.fromtimestamp(p.at, UTC),
        "service": p.service,
        "model": p.model,
        "version": p.version,
        "input": jsonable(p.input),
        "output": jsonable(p.output),
        "latency_ms": jsonable(p.latency_ms),
        "extra": jsonable(p.extra),
        **{name: jsonable(given.get(name)) for name in fields},
    }


def encode_record(p: Prediction, fields: Iterable[str] = ()) -> bytes:
    """One record as a stream entry's JSON (`at` as Unix seconds); `decode_record` reverses."""
    row = {str(k): v for k, v in _row(p, fields).items()}  # column names are str subclasses
    row["at"] = p.at
    return orjson.dumps(row)


def decode_record(data: bytes, fields: Iterable[str] = ()) -> dict[str, Any]:
    """A stream entry's JSON as a table row; a ValueError names what is wrong with it."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    try:
        at = datetime.fromtimestamp(float(raw["at"]), UTC)
        service = str(raw["service"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"no valid `at` and `service` ({type(exc).__name__}: {exc})") from None
    def text(name: str, limit: int) -> str | None:  # a string column gets a string or NULL
        value = raw.get(name)
        return None if value is None else str(value)[:limit]

    latency = raw.get("latency_ms")
    row: dict[str, Any] = {
        "request_id": text("request_id", 128),
        "at": at,
        "service": service[:64],
        "model": text("model", 128),
        "version": text("version", 64),
        "input": raw.get("input"),
        "output": raw.get("output"),
        "latency_ms": jsonable(float(latency)) if isinstance(latency, (int, float)) else None,
        "extra": raw.get("extra"),
    }
    for name in fields:
        row[name] = (text(name, 64) or "") if name == "kind" else raw.get(name)
    return row


def read_predictions(
    engine: sa.Engine,
    prefix: str,
    *,
    since: datetime | None = None,
    services: Sequence[str] | None = None,
    request_ids: Sequence[str] | None = None,
    limit: int = 10_000,
    columns: Iterable[sa.Column[Any]] = (),
) -> list[dict[str, Any]]:
    """The newest `limit` rows of `<prefix>_prediction_log` that match, oldest first.

    `since` keeps rows recorded at or after it (a naive datetime is taken as UTC), `services`
    and `request_ids` those of the services and requests named. Each row is a dict of the
    table's columns (and of the extra `columns` given, e.g. `log_columns()`), `at`
    timezone-aware (UTC); before anything was written, there are none.
    """
    table = prediction_table(prefix, columns=columns)
    if not sa.inspect(engine).has_table(table.name):
        return []
    stmt = sa.select(table).order_by(table.c.id.desc()).limit(limit)
    if since is not None:
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
        stmt = stmt.where(table.c.at >= since)
    if services is not None:
        stmt = stmt.where(table.c.service.in_(list(services)))
    if request_ids is not None:
        stmt = stmt.where(table.c.request_id.in_(list(request_ids)))
    with engine.connect() as conn:
        # plain str keys: column names are str subclasses, which orjson refuses as keys
        found = [{str(k): v for k, v in r.items()} for r in conn.execute(stmt).mappings()]
    found.reverse()
    for row in found:  # SQLite hands back naive datetimes: they were stored as UTC
        if row["at"].tzinfo is None:
            row["at"] = row["at"].replace(tzinfo=UTC)
    return found


def _total(counter: Counter, **labels: str) -> int:
    """A counter's value, read back (one fact, one counter)."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == labels:
                return int(sample.value)
    return 0


class PredictionLog:
    """The buffer, its writer task and its counters; use as `async with` in a lifespan."""

    def __init__(
        self,
        url: str | sa.Engine,
        prefix: str,
        *,
        service: str = "service",
        max_buffer: int = 10_000,
        batch_size: int = 500,
        interval_s: float = 0.5,
        shutdown_timeout_s: float = 5.0,
        registry: CollectorRegistry | None = None,
        columns: Iterable[sa.Column[Any]] = (),
        stream_maxlen: int = 100_000,
        redis_timeout_ms: int = 1000,
        max_retry_s: float = MAX_RETRY_S,
    ) -> None:
        if max_buffer < 1 or batch_size < 1 or interval_s <= 0 or stream_maxlen < 1:
            raise ValueError("max_buffer, batch_size and stream_maxlen must be >= 1, "
                             "interval_s > 0")
        self._url = url
        self.prefix = prefix
        self.engine: sa.Engine | None = url if isinstance(url, sa.Engine) else None
        self.metadata = sa.MetaData()
        self.table = prediction_table(prefix, self.metadata, columns)
        # a redis:// URL: records go to the stream named like the table (logconsumer moves
        # them into it); any other URL (or an engine): into the table itself
        self.streaming = is_stream_url(url)
        self.sink = "redis_stream" if self.streaming else "sql"
        self.stream = self.table.name
        self.stream_maxlen = stream_maxlen
        self.redis_timeout_ms = redis_timeout_ms
        self.max_retry_s = max_retry_s
        self.redis: Redis | None = None
        self._fields = {c.name for c in self.table.columns} - STANDARD_COLUMNS
        self.service = service
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._buffer: deque[Prediction] = deque()
        self._lock = threading.Lock()  # record() may be called from threads too
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._table_ready = False
        self._failing = False
        self._last_error = ""
        reg = registry if registry is not None else CollectorRegistry()
        self._written = Counter("prediction_log_written", "prediction records written",
                                registry=reg)
        self._dropped = Counter("prediction_log_dropped", "prediction records dropped",
                                ["reason"], registry=reg)
        for reason in DROP_REASONS:
            self._dropped.labels(reason)
        self._errors = Counter("prediction_log_write_errors", "failed batch writes",
                               registry=reg)
        self._buffered = Gauge("prediction_log_buffered", "records waiting to be written",
                               registry=reg)
        self._buffered.set_function(lambda: len(self._buffer))

    # -- the request path ---------------------------------------------------------------------

    def record(
        self,
        input: Any,
        output: Any,
        *,
        model: str | None = None,
        version: str | None = None,
        latency_ms: float | None = None,
        request_id: str | None = None,
        extra: dict[str, Any] | None = None,
        service: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> bool:
        """Buffer one prediction; False (and counted) if the buffer is full. Never blocks.

        `fields` gives values for the extra `columns` the log was made with; a name that is
        not one of them is a ValueError (a programming error, raised before anything is
        buffered).
        """
        if fields and not self._fields.issuperset(fields):
            unknown = sorted(set(fields) - self._fields)
            raise ValueError(f"{self.table.name} has no column {', '.join(unknown)}")
        item = Prediction(request_id, time.time(), service or self.service, model, version,
                          input, output, latency_ms, extra, fields)
        with self._lock:
            if len(self._buffer) < self.max_buffer:
                self._buffer.append(item)
                return True
        self._dropped.labels("buffer_full").inc()
        return False

    def record_latency(
        self, request_id: str | None, began: float, *, status: int, backend_ms: float | None,
        version: str | None = None, error: str | None = None,
    ) -> bool:
        """A proxy's `latency` record of one request (its `kind` column: `log_columns()`):
        the whole time since `began` (a `time.perf_counter()`), the backend's time, the
        status, the version that answered or the error."""
        extra: dict[str, Any] = {"status": status, "backend_ms": backend_ms}
        if error is not None:
            extra["error"] = error
        return self.record(None, None, request_id=request_id, fields={"kind": "latency"},
                           version=version,
                           latency_ms=round((time.perf_counter() - began) * 1000, 3),
                           extra=extra)

    def stats(self) -> dict[str, Any]:
        """What a service shows in /stats: written, dropped (by reason), buffered, errors."""
        dropped = {reason: _total(self._dropped, reason=reason) for reason in DROP_REASONS}
        return {
            "sink": self.sink,
            "target": self.stream if self.streaming else self.table.name,
            "written": _total(self._written),
            "dropped": sum(dropped.values()),
            "dropped_by_reason": dropped,
            "buffered": len(self._buffer),
            "write_errors": _total(self._errors),
            "writing": not self._failing,
            "last_error": self._last_error,
        }

    async def read(
        self,
        *,
        since: datetime | None = None,
        services: Sequence[str] | None = None,
        request_ids: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """`read_predictions` of this log after a flush, so what was recorded so far is in it
        (unless the database refuses the flush: then only what it holds). Off the event loop."""
        if self.streaming:
            raise RuntimeError(f"{self.stream} is a stream: read the table its consumer "
                               "writes (patternkit.log_consumer) with read_predictions")
        if self.engine is None:
            raise RuntimeError("the prediction log is not started")
        await self.flush()
        return await asyncio.to_thread(
            read_predictions, self.engine, self.prefix, since=since, services=services,
            request_ids=request_ids, limit=limit,
        )

    # -- the writer -------------------------------------------------------------------------

    async def _append(self, batch: list[Prediction]) -> None:
        """Append one batch to the stream: one pipelined round trip of XADDs (MAXLEN ~).

        A connection lost mid-batch leaves some entries in the stream and the whole batch in
        the buffer, so they are sent again: the consumer's unique key makes that harmless.
        """
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        for p in batch:
            pipe.xadd(self.stream, {STREAM_FIELD: encode_record(p, self._fields)},
                      maxlen=self.stream_maxlen, approximate=True)
        await pipe.execute()

    async def _send(self, batch: list[Prediction]) -> None:
        if self.streaming:
            await self._append(batch)
        else:
            await asyncio.to_thread(self._write, batch)

    def _write(self, batch: list[Prediction]) -> None:
        """Write one batch in one transaction (in a worker thread)."""
        assert self.engine is not None
        if not self._table_ready:
            create_tables(self.engine, self.metadata)
            self._table_ready = True
        with self.engine.begin() as conn:
            conn.execute(sa.insert(self.table), [_row(p, self._fields) for p in batch])

    async def flush(self) -> bool:
        """Write everything buffered now; False if the database failed (the rest stays)."""
        async with self._flushing:
            while True:
                with self._lock:
                    batch = list(itertools.islice(self._buffer, self.batch_size))
                if not batch:
                    return True
                try:
                    await self._send(batch)
                except Exception as exc:  # the database or Redis is down, locked or refusing
                    self._errors.inc()
                    self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                    if not self._failing:
                        log.warning("prediction log: cannot write to %s (%s); records stay "
                                    "buffered", self.stats()["target"], self._last_error)
                    self._failing = True
                    return False
                with self._lock:  # only record() appends meanwhile, at the other end
                    for _ in batch:
                        self._buffer.popleft()
                self._written.inc(len(batch))
                if self._failing:
                    log.warning("prediction log: writing to %s again", self.stats()["target"])
                    self._failing = False

    async def _run(self) -> None:
        """Flush every interval (backing off while the database fails), and once more when
        asked to stop; a write in progress is never cancelled, so no batch is written twice."""
        delay = self.interval_s
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            last = self._stopping.is_set()
            ok = await self.flush()
            if last:
                return
            delay = self.interval_s if ok else min(delay * 2,
                                                   max(self.max_retry_s, self.interval_s))

    async def start(self) -> None:
        if self.streaming:
            assert isinstance(self._url, str)
            timeout = self.redis_timeout_ms / 1000  # one bounded attempt: the spool retries
            self.redis = Redis.from_url(self._url, socket_connect_timeout=timeout,
                                        socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=f"predlog-{self.stream}")
            where = self.redis.connection_pool.connection_kwargs
            log.info("prediction log: stream %s at %s:%s", self.stream, where.get("host"),
                     where.get("port"))
            return
        if self.engine is None:
            assert isinstance(self._url, str)
            url = self._url
            kwargs = {"connect_args": {"connect_timeout": 5}} if "postgres" in url else {}
            self.engine = make_engine(url, **kwargs)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"predlog-{self.table.name}")
        log.info("prediction log: %s in %s", self.table.name, show_url(self.engine))

    async def stop(self) -> None:
        """Flush what is left within `shutdown_timeout_s`, then count the rest as dropped.

        A batch still being written at the deadline may land after it was counted.
        """
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.shutdown_timeout_s)
            except TimeoutError:
                self._task.cancel()
                with suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        with self._lock:
            left = len(self._buffer)
            self._buffer.clear()
        if left:
            self._dropped.labels("shutdown").inc(left)
            log.warning("prediction log: %d records not written at shutdown", left)
        if self.engine is not None and not isinstance(self._url, sa.Engine):
            self.engine.dispose()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    async def __aenter__(self) -> PredictionLog:
        await self.start()
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@asynccontextmanager
async def open_log(cfg: PredictionLogSettings, state: ServiceState
                   ) -> AsyncIterator[PredictionLog]:
    """A service's log as its PREDICTION_LOG_* settings say (with `log_columns()`), its
    counts on /metrics and under `prediction_log` on /stats, its sink on /metadata."""
    async with PredictionLog(
        cfg.prediction_log_url, cfg.prediction_log_prefix, service=cfg.service_name,
        max_buffer=cfg.prediction_log_buffer, max_retry_s=cfg.prediction_log_retry_s,
        stream_maxlen=cfg.prediction_log_maxlen, registry=state.registry, columns=log_columns(),
    ) as plog:
        state.metrics.computed("prediction_log", plog.stats)
        state.metadata["prediction_log"] = {"sink": plog.sink, "target": plog.stream,
                                            "max_buffer": plog.max_buffer}
        yield plog
