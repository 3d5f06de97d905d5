"""The loading test's command line: the shared load runner with this pattern's plan.

    python -m qa_patterns.loading_test.loadtest --target URL [--slo slo.toml] [--out DIR]

Runs the plan's closed-loop and open-loop phases with Locust against URL, prints the table and
the SLO gate's verdict, writes report.json, report.md and report.png, and exits 0 (pass), 99
(a threshold failed), 2 (bad plan file) or 1 (the load could not run). See
`patternkit.loadtest`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from patternkit.loadtest.cli import main as run

PLAN = Path(__file__).with_name("slo.toml")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--slo" or a.startswith("--slo=") for a in args):
        args += ["--slo", str(PLAN)]
    return run(args, prog="python -m qa_patterns.loading_test.loadtest")


if __name__ == "__main__":
    sys.exit(main())
