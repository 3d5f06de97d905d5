"""Heartbeat files: a process with no port shows it is alive by refreshing a file.

A Celery worker listens on no port, and asking Celery itself (`celery inspect ping`) costs
3-6 s here, longer than a compose healthcheck's timeout. Instead the worker refreshes a file
every `INTERVAL_S` while it consumes (`Heartbeat`, started by a bootstep in patternkit.jobs)
and removes it when it stops; `is_fresh` reads the file's mtime. `python -m patternkit.probe
--heartbeat FILE` (the compose healthcheck) and the local runner's readiness both use it, so
this module imports nothing but the standard library.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import suppress
from pathlib import Path

INTERVAL_S = 1.0  # how often a healthy process refreshes its file
MAX_AGE_S = 5.0  # a file older than this is a process that stopped (or hangs)
ENV_VAR = "HEARTBEAT_FILE"  # where a service is told to write its heartbeat


def beat(path: str | Path) -> None:
    """Refresh the file now (create it, and its folder, on the first beat)."""
    p = Path(path)
    try:
        os.utime(p)
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{os.getpid()}\n")


def clear(path: str | Path) -> None:
    """Remove the file: the process is not (or no longer) healthy."""
    with suppress(FileNotFoundError):
        Path(path).unlink()


def age(path: str | Path) -> float | None:
    """Seconds since the last beat, or None when there is no file."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except OSError:
        return None


def is_fresh(path: str | Path, max_age_s: float = MAX_AGE_S, since: float | None = None) -> bool:
    """Whether the file was refreshed within `max_age_s` (and, with `since`, at or after that
    wall-clock time: a file left by an earlier process does not count)."""
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return False
    if since is not None and mtime < since:
        return False
    return time.time() - mtime <= max_age_s


class Heartbeat:
    """Refresh `path` every `interval_s` from a daemon thread between `start()` and `stop()`.

    A thread, not the worker's event loop: a solo-pool worker runs each task on its loop's
    thread, so a beat scheduled there would miss every beat while a long task runs.
    """

    def __init__(self, path: str | Path, interval_s: float = INTERVAL_S) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        beat(self.path)
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.wait(self.interval_s):
            with suppress(OSError):  # a full or vanished disk: the beats stop, the probe says so
                beat(self.path)

    def stop(self) -> None:
        """Stop beating and remove the file."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)
            self._thread = None
        clear(self.path)
