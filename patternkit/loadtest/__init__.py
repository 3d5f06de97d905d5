"""The load runner shared by the loading test (Q3) and the online-bigsize antipattern (SA1).

A plan file (`plan`) says what to send and which thresholds gate the run; `runner` drives
Locust headless in a closed-loop and an open-loop (constant arrival rate) phase and measures
the server's CPU; `stats` turns every recorded request into exact percentiles; `report`
writes JSON, markdown and a PNG chart; `cli` is `python -m patternkit.loadtest`.
"""

from patternkit.loadtest.plan import LoadPlan, PlanError, Threshold, load_plan
from patternkit.loadtest.report import markdown, phase_row, table, write_chart, write_report
from patternkit.loadtest.runner import (
    LoadTestError,
    compare,
    judge,
    run_locust,
    run_plan,
)

__all__ = [
    "LoadPlan", "LoadTestError", "PlanError", "Threshold", "compare", "judge", "load_plan",
    "markdown", "phase_row", "run_locust", "run_plan", "table", "write_chart", "write_report",
]
