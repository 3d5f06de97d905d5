"""The local runner: boots a topology as real processes on this machine, and supervises them.

Services start level by level in dependency order, each in its own process group with one log
file under the run directory, on a free port (the entry may get a fixed one). Readiness is
polled with a deadline and fails fast, showing the log tail, if a child exits. Once up, a
supervisor thread watches every process: one that exits is reported and marked down while the
rest keep serving, and brought back with a growing delay if its `restart` policy says so.
Single services are stopped, started, restarted (with new settings), killed, paused and resumed
through the same calls that `python -m patternkit ctl` makes, which is how tests inject faults.
Teardown runs in reverse order, level by level (a level's members together): SIGTERM, a
grace period, then SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from patternkit import heartbeat
from patternkit.infra import (
    database_url,
    external_redis_url,
    free_port,
    redis_command,
    redis_ping,
)
from patternkit.topology.schema import ServiceSpec, Topology, load_topology

POLL_S = 0.05
SUPERVISE_S = 0.1  # how often the supervisor looks at every process
BACKOFF_S = (0.5, 8.0)  # first and longest delay before bringing an exited service back
STEADY_S = 10.0  # a service up this long has recovered: its next restart waits BACKOFF_S[0]


class StackError(RuntimeError):
    """A service failed to start, exited early or missed its readiness deadline."""


class State(StrEnum):
    """Where one instance is; `status()` and `ctl status` show it."""

    PENDING = "pending"  # not started yet
    STARTING = "starting"  # spawned, not ready yet
    UP = "up"
    DONE = "done"  # a oneshot that finished with code 0
    FAILED = "failed"  # a oneshot that did not
    EXITED = "exited"  # exited on its own (or was killed) and stays down
    RESTARTING = "restarting"  # exited; its restart policy brings it back after a delay
    STOPPING = "stopping"
    STOPPED = "stopped"  # stopped on purpose (ctl stop); nothing brings it back but start
    PAUSED = "paused"  # SIGSTOP: alive, holding its connections, answering nothing
    EXTERNAL = "external"  # a backing service given by URL (REDIS_URL, a SQL URL), not ours


RUNNING = frozenset({State.STARTING, State.UP, State.PAUSED})


@dataclass(frozen=True)
class Status:
    """One instance as a user sees it."""

    name: str
    service: str
    state: str
    pid: int | None
    url: str | None  # None for a process that listens on no port
    restart: str
    restarts: int  # how many times it was started again after the first time
    exit_code: int | None  # of its last exit; negative: ended by that signal

    @property
    def exit(self) -> str:
        return describe_exit(self.exit_code)


def describe_exit(code: int | None) -> str:
    if code is None:
        return ""
    if code < 0:
        with suppress(ValueError):
            return signal.Signals(-code).name
        return f"signal {-code}"
    return f"code {code}"


@dataclass
class Proc:
    """One running (or runnable) instance of a service."""

    name: str
    service: str
    spec: ServiceSpec | None  # None for a backing service
    kind: str  # "app" | "run" | "redis" | "sql"
    port: int
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    external_url: str | None = None
    log_offset: int = 0  # where this run's output starts in the log (ready_log looks after it)
    restart: str = "no"
    state: State = State.PENDING
    exit_code: int | None = None
    spawns: int = 0
    failures: int = 0  # exits in a row without a steady run between them (sets the backoff)
    up_since: float = 0.0
    next_start: float = 0.0
    heartbeat: Path | None = None  # its heartbeat file, when readiness is a fresh heartbeat
    spawned_at: float = 0.0  # wall clock of the last spawn: an older heartbeat does not count

    @property
    def listens(self) -> bool:
        """Whether it serves on its port: apps and Redis do, a command only if it is given one."""
        if self.kind != "run":
            return True
        assert self.spec is not None
        texts = [*(self.spec.run or []), *self.spec.env.values()]
        return any("{port}" in text for text in texts)

    @property
    def url(self) -> str:
        if self.external_url:
            return self.external_url
        if self.kind == "redis":
            return f"redis://127.0.0.1:{self.port}/0"
        return f"http://127.0.0.1:{self.port}"

    @property
    def oneshot(self) -> bool:
        return bool(self.spec and self.spec.oneshot)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def status(self) -> Status:
        pid = self.popen.pid if self.popen is not None and self.popen.poll() is None else None
        return Status(
            self.name, self.service, str(self.state), pid,
            self.url if self.listens else None, self.restart, max(self.spawns - 1, 0),
            self.exit_code,
        )

    def tail(self, lines: int = 40, this_run: bool = False) -> str:
        """The last lines of its log (`this_run`: only what its latest start wrote)."""
        try:
            with self.log_path.open("rb") as log:
                if this_run:
                    log.seek(self.log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def project_root(start: Path) -> Path:
    for parent in [start, *start.parents]:
        if (parent / "pyproject.toml").is_file():
            return parent
    return start


class Stack:
    """A topology booted locally. Use as a context manager, or call start() / stop()."""

    def __init__(
        self,
        topology: Topology | str | Path,
        run_dir: str | Path,
        *,
        env: dict[str, dict[str, str]] | None = None,
        entry_port: int | None = None,
        ready_timeout: float = 90.0,
        grace: float = 5.0,
    ) -> None:
        if isinstance(topology, Topology):
            self.topology = topology
            self.root = Path.cwd()
        else:
            path = Path(topology)
            self.topology = load_topology(path)
            self.root = path if path.is_dir() else path.parent
        self.project = project_root(self.root.resolve())
        self.run_dir = Path(run_dir).resolve()
        self.log_dir = self.run_dir / "logs"
        self.overrides = env or {}
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.procs: dict[str, Proc] = {}
        self.started: list[str] = []
        # every event (boot progress, exits, restarts) also goes here, e.g. print for `make run`
        self.on_event: Callable[[str], None] | None = None
        self.boot_s: float | None = None  # how long start() took, once it has
        self._lock = threading.RLock()
        self._halt = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._plan(entry_port)

    # -- planning ---------------------------------------------------------------------------

    def _plan(self, entry_port: int | None) -> None:
        unknown = set(self.overrides) - set(self.topology.services) - {
            i for n, s in self.topology.services.items() for i in s.instances(n)
        }
        if unknown:
            raise StackError(f"env overrides for unknown services: {', '.join(sorted(unknown))}")
        for name, backing in self.topology.backing.items():
            if backing.kind == "sql":  # a URL, nothing to start: SQLite file or DATABASE_URL
                self.procs[name] = Proc(
                    name, name, None, "sql", 0, self.log_dir / f"{name}.log",
                    external_url=database_url(self.run_dir, name), state=State.EXTERNAL,
                )
                continue
            ext = external_redis_url()
            self.procs[name] = Proc(
                name, name, None, "redis", 0 if ext else free_port(),
                self.log_dir / f"{name}.log", external_url=ext,
                restart=self.topology.backing[name].restart,
                state=State.EXTERNAL if ext else State.PENDING,
            )
        for name, spec in self.topology.services.items():
            for inst in spec.instances(name):
                port = entry_port if (entry_port and name == self.topology.entry) else free_port()
                kind = "app" if spec.app else "run"
                self.procs[inst] = Proc(inst, name, spec, kind, port, self.log_dir / f"{inst}.log",
                                        restart=spec.restart)
        for proc in self.procs.values():
            self._resolve(proc)

    def _context(self, proc: Proc) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "port": proc.port,
            "run_dir": str(self.run_dir),
            "python": sys.executable,
            "name": proc.name,
        }
        for service in [*self.topology.backing, *self.topology.services]:
            members = [p for p in self.procs.values() if p.service == service]
            ctx[service] = SimpleNamespace(
                url=members[0].url,
                urls=",".join(p.url for p in members),
                host="127.0.0.1",
                port=members[0].port,
            )
        return ctx

    def _resolve(self, proc: Proc) -> None:
        if proc.kind == "sql":
            return
        if proc.kind == "redis":
            proc.argv = redis_command(proc.port, self.run_dir)
            return
        assert proc.spec is not None
        ctx = self._context(proc)
        env = {
            "SERVICE_NAME": proc.service,
            "INSTANCE_NAME": proc.name,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(self.project), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        env.update({k: v.format_map(ctx) for k, v in proc.spec.env.items()})
        env.update(self.overrides.get(proc.service, {}))
        env.update(self.overrides.get(proc.name, {}))
        proc.env = env
        if proc.spec.heartbeat:
            proc.heartbeat = Path(env.get(heartbeat.ENV_VAR)
                                  or proc.spec.heartbeat.format_map(ctx))
        if proc.spec.app:
            proc.argv = [
                sys.executable, "-m", "patternkit.serve", proc.spec.app,
                "--host", "127.0.0.1", "--port", str(proc.port),
                "--timeout-graceful-shutdown", str(int(self.grace)),
            ]
        else:
            proc.argv = [arg.format_map(ctx) for arg in proc.spec.run or []]

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Boot every service in dependency order, then supervise them until `stop()`.

        Progress is an event per process (`starting`, `ready in 1.2s`, a oneshot's
        `finished in 4.4s`) and one when all are up: in events.log and to `on_event`.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        for level in self.topology.order():
            members = [p for n in level for p in self.procs.values() if p.service == n]
            for proc in members:
                self._spawn(proc)
                if not proc.external_url:
                    self._event(f"{proc.name} starting")
            self._await_ready(members)
        self.boot_s = time.monotonic() - began
        self._event(f"{self.topology.name}: {len(self.started)} processes up "
                    f"in {self.boot_s:.1f}s")
        self._halt.clear()
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"supervisor-{self.topology.name}", daemon=True
        )
        self._supervisor.start()

    def _spawn(self, proc: Proc) -> None:
        if proc.external_url:
            return
        proc.state = State.STARTING
        proc.spawns += 1
        env = {**os.environ, **proc.env}
        proc.spawned_at = time.time()
        with proc.log_path.open("ab") as log:
            log.write(f"--- start {' '.join(proc.argv)}\n".encode())
            log.flush()
            proc.log_offset = log.tell()
            proc.popen = subprocess.Popen(
                proc.argv, cwd=self.project, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        if proc.name not in self.started:
            self.started.append(proc.name)

    def _is_ready(self, proc: Proc, client: httpx.Client) -> bool:
        """Whether `proc` is ready (a oneshot: finished); a StackError if it exited instead."""
        if proc.external_url:
            return proc.kind == "sql" or redis_ping(proc.url)
        assert proc.popen is not None
        code = proc.popen.poll()
        if proc.oneshot:
            if code is None:
                return False
            proc.exit_code = code
            proc.state = State.DONE if code == 0 else State.FAILED
            if code == 0:
                return True
            raise StackError(self._failure(proc, f"exited with code {code}"))
        if code is not None:
            proc.exit_code = code
            proc.state = State.EXITED
            raise StackError(self._failure(proc, f"exited with code {code} before it was ready"))
        if self._probe(proc, client):
            proc.state = State.UP
            proc.up_since = time.monotonic()
            return True
        return False

    def _probe(self, proc: Proc, client: httpx.Client) -> bool:
        """One readiness check of a running process: its `ready` path, log mark or PING."""
        if proc.kind == "redis":
            return redis_ping(proc.url, timeout=0.2)
        assert proc.spec is not None
        if proc.spec.ready:
            try:
                return client.get(proc.url + proc.spec.ready).status_code == 200
            except httpx.HTTPError:
                return False
        if proc.heartbeat is not None:
            return heartbeat.is_fresh(proc.heartbeat, since=proc.spawned_at)
        if proc.spec.ready_log:
            try:
                with proc.log_path.open("rb") as log:
                    log.seek(proc.log_offset)
                    output = log.read().decode("utf-8", "replace")
            except OSError:
                return False
            return re.search(proc.spec.ready_log, output) is not None
        return True

    def _await_ready(self, procs: list[Proc]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(procs)
        with httpx.Client(timeout=1.0) as client:
            while waiting:
                ready = [p for p in waiting if self._is_ready(p, client)]
                for proc in ready:
                    self._booted(proc)
                waiting = [p for p in waiting if p not in ready]
                if not waiting:
                    return
                if time.monotonic() > deadline:
                    names = ", ".join(p.name for p in waiting)
                    raise StackError(
                        f"not ready after {self.ready_timeout:.0f}s: {names}\n"
                        + "\n".join(self._failure(p, "was not ready") for p in waiting)
                    )
                time.sleep(POLL_S)

    def _booted(self, proc: Proc) -> None:
        """The progress event of a process that just became ready (or a oneshot that ended)."""
        if proc.external_url:
            if proc.kind != "sql":
                given = "REDIS_URL"
            elif proc.external_url.startswith("sqlite:"):
                given = f"the SQLite file {proc.external_url.removeprefix('sqlite:///')}"
            else:
                given = "DATABASE_URL"
            self._event(f"{proc.name} is external ({given}) and answers")
            return
        took = time.time() - proc.spawned_at
        self._event(f"{proc.name} {'finished' if proc.oneshot else 'ready'} in {took:.1f}s")

    def _failure(self, proc: Proc, what: str) -> str:
        tail = proc.tail(this_run=True)
        return f"service {proc.name} {what}; last lines of {proc.log_path}:\n{tail}"

    def stop(self) -> None:
        """Tear everything down in reverse start order (SIGTERM, grace, SIGKILL)."""
        self._halt.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=10)
        self._supervisor = None
        # level by level, last started first; the members of a level stop together (one
        # grace period for all of them, not one after another)
        level_of = {n: i for i, level in enumerate(self.topology.order()) for n in level}
        started = [self.procs[name] for name in self.started]
        for level in sorted({level_of[p.service] for p in started}, reverse=True):
            members = [p for p in reversed(started) if level_of[p.service] == level]
            self._terminate_all(members)
            for proc in members:
                if proc.state in RUNNING or proc.state == State.RESTARTING:
                    proc.state = State.STOPPED
        self.started.clear()

    # -- supervision ----------------------------------------------------------------------

    def _event(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with suppress(OSError), (self.run_dir / "events.log").open("a") as out:
            out.write(line + "\n")
        if self.on_event is not None:
            self.on_event(line)

    def _supervise(self) -> None:
        with httpx.Client(timeout=1.0) as client:
            while not self._halt.wait(SUPERVISE_S):
                with self._lock:
                    for proc in self.procs.values():
                        self._tick(proc, client)

    def _tick(self, proc: Proc, client: httpx.Client) -> None:
        """Move one process along: starting -> up, up -> exited or restarting -> starting."""
        if proc.popen is None or proc.external_url:
            return
        code = proc.popen.poll()
        if proc.state == State.STARTING:
            if code is not None and not proc.oneshot:
                self._exited(proc, code, "before it was ready")
            elif proc.oneshot and code is not None:
                proc.exit_code = code
                proc.state = State.DONE if code == 0 else State.FAILED
                self._event(f"{proc.name} finished ({describe_exit(code)})")
            elif code is None and not proc.oneshot and self._probe(proc, client):
                proc.state = State.UP
                proc.up_since = time.monotonic()
                self._event(f"{proc.name} is up" + (" again" if proc.spawns > 1 else ""))
        elif proc.state in (State.UP, State.PAUSED):
            if code is not None:
                self._exited(proc, code)
        elif proc.state == State.RESTARTING and time.monotonic() >= proc.next_start:
            self._event(f"{proc.name} restarting (restart={proc.restart})")
            self._spawn(proc)

    def _exited(self, proc: Proc, code: int, when: str = "") -> None:
        proc.exit_code = code
        now = time.monotonic()
        if proc.state == State.UP and now - proc.up_since >= STEADY_S:
            proc.failures = 0
        proc.failures += 1
        what = f"{proc.name} exited ({describe_exit(code)}){' ' + when if when else ''}"
        if proc.restart == "always" or (proc.restart == "on-failure" and code != 0):
            first, longest = BACKOFF_S
            delay = min(first * 2 ** (proc.failures - 1), longest)
            proc.state = State.RESTARTING
            proc.next_start = now + delay
            self._event(f"{what}; back in {delay:.1f}s (restart={proc.restart})")
        else:
            proc.state = State.EXITED
            self._event(
                f"{what}; it stays down (restart={proc.restart}), the rest keep running; "
                f"log: {proc.log_path}"
            )

    def _terminate(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        self._terminate_all([proc], sig)

    def _terminate_all(self, procs: list[Proc], sig: int = signal.SIGTERM) -> None:
        """Signal every process group at once, give them one grace period, then SIGKILL."""
        popens = [p.popen for p in procs if p.popen is not None]
        signalled = [popen for popen in popens if popen.poll() is None]
        for popen in signalled:
            with suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)
                os.killpg(popen.pid, signal.SIGCONT)  # a paused process acts on it only then
        deadline = time.monotonic() + self.grace
        for popen in signalled:
            with suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
        # the group may hold children (e.g. worker pools) even after the leader exited
        for popen in popens:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
        for popen in popens:
            with suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=self.grace)

    # -- single services, for tests and demos --------------------------------------------------

    def proc(self, name: str) -> Proc:
        """The instance `name`, or the first instance of the service `name` (its settings)."""
        return self.members(name)[0]

    def url(self, name: str | None = None) -> str:
        """URL of a service (its first instance) or instance; the entry when name is None."""
        return self.proc(name or self.topology.entry).url

    def urls(self, service: str) -> list[str]:
        return [p.url for p in self.procs.values() if p.service == service]

    def instances(self, service: str) -> list[str]:
        return [p.name for p in self.procs.values() if p.service == service]

    def members(self, name: str) -> list[Proc]:
        """The instances a name stands for: one instance, or every instance of a service."""
        if name in self.procs:
            return [self.procs[name]]
        found = [p for p in self.procs.values() if p.service == name]
        if not found:
            known = ", ".join(self.procs)
            raise StackError(f"no service or instance {name!r} in {self.topology.name}; "
                             f"known: {known}")
        return found

    def _own(self, name: str) -> list[Proc]:
        procs = self.members(name)
        for proc in procs:
            if proc.external_url:
                given = "a database URL" if proc.kind == "sql" else "REDIS_URL"
                raise StackError(
                    f"{proc.name} is external ({given}); it cannot be controlled from here"
                )
        return procs

    def status(self, name: str | None = None) -> list[Status]:
        """Every instance (or those of `name`): state, pid, URL, restarts, last exit."""
        with self._lock:
            procs = self.members(name) if name else list(self.procs.values())
            return [p.status() for p in procs]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Crash a service (SIGKILL to its process group by default) and wait until it is gone.

        To the supervisor this is a failure like any other: the restart policy applies.
        """
        for proc in self._own(name):
            self._terminate(proc, sig)
            with self._lock:
                code = proc.popen.poll() if proc.popen else None
                if code is not None and proc.state in RUNNING:
                    self._exited(proc, code)

    def stop_service(self, name: str) -> None:
        """Stop a service on purpose (SIGTERM, grace, SIGKILL); it stays down until started."""
        for proc in self._own(name):
            with self._lock:
                if proc.state not in RUNNING and proc.state != State.RESTARTING:
                    continue
                proc.state = State.STOPPING
            self._terminate(proc, signal.SIGTERM)
            with self._lock:
                proc.exit_code = proc.popen.returncode if proc.popen else None
                proc.state = State.STOPPED
                self._event(f"{proc.name} stopped")

    def start_service(
        self, name: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        """Start a service that is down (with extra env) on its old port; wait until ready
        (`wait=False`: return once it is spawned, e.g. to watch it while it loads).

        A service already running is left as it is; `env` then needs `restart`.
        """
        procs = self._own(name)
        with self._lock:
            for proc in procs:
                if proc.alive and proc.state in RUNNING:
                    continue
                if env:
                    proc.env = {**proc.env, **env}
                proc.failures = 0
                self._spawn(proc)
                self._event(f"{proc.name} starting")
        if not wait:
            return
        if self._supervisor is None:  # not supervised (stopped stack): wait here
            self._await_ready(procs)
            return
        deadline = time.monotonic() + self.ready_timeout
        while True:
            with self._lock:
                waiting = [p for p in procs if p.state == State.STARTING]
                failed = [p for p in procs if p.state in (State.EXITED, State.RESTARTING,
                                                          State.FAILED)]
            if failed:
                raise StackError("\n".join(
                    self._failure(p, f"exited ({describe_exit(p.exit_code)}) before it was ready")
                    for p in failed
                ))
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in waiting)
                raise StackError(f"not ready after {self.ready_timeout:.0f}s: {names}")
            time.sleep(POLL_S)

    def restart(
        self, name: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        """Stop, then start again (with `env` added to its settings), and wait until ready
        (unless `wait=False`)."""
        self.stop_service(name)
        self.start_service(name, env, wait)

    def pause(self, name: str) -> None:
        """SIGSTOP the service's processes: alive and connected, answering nothing."""
        for proc in self._own(name):
            with self._lock:
                if not proc.alive or proc.popen is None:
                    raise StackError(f"{proc.name} is not running ({proc.state})")
                with suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGSTOP)
                proc.state = State.PAUSED
                self._event(f"{proc.name} paused")

    def resume(self, name: str) -> None:
        """SIGCONT a paused service."""
        for proc in self._own(name):
            with self._lock:
                if proc.state != State.PAUSED or proc.popen is None:
                    raise StackError(f"{proc.name} is not paused ({proc.state})")
                with suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGCONT)
                proc.state = State.UP
                self._event(f"{proc.name} resumed")

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.proc(name).tail(lines)

    def log_tails(self, lines: int = 40) -> dict[str, str]:
        return {name: self.procs[name].tail(lines) for name in self.started}
