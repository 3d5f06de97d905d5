"""The load-test command line: run a plan against a URL, write the report, gate the exit code.

    python -m patternkit.loadtest --target URL --slo plan.toml --out DIR [--pid PID ...]

It prints the summary table and each threshold's verdict, writes `report.json`, `report.md`
and `report.png` to DIR, and exits 0 when every threshold holds, 99 when one fails (k6's
code for failed thresholds), 2 for a bad plan file and 1 when the load could not be run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from patternkit.loadtest.plan import PlanError, load_plan
from patternkit.loadtest.report import checks_table, phase_row, table, write_report
from patternkit.loadtest.runner import LoadTestError, run_plan

EXIT_PASS, EXIT_ERROR, EXIT_USAGE, EXIT_SLO_FAILED = 0, 1, 2, 99


def main(argv: list[str] | None = None, prog: str = "python -m patternkit.loadtest") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--slo", required=True, type=Path,
                        help="plan and SLO gate file (TOML: [request] [closed] [open] "
                             "[batch] [thresholds])")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.json, report.md, report.png "
                             "(default: a temporary folder, printed)")
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="a server process to measure CPU per request of (repeatable)")
    parser.add_argument("--label", default="", help="a name for this run in the report")
    parser.add_argument("--no-chart", action="store_true", help="skip report.png")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.slo)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = args.out or Path(tempfile.mkdtemp(prefix="loadtest-"))
    print(f"load test of {args.target}: phases {', '.join(plan.phases)} "
          f"({' + '.join(f'{getattr(plan, p).seconds}s' for p in plan.phases)})", flush=True)
    try:
        report = run_plan(args.target, plan, out, pids=args.pid, label=args.label)
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    paths = write_report(report, out, chart=not args.no_chart)
    print(table([phase_row(report, p) for p in plan.phases]))
    print()
    print(checks_table(report))
    verdict = "PASS" if report["slo_pass"] else "FAIL"
    print(f"\nSLO gate: {verdict}; report: {', '.join(str(p) for p in paths.values())}")
    return EXIT_PASS if report["slo_pass"] else EXIT_SLO_FAILED


if __name__ == "__main__":
    sys.exit(main())
