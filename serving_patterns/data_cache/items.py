"""The DWH's item table of S9 and the queries on it, shared by every role that touches it.

`data_cache_items(id, f1..f4, updated_at)` lives in the topology's `db` backing: SQLite under
the run directory by default, or `DATABASE_URL` (PostgreSQL). The seed job writes it, the DWH
API reads and updates single rows, and the warm-up job reads many rows at once; all of them go
through these functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import Field

from patternkit.db import upsert
from patternkit.settings import ServiceSettings

MAX_ID = 2**31 - 1  # an INTEGER column in every database
FEATURES = ("f1", "f2", "f3", "f4")
N_FEATURES = len(FEATURES)

METADATA = sa.MetaData()
ITEMS = sa.Table(
    "data_cache_items",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in FEATURES),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


class DatabaseSettings(ServiceSettings):
    """Where the DWH is: `DATABASE_URL`, the `{db.url}` of the topology."""

    database_url: str = Field(..., description="the DWH ({db.url} of the topology)")


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC; SQLite hands datetimes back without their zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def item_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row as the DWH API, the cache and the proxy carry it."""
    return {
        "id": int(row["id"]),
        "features": [float(row[name]) for name in FEATURES],
        "updated_at": iso(row["updated_at"]),
    }


def count_items(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(ITEMS)) or 0)


def read_items(engine: sa.Engine, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The rows of `ids` that exist, in id order (one query)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ITEMS).where(ITEMS.c.id.in_(list(ids))).order_by(ITEMS.c.id))
        return [item_view(row._mapping) for row in rows]


def upsert_items(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """Insert rows, or overwrite the ones whose id exists."""
    upsert(engine, ITEMS, rows)


def write_item(
    engine: sa.Engine, item_id: int, features: Sequence[float]
) -> tuple[bool, dict[str, Any]]:
    """Write one row, stamped now; (whether it is new, the row as stored)."""
    with engine.connect() as conn:
        existed = conn.scalar(sa.select(ITEMS.c.id).where(ITEMS.c.id == item_id)) is not None
    row = {"id": item_id, **dict(zip(FEATURES, features, strict=True)),
           "updated_at": datetime.now(UTC)}
    upsert_items(engine, [row])
    return not existed, item_view(row)
