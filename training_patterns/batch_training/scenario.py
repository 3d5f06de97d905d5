"""Demo traffic for T1: the boot run, an on-demand run, two rejected candidates, a failed
build and its re-kick, a scheduled run, and the predictor swapping to the newest version.

Each row is one run as `GET /jobs/{id}` shows it: trigger, status, the step it failed at or
why it was rejected, its accuracy next to the current model's on the same held-out rows,
the rows dropped by reason and the version it registered.
"""

from __future__ import annotations

from typing import Any

from patternkit.client import Client, wait_until
from patternkit.topology import Stack
from training_patterns.batch_training import store

DEMO_INTERVAL_S = 2.0  # the topology says daily; the demo speeds the scheduler up


def finished(client: Client, job_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return body if body["status"] in store.FINISHED else None

    return wait_until(check, 60, interval=0.1, what=f"run {job_id}")


def observed(step: str, run: dict[str, Any]) -> dict[str, Any]:
    metrics = run["metrics"] or {}
    return {
        "step": step,
        "run": run["job_id"][:8],
        "trigger": run["triggered_by"],
        "status": run["status"],
        "why": run["reject_reason"] or (f"{run['failed_step']}: {run['error']}"
                                        if run["failed_step"] else ""),
        "accuracy": metrics.get("accuracy"),
        "current": f"{metrics.get('current_version')} {metrics.get('current_accuracy')}"
        if metrics.get("current_version") else "-",
        "dropped": sum((run["rows"]["dropped"] or {}).values()),
        "version": run["version"] or "-",
        "attempts": run["attempts"],
    }


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Client(stack.url()) as client:
        boot = client.get("/jobs", params={"limit": 1}).json()["jobs"][-1]
        rows.append(observed("boot run (trainer one-shot)", boot))
        rows.append({"step": "rows dropped by reason", "why": ", ".join(
            f"{k} {v}" for k, v in boot["rows"]["dropped"].items()),
            "examples": "; ".join(boot["rows"]["examples"].values())})

        def kick(step: str, body: dict[str, Any]) -> dict[str, Any]:
            job = client.post("/jobs", json=body).json()
            done = finished(client, job["job_id"])
            rows.append(observed(step, done))
            return done

        kick("POST /jobs {}", {})
        kick("POST /jobs min_accuracy=0.999", {"min_accuracy": 0.999})
        kick("POST /jobs C=0.01 (a weak candidate)", {"params": {"C": 0.01}, "min_accuracy": 0.5})
        failed = kick("POST /jobs fail_step=build", {"fail_step": "build"})
        client.post(f"/jobs/{failed['job_id']}/rerun").raise_for_status()
        rows.append(observed("POST /jobs/{id}/rerun", finished(client, failed["job_id"])))

        stack.restart("scheduler", env={"SCHEDULE_INTERVAL_S": str(DEMO_INTERVAL_S)})

        def scheduled() -> dict[str, Any] | None:
            jobs = client.get("/jobs", params={"limit": 50}).json()["jobs"]
            done = [j for j in jobs if j["triggered_by"] == "schedule"
                    and j["status"] in store.FINISHED]
            return done[0] if done else None

        rows.append(observed(f"schedule every {DEMO_INTERVAL_S:g} s",
                             wait_until(scheduled, 30, interval=0.2, what="a scheduled run")))
        stack.restart("scheduler", env={"SCHEDULE_INTERVAL_S": "86400"})

        models = client.get("/models").json()
        rows.append({"step": "GET /models", "why": ", ".join([
            f"{v['version']} {v['metrics']['accuracy']} ({v['triggered_by']})"
            for v in models["versions"]])})
    with Client(stack.url("predictor")) as predictor:
        swap = predictor.post("/admin/load", json={"version": "latest"}).json()
        reply = predictor.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2],
                                                          [6.7, 3.0, 5.2, 2.3]]}).json()
        rows.append({"step": "predictor: POST /admin/load latest", "status": swap["status"],
                     "why": f"from {swap.get('previous')}; predicts {reply['prediction']}",
                     "version": reply["version"]})
    return rows
