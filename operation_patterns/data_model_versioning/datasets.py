"""Dataset versions of O3: a query over the DWH plus split settings, materialised into tables
named after the version.

`materialise` runs the query read-only, splits its rows by a hash of each row's key and the
seed (a row's side never depends on the order or the number of rows), and writes
`data_model_versioning_data_<DATA>_<SPLIT>_train` / `_test`, keyed by the row key, so a
second writer of the same version changes nothing. Each part's sha256 is taken over the rows
as read back from its table, in key order: `read_part` gives the same rows and hash every
time. Asked again for a version that exists, it re-runs the query: if the DWH now returns
other rows for the same query, that is a 409, and the stored version is left as it was.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from operation_patterns.data_model_versioning.tables import DATASETS, part_table_name
from operation_patterns.data_model_versioning.versions import (
    InvalidVersion,
    canonical,
    data_digest,
    normalise_query,
    parse_dataset,
    split_digest,
)
from patternkit.db import create_tables, upsert
from patternkit.service import ApiError

PARTS = ("train", "test")
COLUMN_TYPES: dict[str, Any] = {"integer": sa.BigInteger, "float": sa.Float, "text": sa.Text,
                                "boolean": sa.Boolean}


class SplitSettings(BaseModel):
    """How the query's rows are split: the share that goes to test, the seed, the key column."""

    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of rows in the test part")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="changes which rows go to test")
    key: str = Field("id", min_length=1, max_length=64, description="a unique column per row")


class DatasetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=10_000,
                       description="a SELECT over the DWH; its text (normalised) is DATA")
    split: SplitSettings = Field(default_factory=SplitSettings)


def rows_sha256(columns: list[str], rows: list[list[Any]]) -> str:
    return hashlib.sha256(canonical({"columns": columns, "rows": rows}).encode()).hexdigest()


def in_test(key: Any, settings: SplitSettings) -> bool:
    """Whether the row with `key` goes to test: a uniform number from sha256(seed, key)."""
    h = hashlib.sha256(f"{settings.seed}:{canonical(key)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < settings.test_fraction


def plain(value: Any, column: str) -> Any:
    """A value as JSON holds it (dates as ISO text, decimals as floats)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(422, f"column {column!r} holds {value}: only finite numbers can be "
                                "stored", "bad_query")
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise ApiError(422, f"column {column!r} holds a {type(value).__name__}, which a dataset "
                        "cannot store (numbers, text, booleans, dates)", "bad_query")


def column_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {bool} and kinds:
        return "boolean"
    if kinds <= {int}:
        return "integer"
    if kinds <= {int, float}:
        return "float"
    return "text"


def run_query(engine: sa.Engine, query: str, max_rows: int) -> tuple[list[str], list[list[Any]]]:
    """The query's columns and rows, read in a read-only session of the DWH."""
    text = normalise_query(query)
    first = text.split(" ", 1)[0].lower()
    if first not in ("select", "with"):
        raise ApiError(422, f"the query must be one SELECT (or WITH ... SELECT) statement, "
                            f"not {first.upper()!r}", "bad_query")
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        try:
            if sqlite:
                conn.exec_driver_sql("PRAGMA query_only = ON")
            else:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            result = conn.exec_driver_sql(text)
            if not result.returns_rows:
                raise ApiError(422, "the query returned no result set", "bad_query")
            columns = [str(c) for c in result.keys()]  # noqa: SIM118 (a Result, not a dict)
            raw = result.fetchmany(max_rows + 1)
        except sa.exc.DBAPIError as exc:
            raise ApiError(422, f"the DWH refused the query: {exc.orig}", "bad_query") from None
        finally:
            conn.rollback()
            if sqlite:
                conn.exec_driver_sql("PRAGMA query_only = OFF")
    if len(raw) > max_rows:
        raise ApiError(413, f"the query returns more than {max_rows} rows "
                            "(MAX_DATASET_ROWS)", "dataset_too_large")
    if len(set(columns)) != len(columns):
        raise ApiError(422, f"the query returns a column name twice: {columns}", "bad_query")
    rows = [[plain(v, c) for v, c in zip(row, columns, strict=True)] for row in raw]
    return columns, rows


def split_rows(columns: list[str], rows: list[list[Any]], settings: SplitSettings
               ) -> dict[str, list[list[Any]]]:
    if settings.key not in columns:
        raise ApiError(422, f"split.key: the query returns no column {settings.key!r} "
                            f"(it returns {', '.join(columns)})", "bad_split")
    at = columns.index(settings.key)
    keys = [row[at] for row in rows]
    if any(k is None for k in keys) or len(set(map(canonical, keys))) != len(keys):
        raise ApiError(422, f"split.key: column {settings.key!r} must be unique and not null "
                            "in the query's rows", "bad_split")
    parts: dict[str, list[list[Any]]] = {"train": [], "test": []}
    for row in rows:
        parts["test" if in_test(row[at], settings) else "train"].append(row)
    for part, found in parts.items():
        if not found:
            raise ApiError(422, f"the split leaves the {part} part empty ({len(rows)} rows, "
                                f"test_fraction {settings.test_fraction})", "bad_split")
    return parts


def part_table(version: str, part: str, spec: list[dict[str, str]], key: str) -> sa.Table:
    return sa.Table(
        part_table_name(version, part), sa.MetaData(),
        *(sa.Column(c["name"], COLUMN_TYPES[c["type"]], primary_key=c["name"] == key,
                    autoincrement=False)
          for c in spec),
    )


def read_rows(conn: sa.Connection, table: sa.Table, key: str) -> list[list[Any]]:
    rows = conn.execute(sa.select(table).order_by(table.c[key]))
    return [[plain(v, c) for v, c in zip(row, table.c.keys(), strict=True)] for row in rows]


def dataset_view(row: Any) -> dict[str, Any]:
    m = row._mapping
    version = m["version"]
    return {
        "version": version, "data": m["data"], "split": m["split"], "query": m["query"],
        "split_settings": m["split_settings"],
        "columns": m["columns"],
        "tables": {p: part_table_name(version, p) for p in PARTS},
        "rows": {"train": m["train_rows"], "test": m["test_rows"]},
        "sha256": {"train": m["train_sha256"], "test": m["test_sha256"]},
        "created": m["created"].replace(tzinfo=m["created"].tzinfo or UTC).isoformat(),
    }


def get_dataset(engine: sa.Engine, version: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(DATASETS).where(DATASETS.c.version == version)).first()
    return dataset_view(row) if row is not None else None


def require_dataset(engine: sa.Engine, version: str, status: int = 404) -> dict[str, Any]:
    """The dataset `version`, or a `status` error naming the versions that exist."""
    try:
        parse_dataset(version)
    except InvalidVersion as exc:
        raise ApiError(422, str(exc), "invalid_version") from None
    found = get_dataset(engine, version)
    if found is None:
        known = [d["version"] for d in list_datasets(engine)]
        raise ApiError(status, f"unknown dataset version {version!r} (known: "
                               f"{', '.join(known) or 'none'})", "unknown_dataset")
    return found


def list_datasets(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(DATASETS).order_by(DATASETS.c.created))
        return [dataset_view(r) for r in rows]


def materialise(engine: sa.Engine, req: DatasetRequest, max_rows: int
                ) -> tuple[dict[str, Any], bool]:
    """The dataset version of `req`, stored if it is new: (its description, whether new)."""
    settings = req.split.model_dump()
    version = f"{data_digest(req.query)}.{split_digest(settings)}"
    columns, rows = run_query(engine, req.query, max_rows)
    source = rows_sha256(columns, sorted(rows, key=canonical))
    existing = get_dataset(engine, version)
    if existing is not None:
        with engine.connect() as conn:
            stored = conn.scalar(sa.select(DATASETS.c.source_sha256)
                                 .where(DATASETS.c.version == version))
        if stored != source:
            raise ApiError(409, f"dataset {version} exists, but its query now returns other rows "
                                f"({len(rows)} rows, sha256 {source[:12]}, not {str(stored)[:12]}):"
                                " the DWH changed under the query. The stored version is kept; "
                                "pin the query (e.g. a date bound) to make a new one",
                           "source_changed")
        return existing, False
    parts = split_rows(columns, rows, req.split)
    spec = [{"name": c, "type": column_type([r[i] for r in rows])} for i, c in enumerate(columns)]
    tables = {p: part_table(version, p, spec, req.split.key) for p in PARTS}
    meta = sa.MetaData()
    for table in tables.values():
        table.to_metadata(meta)
    create_tables(engine, meta)
    hashes: dict[str, str] = {}
    with engine.begin() as conn:
        for part, table in tables.items():
            upsert(conn, table, [dict(zip(columns, r, strict=True)) for r in parts[part]],
                   update=[])
            hashes[part] = rows_sha256(columns, read_rows(conn, table, req.split.key))
        data, split = parse_dataset(version)
        upsert(conn, DATASETS, {
            "version": version, "data": data, "split": split, "query": normalise_query(req.query),
            "split_settings": settings, "columns": spec,
            "train_rows": len(parts["train"]), "test_rows": len(parts["test"]),
            "train_sha256": hashes["train"], "test_sha256": hashes["test"],
            "source_sha256": source, "created": datetime.now(UTC),
        }, update=[])
    found = get_dataset(engine, version)
    assert found is not None
    return found, True


def read_part(engine: sa.Engine, version: str, part: str) -> dict[str, Any]:
    """A stored part's rows in key order, with their sha256 (checked against the stored one)."""
    if part not in PARTS:
        raise ApiError(404, f"a dataset has the parts {', '.join(PARTS)}, not {part!r}",
                       "unknown_part")
    info = require_dataset(engine, version)
    key = info["split_settings"]["key"]
    table = part_table(version, part, info["columns"], key)
    with engine.connect() as conn:
        rows = read_rows(conn, table, key)
    columns = [c["name"] for c in info["columns"]]
    sha = rows_sha256(columns, rows)
    if sha != info["sha256"][part]:
        raise ApiError(500, f"table {table.name} no longer holds what dataset {version} stored "
                            f"(sha256 {sha[:12]}, registered {info['sha256'][part][:12]})",
                       "dataset_corrupted")
    return {"version": version, "part": part, "table": table.name, "columns": columns,
            "n": len(rows), "sha256": sha, "rows": rows}
