"""Demo traffic for T1: the boot run, an on-demand run, two rejected candidates, a failed
build and its re-kick, a scheduled run, and the predictor swapping to the newest version.

Each row is one run as `GET /jobs/{id}` shows it: trigger, status, the step it failed at or
why it was rejected, its accuracy next to the current model's on the same held-out rows,
the rows dropped by reason and the version it registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patternkit import charts
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


STATUS_COLORS = {"succeeded": charts.COLORS["hit"], "rejected": charts.COLORS["miss"],
                 "failed": charts.COLORS["error"]}


def draw(runs: list[tuple[str, dict[str, Any]]], min_accuracy: float, path: Path
         ) -> Path | None:
    """One bar per run: its accuracy, coloured by outcome, the current model's beside it."""
    def make() -> Any:
        fig, (ax,) = charts.figure("Batch training: every run, its outcome and the bar it met",
                                   (4.2,), width=10.0)
        for i, (_, run) in enumerate(runs):
            metrics = run["metrics"] or {}
            ax.bar(i, metrics.get("accuracy") or 0, color=STATUS_COLORS[run["status"]], width=0.6)
            if metrics.get("current_accuracy") is not None:
                ax.plot([i - 0.35, i + 0.35], [metrics["current_accuracy"]] * 2, color="black",
                        lw=1.2)
            reason = run["reject_reason"] or ""
            text = run["version"] or (f"{run['status']} at {run['failed_step']}"
                                      if run["failed_step"] else
                                      "rejected: under its bar" if "MIN_ACCURACY" in reason
                                      else "rejected: regressed")
            ax.annotate(text, (i, (metrics.get("accuracy") or 0) + 0.005), ha="center",
                        fontsize=8)
        line = ax.axhline(min_accuracy, color=charts.COLORS["muted"], ls="--", lw=1)
        ax.set_xticks(range(len(runs)), [label for label, _ in runs], rotation=20, ha="right",
                      fontsize=8)
        ax.set_ylim(0.75, 1.02)
        ax.set_ylabel("held-out accuracy (black: the current model on the same rows)")
        handles = [charts.pyplot().Rectangle((0, 0), 1, 1, color=c) for c in STATUS_COLORS.values()]
        ax.legend([*handles, line], [*STATUS_COLORS, f"MIN_ACCURACY {min_accuracy}"],
                  loc="lower right", fontsize=8, framealpha=1)
        return fig

    return charts.picture(path, make)


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    out = out or Path(stack.run_dir)
    rows: list[dict[str, Any]] = []
    drawn: list[tuple[str, dict[str, Any]]] = []
    with Client(stack.url()) as client:
        boot = client.get("/jobs", params={"limit": 1}).json()["jobs"][-1]
        rows.append(observed("boot run (trainer one-shot)", boot))
        drawn.append(("boot", boot))
        rows.append({"step": "rows dropped by reason", "why": ", ".join(
            f"{k} {v}" for k, v in boot["rows"]["dropped"].items()),
            "examples": "; ".join(boot["rows"]["examples"].values())})

        def kick(step: str, short: str, body: dict[str, Any]) -> dict[str, Any]:
            job = client.post("/jobs", json=body).json()
            done = finished(client, job["job_id"])
            rows.append(observed(step, done))
            drawn.append((short, done))
            return done

        kick("POST /jobs {}", "on demand", {})
        kick("POST /jobs min_accuracy=0.999", "bar 0.999", {"min_accuracy": 0.999})
        kick("POST /jobs C=0.01 (a weak candidate)", "C=0.01",
             {"params": {"C": 0.01}, "min_accuracy": 0.5})
        failed = kick("POST /jobs fail_step=build", "build fails", {"fail_step": "build"})
        client.post(f"/jobs/{failed['job_id']}/rerun").raise_for_status()
        rekicked = finished(client, failed["job_id"])
        rows.append(observed("POST /jobs/{id}/rerun", rekicked))
        drawn.append(("re-kicked", rekicked))

        stack.restart("scheduler", env={"SCHEDULE_INTERVAL_S": str(DEMO_INTERVAL_S)})

        def scheduled() -> dict[str, Any] | None:
            jobs = client.get("/jobs", params={"limit": 50}).json()["jobs"]
            done = [j for j in jobs if j["triggered_by"] == "schedule"
                    and j["status"] in store.FINISHED]
            return done[0] if done else None

        timed = wait_until(scheduled, 30, interval=0.2, what="a scheduled run")
        rows.append(observed(f"schedule every {DEMO_INTERVAL_S:g} s", timed))
        drawn.append(("scheduled", timed))
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
    picture = draw(drawn, 0.9, out / "batch_training_runs.png")
    if picture is not None:
        rows.append({"step": "picture", "why": str(picture)})
    return rows
