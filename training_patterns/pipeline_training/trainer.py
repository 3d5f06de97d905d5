"""The boot run of T2: a one-shot that writes the DWH table and runs the pipeline once.

It writes iris as `DATA_DIR/iris.csv` (the table gather reads; one row with a missing value
and one with a non-numeric one, which gather drops), posts a run with the default
parameters to the orchestrator and waits for it: the build step registers `iris_pipeline`
1.0.0 in the model repository, which the predictor downloads once this has exited 0.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from pathlib import Path

import httpx

from patternkit import logs
from patternkit.models import load_dataset

log = logging.getLogger("pipeline.trainer")


def write_table(path: Path) -> int:
    """iris as a CSV table with a label column, plus two dirty rows; returns the row count."""
    X, y, features, classes = load_dataset("iris")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([f.replace(" (cm)", "").replace(" ", "_") for f in features] + ["species"])
        for row, label in zip(X.tolist(), y.tolist(), strict=True):
            out.writerow([round(v, 2) for v in row] + [classes[label]])
        out.writerow(["5.0", "", "1.4", "0.2", "setosa"])
        out.writerow(["5.0", "n/a", "1.4", "0.2", "setosa"])
    tmp.replace(path)
    return len(y) + 2


def main() -> int:
    logs.configure(service="trainer")
    api, table = os.environ["API_URL"], Path(os.environ["DATA_DIR"]) / "iris.csv"
    if not table.exists():
        log.info("wrote the DWH table %s (%d rows)", table, write_table(table))
    with httpx.Client(base_url=api, timeout=10) as client:
        reply = client.post("/runs", json={})
        reply.raise_for_status()
        run_id = reply.json()["run_id"]
        log.info("boot run %s started", run_id)
        deadline = time.monotonic() + float(os.environ.get("TIMEOUT_S", "120"))
        while True:
            view = client.get(f"/runs/{run_id}").json()
            if view["state"] != "running":
                break
            if time.monotonic() > deadline:
                log.error("boot run %s did not finish: at %s", run_id, view["current_step"])
                return 1
            time.sleep(0.1)
    for step in view["steps"]:
        log.info("  %-8s %-6s %-4s by %s on queue %s in %ss", step["step"], step["state"],
                 step["cache"], step["worker"], step["queue"], step["duration_s"])
    if view["state"] != "succeeded":
        log.error("boot run %s failed at %s: %s", run_id, view["failed_step"], view["error"])
        return 1
    log.info("boot run %s registered %s", run_id, view["model"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
