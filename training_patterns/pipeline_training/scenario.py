"""Demo traffic for T2: the boot run, an unchanged run restored from the cache, a failure in
train and its retry, evaluate re-run alone, changed prep parameters, and a DWH table edited
while gather reads it.

Each row is one run as `GET /runs/{id}` shows it: its state, where it failed, and per step
whether it ran or was restored and how often it executed in that run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patternkit.client import Client, wait_until
from patternkit.topology import Stack
from training_patterns.pipeline_training.pictures import timelines

STEPS = ("gather", "prep", "train", "evaluate", "build")


def settled(api: Client, run_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/runs/{run_id}").json()
        return body if body["state"] != "running" else None

    return wait_until(check, 60, interval=0.05, what=f"run {run_id}")


def row(what: str, view: dict[str, Any]) -> dict[str, Any]:
    def short(value: str | None) -> str:
        return "-" if value is None else value

    return {
        "what": what,
        "run": view["run_id"][:8],
        "state": view["state"] + (f" at {view['failed_step']}" if view["failed_step"] else ""),
        "cache": " ".join(short(view["cache"][s]) for s in STEPS),
        "executions": " ".join(f"{s}={view['executions'][s]}" for s in STEPS),
        "model": view["model"]["version"] if view.get("model") else "-",
        "took_s": view["took_s"],
        "error": (view["error"] or "")[:90],
    }


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    dwh = Path(stack.run_dir) / "dwh"
    with Client(stack.url()) as api:
        def start(**body: Any) -> str:
            resp = api.post("/runs", json=body)
            resp.raise_for_status()
            return str(resp.json()["run_id"])

        boot = api.get("/runs", params={"limit": 200}).json()["runs"][-1]["run_id"]
        rows.append(row("boot run (trainer)", api.get(f"/runs/{boot}").json()))
        again = settled(api, start())
        rows.append(row("same request again", again))

        header, *lines = (dwh / "iris.csv").read_text().splitlines()
        (dwh / "iris_v2.csv").write_text("\n".join([header, *lines[::-1]]) + "\n")
        params = {"gather": {"source": "iris_v2.csv"}}
        failed = settled(api, start(params=params, faults={"train": {"fail_times": 1}}))
        rows.append(row("new table, train fails once", failed))
        api.post(f"/runs/{failed['run_id']}/retry").raise_for_status()
        rows.append(row("  retry: resumes at train", settled(api, failed["run_id"])))
        api.post(f"/runs/{failed['run_id']}/steps/evaluate").raise_for_status()
        rows.append(row("  evaluate re-run alone", settled(api, failed["run_id"])))

        changed = {**params, "prep": {"test_size": 0.25}}
        rows.append(row("prep.test_size 0.3 -> 0.25", settled(api, start(params=changed))))
        rows.append(row("gather marked always-run", settled(
            api, start(params=changed, always_run=["gather"]))))

        run_id = start(params=params, always_run=["gather"],
                       faults={"gather": {"delay_ms": 1500}})
        def gather_running() -> bool:
            gather = api.get(f"/runs/{run_id}").json()["steps"][0]
            return gather["state"] == "running" and gather["inputs"] is not None

        wait_until(gather_running, 20, interval=0.02, what="gather running on its inputs")
        (dwh / "iris_v2.csv").write_text("\n".join([header, *lines[::-1][:100]]) + "\n")
        edited = settled(api, run_id)
        rows.append(row("table edited while gather runs", edited))
        api.post(f"/runs/{run_id}/retry").raise_for_status()
        rows.append(row("  retry on the new table", settled(api, run_id)))
        drawn = []
        for title, rid in (("boot run: every step ran", boot),
                           ("the same request again: every step restored", again["run_id"]),
                           ("new table: train failed, retried, then evaluate re-run alone",
                            failed["run_id"]),
                           ("table edited while gather ran: failed, retried on the new table",
                            run_id)):
            drawn.append((title, api.get(f"/runs/{rid}").json(),
                          api.get(f"/runs/{rid}/executions").json()["executions"]))
        picture = timelines(drawn, (out or Path(stack.run_dir)) / "pipeline_runs.png")
        totals = api.get("/steps").json()["executions"]
        rows.append({"what": "all runs: executions ran/restored/failed", "run": "-",
                     "executions": " ".join(
                         f"{s}={totals[s]['ran']}/{totals[s]['restored']}/{totals[s]['failed']}"
                         for s in STEPS)})
    if picture is not None:
        rows.append({"what": "picture", "run": str(picture)})
    return rows
