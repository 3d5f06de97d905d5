"""The boot run of T1: a one-shot that asks the trainer API for one run and waits for it, so
the repository holds a first version before the predictor starts.

It posts `POST /jobs {}` and polls `GET /jobs/{id}` until the run ends; it exits 0 when the
run succeeded (or a model is registered already: a restarted stack) and 1 otherwise, with the
run's failed step or rejection in the log.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import httpx

from patternkit import logs
from patternkit.client import WaitTimeout, wait_until

log = logging.getLogger("batch_training.trainer")


def main() -> int:
    logs.configure(service="trainer")
    timeout = float(os.environ.get("BOOT_TIMEOUT_S", "120"))
    with httpx.Client(base_url=os.environ["API_URL"], timeout=10) as client:
        if client.get("/models").json()["latest"]:
            log.info("a model is registered already: no boot run")
            return 0
        run = client.post("/jobs", json={}).raise_for_status().json()

        def done() -> dict[str, Any] | None:
            view: dict[str, Any] = client.get(run["job_url"]).json()
            return None if view["status"] in ("pending", "running") else view

        try:
            view = wait_until(done, timeout, interval=0.2, what=f"boot run {run['job_id']}")
        except WaitTimeout as exc:
            log.error("%s", exc)
            return 1
    if view["status"] != "succeeded":
        log.error("boot run %s %s: %s", view["job_id"], view["status"],
                  view["reject_reason"] or f"{view['failed_step']}: {view['error']}")
        return 1
    log.info("boot run %s registered iris_batch %s (accuracy %s; %d rows dropped %s)",
             view["job_id"], view["version"], view["metrics"]["accuracy"],
             view["rows"]["raw"] - view["rows"]["clean"], view["rows"]["dropped"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
