"""Probes for container healthchecks: exit 0 when healthy, 1 when not, 2 on a usage error.

`python -m patternkit.probe http://127.0.0.1:8000/ready`: a URL answers 200 (app services).
`python -m patternkit.probe --heartbeat FILE [--max-age S]`: FILE was refreshed within S
seconds (default `patternkit.heartbeat.MAX_AGE_S`): a worker with no port (see
patternkit.heartbeat). Both are used by the rendered compose files; neither imports more
than the standard library, so a check takes milliseconds.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from patternkit import heartbeat

USAGE = "usage: python -m patternkit.probe URL | --heartbeat FILE [--max-age SECONDS]"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def parse_heartbeat(args: list[str]) -> tuple[str, float] | None:
    """(FILE, max age) from `--heartbeat FILE [--max-age S]`, or None if malformed."""
    if len(args) not in (2, 4) or args[0] != "--heartbeat":
        return None
    max_age = heartbeat.MAX_AGE_S
    if len(args) == 4:
        if args[2] != "--max-age":
            return None
        try:
            max_age = float(args[3])
        except ValueError:
            return None
    return args[1], max_age


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--heartbeat":
        parsed = parse_heartbeat(args)
        if parsed is None:
            print(USAGE, file=sys.stderr)
            return 2
        return 0 if heartbeat.is_fresh(*parsed) else 1
    if len(args) != 1 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    return 0 if http_ok(args[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
