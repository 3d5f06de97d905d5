"""The clean side's one data-access interface: every store is a `DataSource` opened by URL.

`open_source("sqlite:///path#table")`, `open_source("csv:///path")` and
`open_source("https://host/rows", token=...)` return adapters with one method, `read()`,
that gives a `Table` (feature columns, a `species` label) or raises `SourceError` naming the
source and what went wrong. Connection, authentication, timeouts and the error policy live
here once, so a job names a source and never touches a driver.
"""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
import numpy as np

from antipatterns.too_many_pipes.ml import Table

LABEL = "species"


class SourceError(RuntimeError):
    """A store could not be read: names the source, its URL and the cause."""

    def __init__(self, name: str, url: str, cause: str) -> None:
        super().__init__(f"source {name} ({url}) unreadable: {cause}")
        self.source = name


class DataSource(Protocol):
    name: str
    url: str

    def read(self) -> Table: ...


def to_table(header: list[str], rows: list[list[object]]) -> Table:
    features = [h for h in header if h not in ("id", LABEL)]
    index = [header.index(f) for f in features]
    X = np.asarray([[float(str(r[i])) for i in index] for r in rows], dtype=np.float32)
    labels = [str(r[header.index(LABEL)]) for r in rows]
    if not labels:
        raise ValueError("no rows")
    return Table(features, X.reshape(len(labels), len(features)), labels)


class Adapter:
    """The shared part: the error policy. A subclass only fetches rows."""

    def __init__(self, name: str, url: str, timeout_s: float = 5.0, token: str = "") -> None:
        self.name, self.url, self.timeout_s, self.token = name, url, timeout_s, token

    def fetch(self) -> tuple[list[str], list[list[object]]]:
        raise NotImplementedError

    def read(self) -> Table:
        try:
            return to_table(*self.fetch())
        except Exception as exc:  # every driver's failure becomes one named error
            raise SourceError(self.name, self.url, f"{type(exc).__name__}: {exc}") from exc


class SqliteSource(Adapter):
    def fetch(self) -> tuple[list[str], list[list[object]]]:
        parts = urlsplit(self.url)
        path = Path(parts.path)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=self.timeout_s) as conn:
            cursor = conn.execute(f'SELECT * FROM "{parts.fragment}"')  # a declared table name
            return [d[0] for d in cursor.description], [list(r) for r in cursor.fetchall()]


class CsvSource(Adapter):
    def fetch(self) -> tuple[list[str], list[list[object]]]:
        with Path(urlsplit(self.url).path).open(newline="") as handle:
            header, *rows = list(csv.reader(handle))
        return header, [list(r) for r in rows]


class WebApiSource(Adapter):
    def fetch(self) -> tuple[list[str], list[list[object]]]:
        reply = httpx.get(self.url, timeout=self.timeout_s,
                          headers={"Authorization": f"Bearer {self.token}"})
        reply.raise_for_status()
        rows = reply.json()["rows"]
        header = list(rows[0]) if rows else ["id", LABEL]
        return header, [[r[h] for h in header] for r in rows]


def open_source(name: str, url: str, token: str = "") -> DataSource:
    scheme = urlsplit(url).scheme
    kinds: dict[str, type[Adapter]] = {"sqlite": SqliteSource, "csv": CsvSource,
                                       "http": WebApiSource, "https": WebApiSource}
    if scheme not in kinds:
        raise ValueError(f"source {name}: no adapter for {scheme!r} ({url})")
    return kinds[scheme](name, url, token=token)
