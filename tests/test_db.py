"""patternkit.db: SQLite by default, PostgreSQL when it is there; upserts and table creation
that behave the same on both, with several processes at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from patternkit.client import wait_until
from patternkit.db import create_tables, in_tx, make_engine, normalise_url, plain, upsert


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


def test_postgres_answers(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            assert conn.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def tables(suffix: str) -> sa.MetaData:
    """Two related tables with an index, named apart so runs never share them."""
    md = sa.MetaData()
    sa.Table(f"t_items_{suffix}", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(32), nullable=False, index=True),
             sa.Column("score", sa.Float, nullable=True))
    sa.Table(f"t_pairs_{suffix}", md,
             sa.Column("a", sa.Integer, primary_key=True),
             sa.Column("b", sa.String(8), primary_key=True),
             sa.Column("note", sa.Text, nullable=False))
    return md


@pytest.fixture
def engine_md(db_url: str) -> Iterator[tuple[sa.Engine, sa.MetaData]]:
    engine = make_engine(db_url)
    md = tables(uuid.uuid4().hex[:10])
    try:
        yield engine, md
    finally:
        md.drop_all(engine)
        engine.dispose()


def test_upsert_inserts_then_updates(engine_md: tuple[sa.Engine, sa.MetaData]) -> None:
    engine, md = engine_md
    create_tables(engine, md)
    items = next(t for t in md.sorted_tables if t.name.startswith("t_items"))
    assert upsert(engine, items, [{"id": 1, "name": "a", "score": 1.0},
                                  {"id": 2, "name": "b", "score": 2.0}]) == 2
    with engine.begin() as conn:  # one row updated, one new, in the caller's transaction
        upsert(conn, items, [{"id": 2, "name": "B", "score": 20.0},
                             {"id": 3, "name": "c", "score": None}])
    upsert(engine, items, {"id": 1, "name": "A"})  # only the columns given change
    with engine.connect() as conn:
        rows = conn.execute(sa.select(items).order_by(items.c.id)).all()
    assert [tuple(r) for r in rows] == [(1, "A", 1.0), (2, "B", 20.0), (3, "c", None)]


def test_upsert_on_a_composite_key_and_without_update(
    engine_md: tuple[sa.Engine, sa.MetaData]
) -> None:
    engine, md = engine_md
    create_tables(engine, md)
    pairs = next(t for t in md.sorted_tables if t.name.startswith("t_pairs"))
    upsert(engine, pairs, [{"a": 1, "b": "x", "note": "first"}, {"a": 1, "b": "y", "note": "y"}])
    upsert(engine, pairs, [{"a": 1, "b": "x", "note": "second"}], update=[])  # keep existing
    upsert(engine, pairs, [{"a": 1, "b": "y", "note": "new y"}], key=["a", "b"])
    assert upsert(engine, pairs, []) == 0
    with engine.connect() as conn:
        rows = conn.execute(sa.select(pairs).order_by(pairs.c.b)).all()
    assert [tuple(r) for r in rows] == [(1, "x", "first"), (1, "y", "new y")]


CREATOR = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_db import tables
from patternkit.db import create_tables, make_engine
engine = make_engine(sys.argv[1])
md = tables(sys.argv[2])
go = Path(sys.argv[3])
Path(sys.argv[4]).touch()  # this process is ready
deadline = time.monotonic() + 180  # a loaded machine imports slowly
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.001)
create_tables(engine, md)
print("created", flush=True)
"""


@pytest.mark.parametrize("round_no", range(3))
def test_processes_creating_the_same_tables_at_once_all_succeed(
    engine_md: tuple[sa.Engine, sa.MetaData], db_url: str, tmp_path: Path, round_no: int
) -> None:
    engine, md = engine_md
    suffix = next(iter(md.tables)).rsplit("_", 1)[1]
    script = CREATOR.format(root=str(Path(__file__).resolve().parents[1]))
    go = tmp_path / f"go-{round_no}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db_url, suffix, str(go), str(tmp_path / f"r{i}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(4)
    ]
    try:
        wait_until(lambda: all((tmp_path / f"r{i}").exists() for i in range(4)), 180,
                   what="every creator waiting for the signal")
        go.touch()  # all four create at the same moment
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and out.strip() == "created", err[-2000:]
    names = set(sa.inspect(engine).get_table_names())
    assert set(md.tables) <= names
    items = next(t for t in md.sorted_tables if t.name.startswith("t_items"))
    indexes = sa.inspect(engine).get_indexes(items.name)
    assert [ix["column_names"] for ix in indexes] == [["name"]]
    upsert(engine, items, {"id": 1, "name": "works"})  # and usable


def test_in_tx_commits_a_unit_of_work_or_none_of_it(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tx.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"))

    def add(conn: sa.Connection) -> int:
        conn.execute(text("INSERT INTO t VALUES (1, 'a')"))
        return int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())

    def add_then_fail(conn: sa.Connection) -> None:
        conn.execute(text("INSERT INTO t VALUES (2, 'b')"))
        raise RuntimeError("boom")

    assert asyncio.run(in_tx(engine, add)) == 1
    with pytest.raises(RuntimeError):
        asyncio.run(in_tx(engine, add_then_fail))
    with engine.connect() as conn:
        rows = [plain(r) for r in conn.execute(text("SELECT * FROM t")).mappings()]
    assert rows == [{"id": 1, "name": "a"}]
    assert all(type(k) is str for k in rows[0])
