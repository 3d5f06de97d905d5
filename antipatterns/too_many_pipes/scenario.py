"""Demo traffic for TA3: both pipelines with every store up, with the tuning experiment's
cycle, and with each store broken in turn (the web API stopped, the SQLite file moved
away, the CSV file truncated), then the data-access code paths counted from the code.

One row per run: jobs failed, steps run, failed steps, and the steps a user opens to find
the broken one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from patternkit.client import Client
from patternkit.topology import Stack


def row(case: str, pipeline: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    if status != 200:
        return {"case": case, "pipeline": pipeline, "state": f"{status} {body['error']}",
                "jobs_failed": "-", "steps_run": body["details"][0]["steps_executed"],
                "failed_steps": "-", "steps_to_find": "-",
                "first_error": body["message"][:80]}
    found = body["steps_to_find"]
    errors = [s["error"] for s in body["steps"] if s["state"] == "failed"]
    return {"case": case, "pipeline": pipeline, "state": body["state"],
            "jobs_failed": body["jobs_failed"], "steps_run": body["steps_executed"],
            "failed_steps": ",".join(body["failed_steps"]) or "-",
            "steps_to_find": found["steps"] if found else "-",
            "first_error": (errors[0] if errors else "")[:80]}


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    stores = Path(stack.run_dir) / "stores"
    db, table = stores / "iris.db", stores / "iris.csv"
    csv_text = table.read_text()

    def break_webapi() -> Callable[[], None]:
        stack.stop_service("webapi")
        return lambda: stack.start_service("webapi")

    def break_sqlite() -> Callable[[], None]:
        db.rename(db.with_suffix(".aside"))

        def undo() -> None:
            db.unlink(missing_ok=True)
            db.with_suffix(".aside").rename(db)
        return undo

    def break_csv() -> Callable[[], None]:
        table.write_text(csv_text.splitlines()[0] + "\n")  # the header, no rows
        return lambda: table.write_text(csv_text) and None

    rows: list[dict[str, Any]] = []
    with Client(stack.url(), timeout=60) as api:
        def both(case: str, experiment: bool = False) -> None:
            for pipeline in ("tangled", "clean"):
                resp = api.post("/runs", json={"pipeline": pipeline, "experiment": experiment})
                rows.append(row(case, pipeline, resp.status_code, resp.json()))

        both("every store up")
        both("tuning experiment (a cycle)", experiment=True)
        for name, breaker in (("web API stopped", break_webapi),
                              ("SQLite file moved away", break_sqlite),
                              ("CSV file has no rows", break_csv)):
            undo = breaker()
            try:
                both(name)
            finally:
                undo()
        paths = api.get("/code-paths").json()
        for pipeline in ("tangled", "clean"):
            rows.append({"case": "data-access code paths", "pipeline": pipeline,
                         "state": paths[pipeline]["count"],
                         "first_error": ", ".join(paths[pipeline]["paths"])})
    return rows
