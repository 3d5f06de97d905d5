"""Shared fixtures for the repo-wide tests: one trained iris model per session, and databases.

`db_url` runs a test once on SQLite and once on PostgreSQL (`TEST_POSTGRES_URL`, by default
the CI server at 127.0.0.1:5432, database `test`). The PostgreSQL run is skipped only when
connecting fails, before the test body: anything that fails inside the test is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from patternkit.db import make_engine
from patternkit.models import train_model

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iris_lr")
    train_model("iris_lr", out, version="1.2.3")
    return out


def postgres_or_skip() -> str:
    """The PostgreSQL URL if a server answers there; skips the test (only) if none does."""
    engine = make_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        engine.connect().close()
    except OperationalError as exc:  # refused, unknown host, timeout: no server here
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc.orig!r}"[:300])
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def postgres_url() -> str:
    return postgres_or_skip()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database to write to: a fresh SQLite file, or the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return postgres_or_skip()
