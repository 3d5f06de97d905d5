"""The boot search of T3: a one-shot that asks the search API for one search and publishes
its registered best model where the predictor loads it.

It posts `BOOT_SEARCH` (JSON; a families search by default), waits for the workers to
finish it, then copies the exported model and manifest (checked against the sha256) to
`OUT`; the predictor starts once this has exited 0. Later searches register their own models
under the run directory; restarting the predictor with another MODEL_PATH serves one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import httpx

from patternkit import logs
from patternkit.models import copy_artifact

log = logging.getLogger("search.trainer")
BOOT_SEARCH = {"space": "families", "strategy": "tpe", "pruner": "halving",
               "max_trials": 8, "time_budget_s": 45, "seed": 42}


def main() -> int:
    logs.configure(service="trainer")
    api, out = os.environ["API_URL"], Path(os.environ["OUT"])
    request = json.loads(os.environ.get("BOOT_SEARCH") or json.dumps(BOOT_SEARCH))
    timeout = float(request.get("time_budget_s", 60)) + 120
    with httpx.Client(base_url=api, timeout=10) as client:
        reply = client.post("/searches", json=request)
        reply.raise_for_status()
        search_id = reply.json()["search_id"]
        log.info("boot search %s started: %s", search_id, request)
        deadline = time.monotonic() + timeout
        while True:
            view = client.get(f"/searches/{search_id}").json()
            if view["status"] in ("succeeded", "failed"):
                break
            if time.monotonic() > deadline:
                log.error("boot search %s did not finish in %.0f s", search_id, timeout)
                return 1
            time.sleep(0.2)
    if view["status"] == "failed":
        log.error("boot search %s failed: %s", search_id, view["error"])
        return 1
    model = view["model"]
    copy_artifact(Path(model["path"]), out)
    log.info("published %s %s (trial %d, %s, held-out accuracy %.4f) to %s", model["name"],
             model["version"], model["trial_number"], model["params"], model["test_accuracy"],
             out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
