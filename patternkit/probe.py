"""A readiness probe for container healthchecks: exit 0 when a URL answers 200.

`python -m patternkit.probe http://127.0.0.1:8000/ready` (used by the rendered compose files).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m patternkit.probe URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(args[0], timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
