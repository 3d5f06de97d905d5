"""The DWH of T1: the raw landing table `batch_training_iris_raw`, as a loader fills it.

Every measurement lands as text (a CSV load keeps what the source sent), so the table holds
what real warehouses do: numbers, numbers stored as chars (`"5"`), words (`"five"`, `"n/a"`),
a decimal comma, negatives, `NaN`, NULLs, centimetres typed as millimetres and labels nobody
declared. `seed_rows` is iris (150 rows, from scikit-learn) plus `DIRTY_ROWS`; the job's
validate step (patternkit-free, in `train.py`) refuses what cannot be used, by reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from patternkit import db

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABEL = "species"

METADATA = sa.MetaData()
IRIS_RAW = sa.Table(
    "batch_training_iris_raw",
    METADATA,
    sa.Column("id", db.ROW_ID, primary_key=True, autoincrement=True),
    *(sa.Column(name, sa.Text, nullable=True) for name in FEATURES),
    sa.Column(LABEL, sa.Text, nullable=True),
    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
)

# (sepal_length, sepal_width, petal_length, petal_width, species): what a loader let through
DIRTY_ROWS: list[tuple[str | None, ...]] = [
    ("five", "3.4", "1.5", "0.2", "setosa"),          # a word
    ("n/a", "3.0", "4.2", "1.3", "versicolor"),       # a placeholder
    ("6,3", "2.9", "5.6", "1.8", "virginica"),        # a decimal comma
    ("5.0", "-3.2", "1.4", "0.2", "setosa"),          # a negative
    ("6.1", "2.8", "-4.0", "1.3", "versicolor"),      # a negative
    ("NaN", "3.1", "1.5", "0.1", "setosa"),           # NaN
    ("6.4", None, "5.3", "2.3", "virginica"),         # NULL
    ("5.7", "2.8", "", "1.3", "versicolor"),          # empty
    ("58", "2.7", "5.1", "1.9", "virginica"),         # millimetres: out of range
    ("5.1", "3.5", "1.4", "0", "setosa"),             # zero: out of range
    ("6.7", "3.0", "5.2", "2.3", "Iris-virginica?"),  # a label nobody declared
    ("5.5", "2.4", "3.8", "1.1", None),               # no label
]


def now() -> datetime:
    return datetime.now(UTC)


def create_tables(engine: sa.Engine) -> None:
    db.create_tables(engine, METADATA)


def insert_rows(conn: sa.Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Append raw rows (four features and a label, each text or NULL); returns how many."""
    stamp = now()
    values = [{**dict(zip((*FEATURES, LABEL), row, strict=True)), "loaded_at": stamp}
              for row in rows]
    if values:
        conn.execute(sa.insert(IRIS_RAW), values)
    return len(values)


def iris_rows() -> list[tuple[str, ...]]:
    """The 150 iris rows as a CSV load lands them: text, the label by name; whole numbers
    as a source writes them (`"5"`, not `"5.0"`): numbers stored as chars."""
    from sklearn.datasets import load_iris

    bunch = load_iris()
    names = [str(n) for n in bunch.target_names]
    return [(*(f"{v:g}" for v in row), names[int(t)])
            for row, t in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True)]


def seed_rows() -> list[tuple[str | None, ...]]:
    """Iris plus the dirty rows, interleaved (every 13th row is dirty) as loads mix them."""
    clean: list[tuple[str | None, ...]] = list(iris_rows())
    out: list[tuple[str | None, ...]] = []
    dirty = iter(DIRTY_ROWS)
    for i, row in enumerate(clean):
        out.append(row)
        if i % 13 == 12:
            out.append(next(dirty, row))
    out.extend(dirty)
    return out


def count(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(IRIS_RAW)).scalar_one())


def read_rows(conn: sa.Connection, up_to_id: int | None = None) -> list[dict[str, Any]]:
    """Every raw row (up to id `up_to_id`: a run's snapshot), in id order."""
    query = sa.select(IRIS_RAW).order_by(IRIS_RAW.c.id)
    if up_to_id is not None:
        query = query.where(IRIS_RAW.c.id <= up_to_id)
    return [db.plain(r) for r in conn.execute(query).mappings()]
