"""S3 integration tests: the real API, Redis and Celery worker, observed over HTTP and in the DB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.db import make_engine
from patternkit.jobs import JobQueue, JobStore, make_celery
from patternkit.models import OnnxModel, load_dataset
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack
from serving_patterns.asynchronous.worker import INFERENCE, QUEUE, TASK_NAME

ROW = IRIS_ROWS[0][0]


@pytest.fixture
def api(entry: Client) -> Client:
    return entry


@pytest.fixture
def producer(stack: Stack) -> Iterator[JobQueue]:
    """Another producer on the same queue, one that does not validate what it sends."""
    url = stack.url("redis")
    queue = JobQueue(make_celery(QUEUE, url), JobStore.from_url(url, QUEUE), TASK_NAME)
    yield queue
    queue.close()


def submit(api: Client, rows: list[list[float]], **extra: Any) -> str:
    resp = api.post("/predict", json={"data": rows, **extra})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def finished(
    api: Client, job_id: str, timeout: float = 20.0, seen: list[str] | None = None
) -> dict[str, Any]:
    """Poll the job until it is done or failed; `seen` collects the statuses on the way."""

    def check() -> dict[str, Any] | None:
        resp = api.get(f"/result/{job_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if seen is not None and (not seen or seen[-1] != body["status"]):
            seen.append(body["status"])
        return body if body["status"] in ("done", "failed") else None

    return wait_until(check, timeout, what=f"job {job_id} finishing")


def inference_rows(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """Read the D2 table as any other consumer would: straight from the DB."""
    engine = make_engine(stack.url("db"))
    try:
        with engine.connect() as conn:
            query = sa.select(INFERENCE).where(INFERENCE.c.job_id == job_id)
            return [dict(row._mapping) for row in conn.execute(query)]
    finally:
        engine.dispose()


def test_post_answers_202_at_once_though_the_model_takes_a_second(
    api: Client, stack: Stack
) -> None:
    job_ms = int(stack.proc("worker").env["DELAY_MS"])  # what one job costs the worker
    resp, ms = api.timed("POST", "/predict", json={"data": [ROW]})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "pending"
    assert len(body["job_id"]) == 32
    assert body["result_url"] == f"/result/{body['job_id']}" == resp.headers["location"]
    assert ms < job_ms / 2, f"POST took {ms:.0f} ms, a job takes {job_ms} ms"
    assert api.get(body["result_url"]).json()["status"] in ("pending", "running")
    done = finished(api, body["job_id"])
    assert done["status"] == "done"
    assert done["prediction"] == [0]


def test_result_goes_pending_running_done_with_the_models_output(
    stack: Stack, api: Client
) -> None:
    X, _, _, _ = load_dataset("iris")
    submit(api, [ROW])  # keeps the single worker busy for DELAY_MS, so the next job waits
    job = submit(api, X.tolist(), request_id="iris-all")
    seen: list[str] = []
    done = finished(api, job, seen=seen)
    assert seen == ["pending", "running", "done"]
    direct = OnnxModel(Path(stack.run_dir) / "models/iris_lr").predict(X)
    assert done["prediction"] == direct.labels.tolist()
    np.testing.assert_allclose(done["probabilities"], direct.probabilities, rtol=1e-6)
    assert (done["model"], done["version"]) == ("iris_lr", "1.0.0")
    assert done["request_id"] == "iris-all"
    assert done["attempts"] == 1
    assert done["served_by"] == "worker"


def test_the_prediction_lands_in_the_inference_db_without_polling_the_api(
    stack: Stack, api: Client
) -> None:
    features, expected = IRIS_ROWS[2]
    job = submit(api, [features])
    rows = wait_until(lambda: inference_rows(stack, job), 20, what="the job's inference row")
    assert len(rows) == 1
    row = rows[0]
    assert row["prediction"] == [expected]
    assert (row["model"], row["version"], row["n_rows"]) == ("iris_lr", "1.0.0", 1)
    assert len(row["probabilities"][0]) == 3
    assert row["attempts"] == 1


def test_a_finished_job_delivered_again_is_not_run_or_recorded_twice(
    stack: Stack, api: Client, producer: JobQueue
) -> None:
    job = submit(api, [ROW])
    done = finished(api, job)
    producer.app.send_task(TASK_NAME, args=[job, [ROW], None], task_id=job)  # a redelivery
    marker = submit(api, [ROW])  # one worker, FIFO: once this is done, so is the duplicate
    assert finished(api, marker)["status"] == "done"
    assert api.get(f"/result/{job}").json() == done
    assert len(inference_rows(stack, job)) == 1


@pytest.mark.parametrize(
    ("rows", "names"),
    [([[5.1, 3.5, 1.4]], "expected rows of 4 features"),
     ([[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, 1.4, True]], "rows.1.3 is bool True")],
)
def test_a_job_the_model_cannot_take_fails_at_once_without_retries(
    api: Client, producer: JobQueue, rows: list[list[float]], names: str
) -> None:
    job = producer.submit(rows, None)  # skipped the API's validation
    failed = finished(api, job)
    assert failed["status"] == "failed"
    assert failed["attempts"] == 1
    assert names in failed["error"]


@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_is_refused_before_it_is_queued(
    api: Client, body: object, status: int, names: str
) -> None:
    before = api.stats()["submitted"]
    resp = post_body(api, "/predict", body)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert names in error["message"]
    assert error["error"] in ("validation_error", "payload_too_large")
    assert api.stats()["submitted"] == before


def test_an_unknown_job_is_a_404(api: Client) -> None:
    resp = api.get("/result/0123456789abcdef0123456789abcdef")
    assert resp.status_code == 404
    error = resp.json()
    assert error["error"] == "job_not_found"
    assert "0123456789abcdef0123456789abcdef" in error["message"]


def test_a_job_that_keeps_failing_ends_failed_after_3_attempts(fresh_stack: Any) -> None:
    stack = fresh_stack(env={"worker": {"FAIL_MODE": "always", "DELAY_MS": "50"}})
    with Client(stack.url()) as api:
        job = submit(api, [ROW])
        failed = finished(api, job)
        assert failed["status"] == "failed"
        assert failed["attempts"] == 3
        assert "InjectedFault" in failed["error"]
        # not retried forever: while a later job runs its three attempts, the first is untouched
        later = finished(api, submit(api, [ROW]))
        assert (later["status"], later["attempts"]) == ("failed", 3)
        assert api.get(f"/result/{job}").json() == failed
        assert inference_rows(stack, job) == []


def test_a_job_survives_its_worker_being_killed_mid_run(fresh_stack: Any) -> None:
    stack = fresh_stack(env={"worker": {"DELAY_MS": "2000"}})
    with Client(stack.url()) as api:
        job = submit(api, [ROW])
        wait_until(lambda: api.get(f"/result/{job}").json()["status"] == "running", 10,
                   what="the job running")
        stack.kill("worker")  # SIGKILL: no warm shutdown, the message is never acked
        assert api.get(f"/result/{job}").json()["status"] == "running"
        stack.start_service("worker")
        done = finished(api, job, timeout=30)
    assert done["status"] == "done"
    assert done["prediction"] == [0]
    assert done["attempts"] == 2  # the killed attempt, then the redelivered one
    assert len(inference_rows(stack, job)) == 1
