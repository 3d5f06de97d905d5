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
import time

import httpx

from patternkit import logs

log = logging.getLogger("batch_training.trainer")


def main() -> int:
    logs.configure(service="trainer")
    timeout = float(os.environ.get("BOOT_TIMEOUT_S", "120"))
    with httpx.Client(base_url=os.environ["API_URL"], timeout=10) as client:
        if client.get("/models").json()["latest"]:
            log.info("a model is registered already: no boot run")
            return 0
        run = client.post("/jobs", json={}).raise_for_status().json()
        deadline = time.monotonic() + timeout
        while (view := client.get(run["job_url"]).json())["status"] in ("pending", "running"):
            if time.monotonic() > deadline:
                log.error("boot run %s did not finish in %.0f s", run["job_id"], timeout)
                return 1
            time.sleep(0.2)
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
