"""Talking to a running stack from a second terminal: the server behind `patternkit ctl`.

`make run` opens a control port on 127.0.0.1 and writes `control.json` (pattern, pid, port,
a token) into its run directory; `python -m patternkit ctl` finds the running stacks by those
files and sends one JSON line per command: status, stop, start, restart (with settings),
kill, pause, resume. Each command calls the same `Stack` method a test calls, so what a user
does by hand is what the tests prove. The token keeps other local users' processes out.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import socketserver
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from patternkit.topology.runner import Stack, StackError

CONTROL_FILE = "control.json"
VERBS = ("status", "stop", "start", "restart", "kill", "pause", "resume")
NEEDS_SERVICE = frozenset(VERBS) - {"status"}
DONE = {"stop": "stopped", "start": "started", "restart": "restarted", "kill": "killed",
        "pause": "paused", "resume": "resumed"}


def handle(stack: Stack, request: dict[str, Any]) -> dict[str, Any]:
    """Carry out one control request; the reply says ok or the error, and the new status."""
    verb = request.get("verb")
    service = str(request.get("service") or "")
    env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
    try:
        if verb not in VERBS:
            raise StackError(f"unknown command {verb!r}; use one of: {', '.join(VERBS)}")
        if verb in NEEDS_SERVICE and not service:
            raise StackError(f"`{verb}` needs a service name")
        if env and verb not in ("start", "restart"):
            raise StackError("--set goes with start or restart")
        if verb == "stop":
            stack.stop_service(service)
        elif verb == "start":
            stack.start_service(service, env)
        elif verb == "restart":
            stack.restart(service, env)
        elif verb == "kill":
            stack.kill(service)
        elif verb == "pause":
            stack.pause(service)
        elif verb == "resume":
            stack.resume(service)
    except StackError as exc:
        return {"ok": False, "error": str(exc), "status": _status(stack)}
    message = f"{service}: {DONE[verb]}" if verb in DONE else None
    return {"ok": True, "message": message, "status": _status(stack)}


def _status(stack: Stack) -> list[dict[str, Any]]:
    return [asdict(s) for s in stack.status()]


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(1 << 16)
        try:
            request = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "error": "not a JSON line"}
        else:
            if not isinstance(request, dict) or request.get("token") != self.server.token:
                reply = {"ok": False, "error": "wrong or missing token"}
            else:
                reply = handle(self.server.stack, request)
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, stack: Stack, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stack = stack
        self.token = token


class ControlServer:
    """Serve control requests for `stack` while the block runs (a context manager)."""

    def __init__(self, stack: Stack, pattern: Path) -> None:
        self.stack = stack
        self.pattern = pattern
        self.path = stack.run_dir / CONTROL_FILE
        self._server: _Server | None = None

    def __enter__(self) -> ControlServer:
        token = secrets.token_hex(16)
        self._server = _Server(self.stack, token)
        threading.Thread(target=self._server.serve_forever, name="control", daemon=True).start()
        info = {"pattern": self.stack.topology.name, "folder": str(self.pattern),
                "pid": os.getpid(), "port": self._server.server_address[1], "token": token,
                "run_dir": str(self.stack.run_dir)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(info, out)
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stacks(runs_dir: Path) -> list[dict[str, Any]]:
    """The stacks `make run` has up now, newest first (from their control.json files)."""
    found = []
    for path in runs_dir.glob(f"*/{CONTROL_FILE}"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and _alive(int(info.get("pid", 0))):
            found.append({**info, "mtime": path.stat().st_mtime})
    return sorted(found, key=lambda i: i["mtime"], reverse=True)


def send(info: dict[str, Any], request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request to a running stack's control port; its JSON reply."""
    with socket.create_connection(("127.0.0.1", int(info["port"])), timeout=timeout) as sock:
        sock.sendall(json.dumps({**request, "token": info["token"]}).encode() + b"\n")
        with sock.makefile("rb") as reply:
            line = reply.readline()
    if not line:
        raise StackError("the stack closed the control connection without answering")
    answer: dict[str, Any] = json.loads(line)
    return answer
