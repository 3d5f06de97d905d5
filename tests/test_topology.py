"""patternkit.topology: schema errors, start-up order, runner guarantees, compose rendering."""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from patternkit.client import wait_until
from patternkit.topology import (
    Stack,
    StackError,
    Topology,
    TopologyError,
    find_pattern,
    load_topology,
    render_compose,
)

HEAD = 'name = "t"\nid = "X"\ntitle = "t"\nsummary = "s"\ncategory = "serving"\n'


def topo(services: dict[str, Any], entry: str | None = None, **extra: Any) -> Topology:
    return Topology.model_validate(
        {"name": "t", "id": "X", "title": "t", "summary": "s", "category": "serving",
         "entry": entry or next(iter(services)), "services": services, **extra}
    )


def py(code: str) -> list[str]:
    return ["{python}", "-c", textwrap.dedent(code)]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('entry = "a"\n[services.a]\nreplicas = 0\napp = "m:f"\n', "services.a.replicas"),
        ('entry = "a"\n[services.a]\napp = "m:f"\nrun = ["x"]\n', "exactly one of"),
        ('entry = "a"\n[services.a]\napp = "m:f"\ndepends_on = ["b"]\n', "unknown service 'b'"),
        ('entry = "a"\n[services.a]\napp = "m:f"\nenv = { X = "{nope.url}" }\n', "{nope.url}"),
        ('entry = "a"\n[services.a]\napp = "m:f"\ncolour = "red"\n', "services.a.colour"),
        ('entry = "b"\n[services.a]\napp = "m:f"\n', "entry 'b'"),
        ('entry = "a"\n[services.a]\napp = "m:f"\ndepends_on = ["b"]\n'
         '[services.b]\napp = "m:f"\ndepends_on = ["a"]\n', "cycle"),
        ('entry = "a"\n[services.a\n', "not valid TOML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, body: str, names: str) -> None:
    (tmp_path / "topology.toml").write_text(HEAD + body)
    with pytest.raises(TopologyError) as err:
        load_topology(tmp_path)
    assert names in str(err.value)
    assert str(tmp_path / "topology.toml") in str(err.value)


def test_start_order_is_by_dependency() -> None:
    t = topo({"api": {"app": "m:f", "depends_on": ["worker", "redis"]},
              "worker": {"run": ["w"], "depends_on": ["redis"]}},
             backing={"redis": {"kind": "redis"}})
    assert t.order() == [["redis"], ["worker"], ["api"]]


def test_placeholders_are_resolved(tmp_path: Path) -> None:
    t = topo({"lb": {"app": "m:f", "depends_on": ["p"],
                     "env": {"B": "{p.urls}", "R": "{redis.url}", "D": "{run_dir}/x"}},
              "p": {"app": "m:f", "replicas": 2, "env": {"ME": "{name}:{port}"}}},
             entry="lb", backing={"redis": {"kind": "redis"}})
    stack = Stack(t, tmp_path)
    env = stack.proc("lb").env
    assert env["B"] == ",".join(stack.urls("p"))
    assert len(stack.urls("p")) == 2
    assert env["R"].startswith("redis://")
    assert env["D"] == f"{tmp_path.resolve()}/x"
    p2 = stack.proc("p-2")
    assert p2.env["ME"] == f"p-2:{p2.port}"
    assert p2.env["INSTANCE_NAME"] == "p-2"


def test_a_child_that_exits_fails_fast_with_its_log(tmp_path: Path) -> None:
    code = "import sys; print('cannot start: no config'); sys.exit(3)"
    # a readiness mark it never prints: without one, a command counts as up once started
    t = topo({"bad": {"run": py(code), "ready_log": "listening"}})
    with pytest.raises(StackError) as err, Stack(t, tmp_path, ready_timeout=30):
        pass
    assert "exited with code 3" in str(err.value)
    assert "cannot start: no config" in str(err.value)


def test_a_failed_oneshot_stops_the_boot(tmp_path: Path) -> None:
    t = topo({"train": {"run": py("raise SystemExit('bad data')"), "oneshot": True},
              "api": {"run": py("import time; time.sleep(30)"), "depends_on": ["train"]}},
             entry="api")
    with pytest.raises(StackError, match="bad data"), Stack(t, tmp_path):
        pass


def test_readiness_has_a_deadline(tmp_path: Path) -> None:
    t = topo({"slow": {"run": py("import time; time.sleep(30)"), "ready_log": "never"}})
    with pytest.raises(StackError, match="not ready after 1s"), Stack(t, tmp_path, ready_timeout=1):
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_teardown_kills_the_whole_group_even_if_sigterm_is_ignored(tmp_path: Path) -> None:
    code = """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("CHILD-PID=%d" % child.pid, flush=True)
        time.sleep(60)
    """
    t = topo({"stubborn": {"run": py(code), "ready_log": r"CHILD-PID=\d+"}})
    stack = Stack(t, tmp_path, grace=0.5)
    with stack:
        child = int(re.findall(r"CHILD-PID=(\d+)", stack.log_tail("stubborn"))[-1])
        leader = stack.proc("stubborn").popen
        assert leader is not None and pid_alive(child)
    assert leader.returncode == -signal.SIGKILL
    wait_until(lambda: not pid_alive(child), 5, what="child process gone")


def test_embedded_redis_can_be_stopped_and_restarted(tmp_path: Path) -> None:
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL points at an external server")
    import redis

    t = topo({"app": {"run": py("import time; time.sleep(30)"), "depends_on": ["redis"]}},
             backing={"redis": {"kind": "redis"}})
    with Stack(t, tmp_path) as stack:
        client = redis.Redis.from_url(stack.url("redis"), socket_timeout=1)
        assert client.set("k", "v") and client.get("k") == b"v"
        stack.kill("redis")
        with pytest.raises(redis.ConnectionError):
            client.ping()
        stack.start_service("redis")
        assert client.ping()
        assert client.get("k") is None  # nothing is persisted


def test_compose_rendering_follows_the_rules() -> None:
    t = load_topology(find_pattern("serving_patterns/web_single"))
    doc = render_compose(t)
    services = doc["services"]
    assert set(services) == {"trainer", "predictor-1", "predictor-2", "lb"}
    assert services["predictor-1"]["depends_on"] == {
        "trainer": {"condition": "service_completed_successfully"}}
    assert services["lb"]["depends_on"] == {
        "predictor-1": {"condition": "service_healthy"},
        "predictor-2": {"condition": "service_healthy"}}
    assert services["lb"]["environment"]["BACKEND_URLS"] == (
        "http://predictor-1:8000,http://predictor-2:8000")
    assert services["lb"]["ports"] == ["${PORT:-8000}:8000"]  # PORT=8001 for a second one
    assert "ready" in services["lb"]["healthcheck"]["test"][-1]
    assert all("ports" not in s for name, s in services.items() if name != "lb")
    images = {s["image"] for s in services.values()}
    assert images == {"ml-system-patterns:latest"}
    for svc in services.values():
        assert "container_name" not in svc
        assert svc.get("restart") != "always"


def test_pattern_lookup_by_short_name() -> None:
    assert find_pattern("web_single").name == "web_single"
    with pytest.raises(TopologyError, match="known:"):
        find_pattern("no_such_pattern")


def test_runner_uses_the_venv_python() -> None:
    t = topo({"a": {"run": ["{python}", "-V"]}})
    assert Stack(t, "/tmp/unused").proc("a").argv[0] == sys.executable


def test_a_sql_backing_is_a_sqlite_file_in_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    writer = """
        import os, sqlalchemy as sa
        from patternkit.db import make_engine
        with make_engine(os.environ["DB"]).begin() as conn:
            conn.execute(sa.text("CREATE TABLE t_rows (id INTEGER PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO t_rows VALUES (7)"))
    """
    t = topo({"w": {"run": py(writer), "oneshot": True, "depends_on": ["db"],
                    "env": {"DB": "{db.url}"}}},
             backing={"db": {"kind": "sql"}})
    with Stack(t, tmp_path) as stack:
        url = f"sqlite:///{tmp_path.resolve() / 'db.db'}"
        assert stack.url("db") == url == stack.proc("w").env["DB"]
        (db,) = stack.status("db")
        assert (db.state, db.pid) == ("external", None)  # nothing to start: ready at once
        assert stack.status("w")[0].state == "done"
        with pytest.raises(StackError, match="external"):
            stack.kill("db")
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM t_rows")).scalar() == 7
    engine.dispose()


def test_database_url_sends_every_sql_backing_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    t = topo({"a": {"app": "m:f", "env": {"DATABASE_URL": "{db.url}"}}},
             backing={"db": {"kind": "sql"}})
    stack = Stack(t, tmp_path)
    assert stack.proc("a").env["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/test"


def test_compose_renders_a_sql_backing_as_postgres() -> None:
    t = topo({"a": {"app": "m:f", "depends_on": ["db"], "env": {"DATABASE_URL": "{db.url}"}}},
             backing={"db": {"kind": "sql"}})
    services = render_compose(t)["services"]
    assert services["db"]["image"] == "postgres:16.6-alpine"
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["a"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert services["a"]["environment"]["DATABASE_URL"] == (
        "postgresql://postgres:patterns@db:5432/patterns")


def test_boot_progress_is_reported_and_logged_but_silent_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = topo({"train": {"run": py("print('trained')"), "oneshot": True},
              "api": {"run": py("print('ready', flush=True); import time; time.sleep(30)"),
                      "ready_log": "ready", "depends_on": ["train"]}}, entry="api")
    quiet = Stack(t, tmp_path / "quiet")
    with quiet:
        pass
    assert capsys.readouterr().out == ""  # tests and library users see nothing
    assert "api ready in" in (quiet.run_dir / "events.log").read_text()

    lines: list[str] = []
    stack = Stack(t, tmp_path / "loud")
    stack.on_event = lines.append  # what `make run` and `make demo` print
    with stack:
        pass
    said = [line.split(" ", 1)[1] for line in lines]  # without the HH:MM:SS stamp
    assert said[0] == "train starting"
    assert re.fullmatch(r"train finished in \d+\.\ds", said[1])
    assert said[2] == "api starting"
    assert re.fullmatch(r"api ready in \d+\.\ds", said[3])
    assert re.fullmatch(r"t: 2 processes up in \d+\.\ds", said[4])
    assert stack.boot_s is not None and stack.boot_s > 0
