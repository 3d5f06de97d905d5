"""The local runner: boots a topology as real processes on this machine, no Docker needed.

Services start level by level in dependency order, each in its own process group with one log
file under the run directory, on a free port (the entry may get a fixed one). Readiness is
polled with a deadline and fails fast, showing the log tail, if a child exits. Teardown runs in
reverse order: SIGTERM, a grace period, then SIGKILL. Tests use the same `Stack` to kill,
stop and restart single services.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from patternkit.infra import external_redis_url, free_port, redis_command, redis_ping
from patternkit.topology.schema import ServiceSpec, Topology, load_topology

POLL_S = 0.05


class StackError(RuntimeError):
    """A service failed to start, exited early or missed its readiness deadline."""


@dataclass
class Proc:
    """One running (or runnable) instance of a service."""

    name: str
    service: str
    spec: ServiceSpec | None  # None for a backing service
    kind: str  # "app" | "run" | "redis"
    port: int
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    external_url: str | None = None
    log_offset: int = 0  # where this run's output starts in the log (ready_log looks after it)

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

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
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
        self._plan(entry_port)

    # -- planning ---------------------------------------------------------------------------

    def _plan(self, entry_port: int | None) -> None:
        unknown = set(self.overrides) - set(self.topology.services) - {
            i for n, s in self.topology.services.items() for i in s.instances(n)
        }
        if unknown:
            raise StackError(f"env overrides for unknown services: {', '.join(sorted(unknown))}")
        for name in self.topology.backing:
            ext = external_redis_url()
            self.procs[name] = Proc(
                name, name, None, "redis", 0 if ext else free_port(),
                self.log_dir / f"{name}.log", external_url=ext,
            )
        for name, spec in self.topology.services.items():
            for inst in spec.instances(name):
                port = entry_port if (entry_port and name == self.topology.entry) else free_port()
                kind = "app" if spec.app else "run"
                self.procs[inst] = Proc(inst, name, spec, kind, port, self.log_dir / f"{inst}.log")
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
        if proc.spec.app:
            proc.argv = [
                sys.executable, "-m", "uvicorn", "--factory", proc.spec.app,
                "--host", "127.0.0.1", "--port", str(proc.port),
                "--no-access-log", "--timeout-graceful-shutdown", str(int(self.grace)),
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for level in self.topology.order():
            members = [p for n in level for p in self.procs.values() if p.service == n]
            for proc in members:
                self._spawn(proc)
            self._await_ready(members)

    def _spawn(self, proc: Proc) -> None:
        if proc.external_url:
            return
        env = {**os.environ, **proc.env}
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
        if proc.external_url:
            return redis_ping(proc.url)
        assert proc.popen is not None
        code = proc.popen.poll()
        if proc.oneshot:
            if code is None:
                return False
            if code == 0:
                return True
            raise StackError(self._failure(proc, f"exited with code {code}"))
        if code is not None:
            raise StackError(self._failure(proc, f"exited with code {code} before it was ready"))
        if proc.kind == "redis":
            return redis_ping(proc.url, timeout=0.2)
        assert proc.spec is not None
        if proc.spec.ready:
            try:
                return client.get(proc.url + proc.spec.ready).status_code == 200
            except httpx.HTTPError:
                return False
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
                waiting = [p for p in waiting if not self._is_ready(p, client)]
                if not waiting:
                    return
                if time.monotonic() > deadline:
                    names = ", ".join(p.name for p in waiting)
                    raise StackError(
                        f"not ready after {self.ready_timeout:.0f}s: {names}\n"
                        + "\n".join(self._failure(p, "was not ready") for p in waiting)
                    )
                time.sleep(POLL_S)

    def _failure(self, proc: Proc, what: str) -> str:
        return f"service {proc.name} {what}; last lines of {proc.log_path}:\n{proc.tail()}"

    def stop(self) -> None:
        """Tear everything down in reverse start order (SIGTERM, grace, SIGKILL)."""
        for name in reversed(self.started):
            self._terminate(self.procs[name])
        self.started.clear()

    def _terminate(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        popen = proc.popen
        if popen is None:
            return
        if popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=self.grace)
        # the group may hold children (e.g. worker pools) even after the leader exited
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=self.grace)

    # -- single services, for tests and demos --------------------------------------------------

    def proc(self, name: str) -> Proc:
        if name in self.procs:
            return self.procs[name]
        members = [p for p in self.procs.values() if p.service == name]
        if not members:
            raise KeyError(f"no service or instance {name!r} in {self.topology.name}")
        return members[0]

    def url(self, name: str | None = None) -> str:
        """URL of a service (its first instance) or instance; the entry when name is None."""
        return self.proc(name or self.topology.entry).url

    def urls(self, service: str) -> list[str]:
        return [p.url for p in self.procs.values() if p.service == service]

    def instances(self, service: str) -> list[str]:
        return [p.name for p in self.procs.values() if p.service == service]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to an instance's process group and wait for it to exit."""
        proc = self.proc(name)
        if proc.external_url:
            raise StackError(f"{name} is external (REDIS_URL); it cannot be stopped from here")
        self._terminate(proc, sig)

    def start_instance(self, name: str, env: dict[str, str] | None = None) -> None:
        """(Re)start one instance on its old port, with extra env, and wait until ready."""
        proc = self.proc(name)
        if proc.alive:
            raise StackError(f"{proc.name} is already running")
        if env:
            proc.env = {**proc.env, **env}
        self._spawn(proc)
        self._await_ready([proc])

    def restart(self, name: str, env: dict[str, str] | None = None) -> None:
        self.kill(name, signal.SIGTERM)
        self.start_instance(name, env)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.proc(name).tail(lines)

    def log_tails(self, lines: int = 40) -> dict[str, str]:
        return {name: self.procs[name].tail(lines) for name in self.started}
