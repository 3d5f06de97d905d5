"""Start-up gates for Kubernetes, where nothing orders start-up: what compose's `depends_on` did.

`python -m patternkit.gate wait --tcp redis:6379 --http http://predictor:8000/ready --file
/data/.done/trainer --timeout 900` (an init container) returns 0 once every TCP port accepts,
every URL answers 200 and every file exists, 1 at the deadline. `python -m patternkit.gate done
/data/.done/trainer -- CMD...` (a Job's command) runs CMD and writes the file only when it
exits 0, so the waiters of a one-shot learn it *completed*, not merely started. Standard
library only: a gate costs milliseconds in the project image.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

POLL_S = 1.0
USAGE = (
    "usage: python -m patternkit.gate wait [--tcp HOST:PORT] [--http URL] [--file PATH] "
    "[--timeout S] | done FILE -- CMD [ARG...]"
)


def tcp_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pending(tcp: list[str], http: list[str], files: list[str]) -> list[str]:
    """What is not there yet, named as the user wrote it."""
    waiting = [f"tcp {a}" for a in tcp if not tcp_open(a)]
    waiting += [f"http {u}" for u in http if not http_ok(u)]
    waiting += [f"file {f}" for f in files if not Path(f).exists()]
    return waiting


def wait(tcp: list[str], http: list[str], files: list[str], timeout_s: float,
         poll_s: float = POLL_S) -> list[str]:
    """Poll until everything is there (returns []) or the deadline (returns what is missing)."""
    deadline = time.monotonic() + timeout_s
    last: list[str] = []
    while True:
        missing = pending(tcp, http, files)
        if not missing:
            return []
        if missing != last:
            print(f"gate: waiting for {', '.join(missing)}", flush=True)
            last = missing
        if time.monotonic() >= deadline:
            return missing
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def done(marker: str, argv: list[str]) -> int:
    """Run `argv`; on exit 0 write `marker` (cleared first, so a rerun makes waiters wait)."""
    path = Path(marker)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    child = subprocess.Popen(argv)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    if code == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{time.time():.0f}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["done"]:
        if len(args) < 4 or args[2] != "--":
            print(USAGE, file=sys.stderr)
            return 2
        return done(args[1], args[3:])
    if args[:1] != ["wait"]:
        print(USAGE, file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m patternkit.gate wait", usage=USAGE)
    parser.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT")
    parser.add_argument("--http", action="append", default=[], metavar="URL")
    parser.add_argument("--file", action="append", default=[], metavar="PATH")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS")
    opts = parser.parse_args(args[1:])
    missing = wait(opts.tcp, opts.http, opts.file, opts.timeout)
    if missing:
        print(f"gate: gave up after {opts.timeout:g}s waiting for {', '.join(missing)}",
              file=sys.stderr, flush=True)
        return 1
    print("gate: open", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
