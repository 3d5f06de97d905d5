"""T1 integration tests: the real trainer API, Redis, a Celery worker and beat, the SQLite
DWH and runs table, the model repository and the template predictor loading from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from patternkit.client import Client, wait_until
from patternkit.db import make_engine
from patternkit.models import OnnxModel
from patternkit.topology import Stack
from training_patterns.batch_training import dwh, store, train

ALL_DROPPED = {"missing": 3, "not_a_number": 3, "negative": 2, "out_of_range": 2,
               "unknown_label": 2}


@pytest.fixture
def api(stack: Stack) -> Iterator[Client]:
    with Client(stack.url()) as client:
        yield client


def start(api: Client, **body: Any) -> str:
    resp = api.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == resp.json()["job_url"]
    job_id: str = resp.json()["job_id"]
    return job_id


def finished(api: Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
        return body if body["status"] in store.FINISHED else None

    return wait_until(check, timeout, interval=0.1, what=f"run {job_id}")


def versions(api: Client) -> list[str]:
    return [v["version"] for v in api.get("/models").json()["versions"]]


def published(stack: Stack) -> list[str]:
    folder = Path(stack.run_dir) / "repository" / train.MODEL_NAME
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_triggered_run_registers_a_version_the_predictor_serves(
    stack: Stack, api: Client
) -> None:
    before = versions(api)
    run = finished(api, start(api))
    assert run["status"] == "succeeded", run
    assert run["failed_step"] is None and run["error"] is None
    assert run["version"] not in before and versions(api)[0] == run["version"]
    assert run["metrics"]["accuracy"] >= 0.9
    assert run["metrics"]["current_version"] == before[0]  # compared with the one it replaces
    assert set(run["timings"]) == set(train.STEPS)

    model = api.get("/models").json()["versions"][0]
    assert model["job_id"] == run["job_id"] and model["metrics"] == run["metrics"]
    prov = model["provenance"]
    assert prov["data"]["data_hash"] == run["data_hash"] and prov["seed"] == 0
    assert prov["git_sha"] and len(prov["code_sha256"]) == 64

    with Client(stack.url("predictor")) as predictor:
        resp = predictor.post("/admin/load", json={"version": run["version"]})
        assert resp.status_code == 200, resp.text
        rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
        reply = predictor.post("/predict", json={"data": rows}).json()
    assert (reply["model"], reply["version"]) == (train.MODEL_NAME, run["version"])
    local = OnnxModel(Path(stack.run_dir) / "repository" / train.MODEL_NAME / run["version"])
    assert reply["prediction"] == local.predict(np.asarray(rows, np.float32)).labels.tolist()
    assert reply["prediction"] == [0, 2]


def test_dirty_rows_are_counted_by_reason_and_dropped(stack: Stack, api: Client) -> None:
    run = finished(api, start(api))
    assert run["status"] == "succeeded"
    assert run["rows"]["dropped"] == ALL_DROPPED
    assert (run["rows"]["raw"], run["rows"]["clean"]) == (162, 150)
    assert "five" in run["rows"]["examples"]["not_a_number"]
    # the same count straight from the runs table
    engine = make_engine(stack.url("db"))
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(store.RUNS.c.dropped, store.RUNS.c.raw_rows)
                               .where(store.RUNS.c.id == run["job_id"])).one()
            raw = dwh.count(conn)
    finally:
        engine.dispose()
    assert row.dropped == ALL_DROPPED and row.raw_rows == raw == 162


def test_under_min_accuracy_the_run_is_rejected_and_nothing_is_registered(
    stack: Stack, api: Client
) -> None:
    before, files = versions(api), published(stack)
    run = finished(api, start(api, min_accuracy=0.999))
    assert run["status"] == "rejected", run
    assert "MIN_ACCURACY 0.999" in run["reject_reason"]
    assert run["version"] is None and "build" not in run["timings"]
    assert versions(api) == before and published(stack) == files


def test_a_candidate_worse_than_the_current_model_by_more_than_the_margin_is_rejected(
    stack: Stack, api: Client
) -> None:
    before, files = versions(api), published(stack)
    # heavy regularisation: above a lowered bar, far below the current model
    run = finished(api, start(api, params={"C": 0.01}, min_accuracy=0.5))
    assert run["status"] == "rejected", run
    metrics = run["metrics"]
    assert metrics["accuracy"] < metrics["current_accuracy"] - 0.02
    assert f"below the current model {before[0]}" in run["reject_reason"]
    assert versions(api) == before and published(stack) == files


def test_a_failed_build_records_its_step_and_a_rekick_succeeds(api: Client) -> None:
    before = versions(api)
    job_id = start(api, fail_step="build")
    run = finished(api, job_id)
    assert (run["status"], run["failed_step"], run["attempts"]) == ("failed", "build", 1)
    assert "injected failure at build" in run["error"]
    assert {"gather", "validate", "train", "evaluate"} <= set(run["timings"])
    assert versions(api) == before

    resp = api.post(f"/jobs/{job_id}/rerun")
    assert resp.status_code == 202, resp.text
    again = finished(api, job_id)
    assert (again["status"], again["attempts"], again["kicks"]) == ("succeeded", 2, 1)
    assert again["failed_step"] is None and again["version"] not in before
    assert versions(api)[0] == again["version"]
    resp = api.post(f"/jobs/{job_id}/rerun")
    assert resp.status_code == 409 and resp.json()["error"] == "not_failed"


def test_bad_requests_are_named_errors(api: Client) -> None:
    resp = api.post("/jobs", json={"params": {"C": -1}})
    assert resp.status_code == 422 and "params.C" in resp.text
    resp = api.post("/jobs", json={"fail_step": "deploy"})
    assert resp.status_code == 422 and "fail_step" in resp.text
    resp = api.post("/jobs", json={"epochs": 3})
    assert resp.status_code == 422 and "epochs" in resp.text
    resp = api.get("/jobs/nope")
    assert resp.status_code == 404 and resp.json()["error"] == "job_not_found"
    assert api.post("/jobs/nope/rerun").status_code == 404


def test_the_schedule_fires_runs(stack: Stack, api: Client) -> None:
    interval = 2.0
    stack.restart("scheduler", env={"SCHEDULE_INTERVAL_S": str(interval)})
    try:
        def scheduled() -> dict[str, Any] | None:
            jobs = api.get("/jobs", params={"limit": 50}).json()["jobs"]
            done = [j for j in jobs if j["triggered_by"] == "schedule"
                    and j["status"] in store.FINISHED]
            return done[0] if done else None

        run = wait_until(scheduled, 3 * interval + 30, interval=0.2, what="a scheduled run")
    finally:
        stack.restart("scheduler", env={"SCHEDULE_INTERVAL_S": "86400"})
    assert run["status"] == "succeeded", run
    assert run["version"] in versions(api)


def test_a_run_whose_worker_dies_mid_train_is_taken_over_by_its_redelivery(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack(env={"worker": {"DELAY_MS": "1500", "VISIBILITY_TIMEOUT_S": "4",
                                        "STALE_AFTER_S": "2.5"}})
    with Client(stack.url()) as api:
        job_id = start(api)
        wait_until(lambda: api.get(f"/jobs/{job_id}").json()["step"] == "train", 15,
                   what="the run training")
        stack.kill("worker")  # SIGKILL mid-step: the message is never acked
        run = api.get(f"/jobs/{job_id}").json()
        assert (run["status"], run["step"], run["attempts"]) == ("running", "train", 1)
        assert api.post(f"/jobs/{job_id}/rerun").status_code == 409  # it has not failed
        stack.start_service("worker")
        done = finished(api, job_id, timeout=40)
    assert (done["status"], done["attempts"], done["kicks"]) == ("succeeded", 2, 0)
    assert done["version"] == "1.0.1"  # after the boot run's 1.0.0: published once


def test_the_demo_draws_every_run(tmp_path: Path) -> None:
    from patternkit.testing import check_picture
    from training_patterns.batch_training.scenario import draw

    def run(status: str, accuracy: float, **extra: Any) -> dict[str, Any]:
        return {"status": status, "metrics": {"accuracy": accuracy, "current_accuracy": 0.97},
                "version": extra.get("version"), "failed_step": extra.get("failed_step"),
                "reject_reason": extra.get("reject_reason")}

    runs = [("boot", run("succeeded", 0.97, version="1.0.0")),
            ("weak", run("rejected", 0.82, reject_reason="more than MAX_REGRESSION")),
            ("fails", run("failed", 0.97, failed_step="build"))]
    path = draw(runs, 0.9, tmp_path / "runs.png")
    assert path is not None
    check_picture(path)
