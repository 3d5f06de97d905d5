"""Relational storage for the patterns (DWH, inference log, registry) through SQLAlchemy.

A pattern gets its database URL from a `[backing.NAME] kind = "sql"` entry of its topology
(`{NAME.url}`): SQLite in the run directory by default (WAL journal and a busy timeout so
several processes can read and write it at once), or `DATABASE_URL`, e.g. PostgreSQL
(`postgresql://...` is driven by psycopg 3). `upsert` and `create_tables` work the same on
both, and `create_tables` is safe when several processes create the same tables at once.
`in_tx` runs a route's transaction on a thread; `plain` turns a row into a JSON-ready dict.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite

T = TypeVar("T")

# the PostgreSQL advisory lock that serialises create_tables across processes
CREATE_LOCK_KEY = zlib.crc32(b"patternkit.db.create_tables")
_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
# A row id column: 64-bit, as `patternkit.schemas.RowId` allows (a PostgreSQL INTEGER would
# make a lookup of a larger id an error, not a miss); SQLite's INTEGER is 64-bit already and is
# the only type whose primary key autoincrements there.
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def normalise_url(url: str) -> str:
    """Pick the installed driver: psycopg 3 for a bare `postgresql://` URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`, set up for several processes sharing one database."""
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **kwargs)
    connect_args = {"timeout": 30, **kwargs.pop("connect_args", {})}
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    busy_ms = int(float(connect_args["timeout"]) * 1000)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        # While another process switches a new file to WAL (kept in the file, so set only
        # when it is not yet), SQLite answers "database is locked" without waiting the busy
        # timeout: processes connecting at once try again, within that timeout
        deadline = time.monotonic() + busy_ms / 1000
        while True:
            try:
                if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        cursor.close()

    return engine


def show_url(engine_or_url: Engine | str) -> str:
    """The URL with its password hidden, for logs and /metadata."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else sa.make_url(engine_or_url)
    return url.render_as_string(hide_password=True)


def _insert(dialect: str, table: sa.Table) -> Any:
    if dialect not in _INSERTS:
        raise RuntimeError(f"upsert needs SQLite or PostgreSQL, not {dialect}")
    return _INSERTS[dialect](table)


def upsert(
    conn: sa.Connection | Engine,
    table: sa.Table,
    rows: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    key: Sequence[str] | None = None,
    update: Sequence[str] | None = None,
) -> int:
    """Insert `rows`, or overwrite the rows whose `key` (default: the primary key) exists.

    `update` names the columns an existing row takes from the new one (default: every column
    the rows carry except the key); an empty `update` keeps existing rows as they are. With an
    engine it runs in a transaction of its own. Returns how many rows were sent.
    """
    batch = [dict(rows)] if isinstance(rows, Mapping) else [dict(r) for r in rows]
    if not batch:
        return 0
    if isinstance(conn, Engine):
        with conn.begin() as tx:
            return upsert(tx, table, batch, key=key, update=update)
    keys = list(key) if key is not None else [c.name for c in table.primary_key.columns]
    if not keys:
        raise ValueError(f"upsert into {table.name}: no key given and no primary key")
    columns = list(update) if update is not None else [c for c in batch[0] if c not in keys]
    stmt = _insert(conn.dialect.name, table)
    if columns:
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={c: stmt.excluded[c] for c in columns}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    conn.execute(stmt, batch)
    return len(batch)


def insert_new(
    conn: sa.Connection, table: sa.Table, rows: Iterable[Mapping[str, Any]], key: Sequence[str]
) -> int:
    """Insert the `rows` whose `key` (a unique constraint's columns) is not in `table` yet and
    skip the others (`ON CONFLICT DO NOTHING`); returns how many were inserted (RETURNING),
    so a caller counts the duplicates it skipped. Rows repeating a key within `rows` count
    once."""
    batch = [dict(r) for r in rows]
    if not batch:
        return 0
    stmt = _insert(conn.dialect.name, table).on_conflict_do_nothing(index_elements=list(key))
    pk = next(iter(table.primary_key.columns))
    return len(conn.execute(stmt.returning(pk), batch).all())


def create_tables(engine: Engine, metadata: sa.MetaData) -> None:
    """Create the tables (and indexes) of `metadata` that are missing, safely when other
    processes do the same at the same moment.

    The check and the CREATEs run in one transaction that first takes a lock every creator
    waits for: a transaction-level advisory lock in PostgreSQL, the write lock (`BEGIN
    IMMEDIATE`) in SQLite; both run DDL inside a transaction, so whoever comes second sees the
    tables the first one made and creates nothing.
    """
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_LOCK_KEY})
        elif dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite would not begin before DDL
        metadata.create_all(conn, checkfirst=True)
        conn.commit()


async def in_tx(engine: Engine, work: Callable[[sa.Connection], T]) -> T:
    """Run `work(conn)` in one transaction on a worker thread: a route's blocking DB work."""

    def run() -> T:
        with engine.begin() as conn:
            return work(conn)

    return await asyncio.to_thread(run)


def plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row mapping as a dict with plain `str` keys (SQLAlchemy's are `quoted_name`, which
    orjson refuses)."""
    return {str(k): v for k, v in row.items()}
