"""patternkit.db: SQLite by default, PostgreSQL when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from patternkit.db import make_engine, normalise_url


def test_sqlite_is_shared_safely(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with make_engine(f"sqlite:///{tmp_path / 'x.db'}").connect() as other:
        assert other.execute(text("SELECT count(*) FROM t")).scalar() == 1


def test_postgres_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_postgres_when_available() -> None:
    url = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    engine = make_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    except Exception as exc:  # any connection failure means "not here"
        pytest.skip(f"no PostgreSQL at {url}: {type(exc).__name__}")
