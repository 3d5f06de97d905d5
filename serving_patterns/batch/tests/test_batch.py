"""S4 integration tests: the real job API, Redis, Celery worker and beat, over HTTP and the DWH."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.db import make_engine
from patternkit.jobs import make_celery
from patternkit.models import OnnxModel
from patternkit.topology import Stack
from serving_patterns.batch.dwh import RESULT
from serving_patterns.batch.scenario import listening_ports
from serving_patterns.batch.worker import CHUNK_TASK, PLAN_TASK, QUEUE

FINISHED = ("succeeded", "partial", "failed")


@pytest.fixture
def api(stack: Stack) -> Iterator[Client]:
    with Client(stack.url()) as client:
        yield client


def iris_like(n: int, seed: int) -> list[list[float]]:
    """`n` rows inside the iris feature ranges, one decimal like the dataset."""
    rng = np.random.default_rng(seed)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    return np.round(rng.uniform(low, high, size=(n, 4)), 1).tolist()


def add_rows(api: Client, rows: list[list[float]] | str) -> list[int]:
    if isinstance(rows, str):  # JSON text, for NaN and Infinity literals
        resp = api.post("/rows", content=rows, headers={"content-type": "application/json"})
    else:
        resp = api.post("/rows", json={"rows": rows})
    assert resp.status_code == 201, resp.text
    ids: list[int] = resp.json()["ids"]
    return ids


def start_job(api: Client, path: str = "/jobs") -> str:
    resp = api.post(path)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "pending"
    assert resp.headers["location"] == body["job_url"] == f"/jobs/{body['job_id']}"
    job_id: str = body["job_id"]
    return job_id


def finished(api: Client, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        resp = api.get(f"/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body if body["status"] in FINISHED else None

    return wait_until(check, timeout, interval=0.1, what=f"job {job_id} finishing")


def results(stack: Stack, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The result table as any consumer reads it: straight from the DWH."""
    engine = make_engine(stack.url("db"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(RESULT).where(RESULT.c.input_id.in_(ids))).mappings()
            return {row["input_id"]: dict(row) for row in rows}
    finally:
        engine.dispose()


def test_500_rows_end_succeeded_with_the_offline_onnx_predictions(
    stack: Stack, api: Client
) -> None:
    rows = iris_like(500, seed=4)
    ids = add_rows(api, rows)
    assert len(ids) == 500
    job_id = start_job(api)
    job = finished(api, job_id)
    assert job["status"] == "succeeded", job
    assert (job["total"], job["processed"], job["predicted"], job["failed"]) == (500, 500, 500, 0)
    assert job["failed_ids"] == []
    assert job["chunks"] == {"total": 5, "done": 5, "attempts": 5}  # CHUNK_SIZE=100
    assert (job["triggered_by"], job["scope"]) == ("api", "new")
    assert job["models"] == ["iris_lr 1.0.0"]

    stored = results(stack, ids)
    assert len(stored) == 500
    offline = OnnxModel(Path(stack.run_dir) / "models/iris_lr").predict(
        np.asarray(rows, dtype=np.float32))
    assert [stored[i]["label"] for i in ids] == offline.labels.tolist()
    np.testing.assert_allclose([stored[i]["probabilities"] for i in ids],
                               offline.probabilities, rtol=1e-6)
    assert {stored[i]["job_id"] for i in ids} == {job_id}


def test_nan_rows_make_the_job_partial_and_a_rerun_takes_exactly_the_failed_ids(
    stack: Stack, api: Client
) -> None:
    rows = [list(IRIS_ROWS[i % 3][0]) for i in range(20)]
    text = [",".join(map(repr, row)) for row in rows]
    text[3] = "NaN, 3.5, 1.4, 0.2"
    text[7] = "7.0, null, 4.7, 1.4"
    text[12] = "6.3, 3.3, Infinity, 2.5"
    ids = add_rows(api, '{"rows": [' + ",".join(f"[{t}]" for t in text) + "]}")
    bad = [ids[3], ids[7], ids[12]]

    first = finished(api, start_job(api))
    assert first["status"] == "partial"
    assert (first["total"], first["predicted"], first["failed"]) == (20, 17, 3)
    assert first["failed_ids"] == bad
    reasons = {f["id"]: f["reason"] for f in first["failures"]}
    assert reasons[ids[3]].startswith("f1 is missing")
    assert reasons[ids[7]].startswith("f2 is missing")
    assert reasons[ids[12]].startswith("f3=inf is not a finite")
    row = api.get(f"/rows/{ids[7]}").json()
    assert row["result"] is None
    assert row["failures"][0]["job_id"] == first["job_id"]

    # upstream fixes two of the three rows; the rerun takes exactly the failed ids
    for i in (3, 12):
        resp = api.request("PUT", f"/rows/{ids[i]}", json={"features": rows[i]})
        assert resp.status_code == 200, resp.text
    resp = api.post(f"/jobs/{first['job_id']}/rerun")
    assert resp.status_code == 202, resp.text
    assert (resp.json()["scope"], resp.json()["parent_id"]) == ("failed", first["job_id"])
    rerun = finished(api, resp.json()["job_id"])
    assert rerun["status"] == "partial"
    assert (rerun["total"], rerun["processed"], rerun["predicted"]) == (3, 3, 2)
    assert rerun["failed_ids"] == [ids[7]]
    stored = results(stack, ids)
    assert sorted(stored) == sorted(set(ids) - {ids[7]})
    by_job = {i: r["job_id"] for i, r in stored.items()}
    assert {i for i, j in by_job.items() if j == rerun["job_id"]} == {ids[3], ids[12]}
    assert {i for i, j in by_job.items() if j == first["job_id"]} == set(ids) - set(bad)
    assert [stored[i]["label"] for i in (ids[3], ids[12])] == [IRIS_ROWS[0][1], IRIS_ROWS[0][1]]

    # the last one fixed: a rerun of the rerun succeeds; a succeeded job has nothing to rerun
    api.request("PUT", f"/rows/{ids[7]}", json={"features": rows[7]}).raise_for_status()
    last = finished(api, start_job(api, f"/jobs/{rerun['job_id']}/rerun"))
    assert (last["status"], last["total"], last["failed_ids"]) == ("succeeded", 1, [])
    assert api.get(f"/rows/{ids[7]}").json()["result"]["label"] == IRIS_ROWS[1][1]
    again = api.post(f"/jobs/{last['job_id']}/rerun")
    assert again.status_code == 409
    assert again.json()["error"] == "nothing_to_rerun"
    reruns = api.get("/jobs", params={"triggered_by": "rerun"}).json()["jobs"]
    assert [j["job_id"] for j in reruns[:2]] == [last["job_id"], rerun["job_id"]]


def test_a_chunk_or_plan_delivered_again_writes_nothing_twice(
    stack: Stack, api: Client
) -> None:
    ids = add_rows(api, iris_like(30, seed=5))
    job = finished(api, start_job(api))
    assert job["status"] == "succeeded"
    before = results(stack, ids)

    producer = make_celery(QUEUE, stack.url("redis"))
    try:  # what a lost ack does: the same messages once more
        producer.send_task(CHUNK_TASK, args=[job["job_id"], 0])
        producer.send_task(PLAN_TASK, args=[job["job_id"]])
    finally:
        producer.close()
    add_rows(api, iris_like(1, seed=6))  # one worker, FIFO: once this job is done, so are those
    assert finished(api, start_job(api))["status"] == "succeeded"

    assert api.get(f"/jobs/{job['job_id']}").json() == job  # no new attempt, no new chunk
    assert results(stack, ids) == before  # not rewritten: same predicted_at, one row per id


def test_no_prediction_server_listens_between_jobs(stack: Stack, api: Client) -> None:
    add_rows(api, iris_like(3, seed=7))
    assert finished(api, start_job(api))["status"] == "succeeded"

    apps = [name for name, spec in stack.topology.services.items() if spec.app]
    assert apps == ["api"]  # the only HTTP service is the job manager
    for name in ("worker", "scheduler"):
        [status] = stack.status(name)
        assert status.state == "up" and status.pid is not None, status
        assert listening_ports(status.pid) == set(), f"{name} listens"
    [api_status] = stack.status("api")
    assert api_status.state == "up" and api_status.pid is not None, api_status
    assert listening_ports(api_status.pid) == {stack.proc("api").port}
    assert api.post("/predict", json={"data": [IRIS_ROWS[0][0]]}).status_code == 404
    assert api.get("/metadata").json()["model"] is None


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"rows": [[5.1, 3.5, 1.4]]}, 422, "body.rows.0"),
        ({"rows": [[5.1, 3.5, 1.4, "x"]]}, 422, "body.rows.0.3"),
        ({"rows": [[True, 3.5, 1.4, 0.2]]}, 422, "body.rows.0.0"),
        ({"rows": []}, 422, "body.rows"),
        ({"data": [[5.1, 3.5, 1.4, 0.2]]}, 422, "body.rows"),
        ("{not json", 422, "JSON"),
        ({"rows": [[5.1, 3.5, 1.4, 0.2]] * 10_001}, 413, "MAX_ROWS_PER_POST"),
    ],
)
def test_bad_rows_are_refused_and_nothing_is_stored(
    api: Client, body: object, status: int, names: str
) -> None:
    before = api.get("/summary").json()["rows"]
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    resp = api.post("/rows", headers={"content-type": "application/json"}, **kwargs)
    assert resp.status_code == status, resp.text
    assert names in resp.json()["message"]
    assert api.get("/summary").json()["rows"] == before


def test_unknown_jobs_and_rows_are_404(api: Client) -> None:
    for method, path, error in [
        ("GET", "/jobs/0123456789abcdef", "job_not_found"),
        ("POST", "/jobs/0123456789abcdef/rerun", "job_not_found"),
        ("GET", "/rows/987654321", "row_not_found"),
    ]:
        resp = api.request(method, path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"] == error
    resp = api.request("PUT", "/rows/987654321", json={"features": [5.1, 3.5, 1.4, 0.2]})
    assert (resp.status_code, resp.json()["error"]) == (404, "row_not_found")
    assert api.get("/rows/seven").status_code == 422


@pytest.mark.parametrize("row_id", ["-1", str(2**63), str(2**64), str(10**30)])
def test_row_ids_no_table_can_hold_are_422_naming_the_path(api: Client, row_id: str) -> None:
    for method, body in (("GET", None), ("PUT", {"features": [5.1, 3.5, 1.4, 0.2]})):
        resp = api.request(method, f"/rows/{row_id}", json=body)
        assert resp.status_code == 422, (method, resp.text)
        error = resp.json()
        assert set(error) == {"error", "message", "details", "request_id"}
        assert error["message"].startswith("path.row_id: "), error
    largest = api.get(f"/rows/{2**63 - 1}")
    assert (largest.status_code, largest.json()["error"]) == (404, "row_not_found")


def test_a_correction_with_booleans_is_refused_naming_the_feature(api: Client) -> None:
    [row_id] = add_rows(api, [[5.1, 3.5, 1.4, 0.2]])
    for features, names in (([5.1, True, 1.4, 0.2], "body.features.1"),
                            ([5.1, 3.5, "1.4", 0.2], "body.features.2")):
        resp = api.request("PUT", f"/rows/{row_id}", json={"features": features})
        assert resp.status_code == 422, resp.text
        assert resp.json()["message"].startswith(names + ": "), resp.text
    assert api.get(f"/rows/{row_id}").json()["features"] == [5.1, 3.5, 1.4, 0.2]


def test_scheduled_runs_predict_new_rows_and_policy_none_defers_failed_ones(
    fresh_stack: Callable[..., Stack],
) -> None:
    interval = 2.0
    stack = fresh_stack(env={"scheduler": {"SCHEDULE_INTERVAL_S": str(interval)},
                             "api": {"RETRY_POLICY": "none"},
                             "worker": {"RETRY_POLICY": "none"}})
    with Client(stack.url()) as api:
        rows = iris_like(10, seed=8)
        text = [",".join(map(repr, row)) for row in rows]
        text[4] = "NaN, 3.0, 5.0, 1.8"
        sent = time.monotonic()
        ids = add_rows(api, '{"rows": [' + ",".join(f"[{t}]" for t in text) + "]}")

        def predicted(n: int) -> bool:
            return bool(api.get("/summary").json()["predicted"] == n)

        wait_until(lambda: predicted(9), 2 * interval + 5, what="the scheduled run")
        took = time.monotonic() - sent
        assert took < 2 * interval, f"new rows waited {took:.1f}s for their results"
        assert api.stats()["jobs_submitted"] == 0  # nobody triggered a job by hand
        job_id = api.get(f"/rows/{ids[0]}").json()["result"]["job_id"]
        job = api.get(f"/jobs/{job_id}").json()
        assert (job["triggered_by"], job["scope"], job["status"]) == (
            "schedule", "unpredicted", "partial")
        assert job["failed_ids"] == [ids[4]]

        # RETRY_POLICY=none: no rerun; the row waits for the next scheduled run
        refused = api.post(f"/jobs/{job_id}/rerun")
        assert refused.status_code == 409
        assert refused.json()["error"] == "rerun_disabled"
        fixed_at = time.monotonic()
        api.request("PUT", f"/rows/{ids[4]}", json={"features": rows[4]}).raise_for_status()
        wait_until(lambda: predicted(10), 2 * interval + 5, what="the deferred row's run")
        assert time.monotonic() - fixed_at < 2 * interval
        later = api.get(f"/rows/{ids[4]}").json()
        assert api.get(f"/jobs/{later['result']['job_id']}").json()["triggered_by"] == "schedule"
        assert len(later["failures"]) >= 1  # it failed in every scheduled run until fixed


def test_transient_faults_are_retried_and_policy_all_reruns_every_row(
    fresh_stack: Callable[..., Stack],
) -> None:
    worker = {"RETRY_POLICY": "all", "CHUNK_SIZE": "10", "CHUNK_RETRIES": "1",
              "FAIL_MODE": "first_n:4"}
    stack = fresh_stack(env={"api": {"RETRY_POLICY": "all"}, "worker": worker})
    with Client(stack.url()) as api:
        ids = add_rows(api, iris_like(30, seed=9))
        first = finished(api, start_job(api))
        # the first attempts of all 3 chunks fail, and the first retry too: that chunk gives up
        assert first["status"] == "partial", first
        assert first["chunks"] == {"total": 3, "done": 3, "attempts": 6}
        assert first["failed"] == 10
        assert first["failed_ids"] in (ids[0:10], ids[10:20], ids[20:30])
        assert all("InjectedFault" in f["reason"] for f in first["failures"])

        resp = api.post(f"/jobs/{first['job_id']}/rerun")
        assert resp.status_code == 202, resp.text
        assert resp.json()["scope"] == "all"
        rerun = finished(api, resp.json()["job_id"])
    assert (rerun["status"], rerun["total"], rerun["predicted"]) == ("succeeded", 30, 30)
    stored = results(stack, ids)
    assert len(stored) == 30  # upserted: one result per row, now all from the rerun
    assert {r["job_id"] for r in stored.values()} == {rerun["job_id"]}


def test_a_chunk_survives_its_worker_being_killed_mid_run(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack(env={"worker": {"DELAY_MS": "2000", "VISIBILITY_TIMEOUT_S": "4"}})
    with Client(stack.url()) as api:
        ids = add_rows(api, iris_like(20, seed=10))
        job_id = start_job(api)
        wait_until(lambda: api.get(f"/jobs/{job_id}").json()["chunks"]["attempts"] == 1, 10,
                   what="the chunk running")
        stack.kill("worker")  # SIGKILL: the chunk's message is never acked
        assert api.get(f"/jobs/{job_id}").json()["status"] == "running"
        early = api.post(f"/jobs/{job_id}/rerun")
        assert (early.status_code, early.json()["error"]) == (409, "job_not_finished")
        stack.start_service("worker")
        job = finished(api, job_id, timeout=30)
    assert (job["status"], job["predicted"]) == ("succeeded", 20)
    assert job["chunks"]["attempts"] == 2  # the killed attempt, then the redelivered one
    assert len(results(stack, ids)) == 20
