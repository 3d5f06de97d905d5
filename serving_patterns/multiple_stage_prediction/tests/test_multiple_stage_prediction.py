"""S11 integration tests: the real proxy, light predictor, Redis and heavy worker, over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.jobs import JobQueue, JobStore, make_celery
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack
from serving_patterns.multiple_stage_prediction.worker import QUEUE, TASK_NAME

ROWS = [row for row, _ in IRIS_ROWS]
LABELS = [label for _, label in IRIS_ROWS]
HEAVY_DELAY_MS = 1500  # the heavy worker's DELAY_MS in topology.toml


@pytest.fixture
def proxy(entry: Client) -> Client:
    """The entry service of the shared stack is the proxy."""
    return entry


def ask(proxy: Client, rows: list[list[float]], **kwargs: Any) -> dict[str, Any]:
    """POST rows; expects both stages to work (200, the light answer and a job id)."""
    resp = proxy.post("/predict", json={"data": rows}, **kwargs)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def heavy_answer(
    proxy: Client, job_id: str, timeout: float = 20.0, seen: list[str] | None = None
) -> dict[str, Any]:
    """Poll the job until it is done or failed; `seen` collects the statuses on the way."""

    def check() -> dict[str, Any] | None:
        resp = proxy.get(f"/predict/{job_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if seen is not None and (not seen or seen[-1] != body["status"]):
            seen.append(body["status"])
        return body if body["status"] in ("done", "failed") else None

    return wait_until(check, timeout, what=f"heavy job {job_id} finishing")


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_the_first_reply_is_the_light_answer_and_comes_back_fast(proxy: Client) -> None:
    resp, ms = proxy.timed("POST", "/predict", json={"data": ROWS})
    assert resp.status_code == 200, resp.text
    assert ms < 0.5 * HEAVY_DELAY_MS, f"the first reply took {ms:.0f} ms"
    body = resp.json()
    assert body["stage"] == "light"
    assert (body["model"], body["version"], body["served_by"]) == ("iris_lr", "1.0.0", "light")
    assert body["prediction"] == LABELS
    assert len(body["probabilities"]) == 3
    assert len(body["job_id"]) == 32
    assert body["result_url"] == f"/predict/{body['job_id']}"
    assert body["request_id"] == resp.headers["x-request-id"]
    assert at(body["answered_at"]) <= time.time()
    assert "light_error" not in body and "heavy_error" not in body
    # at that moment the heavy model has not answered yet
    assert proxy.get(body["result_url"]).json()["status"] in ("pending", "running")


def test_the_heavy_answer_follows_for_the_same_request_after_the_heavy_delay(
    proxy: Client,
) -> None:
    light = ask(proxy, ROWS, headers={"X-Request-ID": "user-42"})
    assert (light["stage"], light["request_id"]) == ("light", "user-42")
    seen: list[str] = []
    heavy = heavy_answer(proxy, light["job_id"], seen=seen)
    assert heavy["status"] == "done"
    assert seen[-2:] == ["running", "done"]
    assert heavy["stage"] == "heavy"
    assert heavy["model"] == "iris_heavy" != light["model"]
    assert (heavy["served_by"], heavy["attempts"]) == ("heavy", 1)
    assert heavy["request_id"] == "user-42"
    assert heavy["prediction"] == LABELS
    assert heavy["probabilities"] != light["probabilities"]  # another model's opinion
    # the heavy answer cannot be there before the light one plus the heavy model's time
    assert at(heavy["finished_at"]) >= at(light["answered_at"]) + HEAVY_DELAY_MS / 1000
    assert at(heavy["finished_at"]) - at(heavy["started_at"]) >= HEAVY_DELAY_MS / 1000


def test_the_request_id_in_the_body_wins_and_reaches_both_stages(proxy: Client) -> None:
    light = proxy.post("/predict", json={"data": [ROWS[1]], "request_id": "from-body"},
                       headers={"X-Request-ID": "from-header"}).json()
    assert light["request_id"] == "from-body"
    assert heavy_answer(proxy, light["job_id"])["request_id"] == "from-body"


@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_is_refused_and_reaches_neither_stage(
    stack: Stack, proxy: Client, body: object, status: int, names: str
) -> None:
    with Client(stack.url("light")) as light:
        light_hits = light.stats()["hits"]
        before = proxy.stats()
        resp = post_body(proxy, "/predict", body)
        assert resp.status_code == status, resp.text
        error = resp.json()
        assert names in error["message"]
        assert error["error"] in ("validation_error", "payload_too_large")
        assert "job_id" not in error
        after = proxy.stats()
        assert after["submitted"] == before["submitted"]  # no heavy job queued
        assert after["light_answers"] == before["light_answers"]
        assert light.stats()["hits"] == light_hits  # the light predictor was not asked


def test_an_unknown_job_is_a_404(proxy: Client) -> None:
    resp = proxy.get("/predict/0123456789abcdef0123456789abcdef")
    assert resp.status_code == 404
    error = resp.json()
    assert error["error"] == "job_not_found"
    assert "0123456789abcdef0123456789abcdef" in error["message"]


def test_a_heavy_job_that_fails_shows_failed_with_the_error(stack: Stack, proxy: Client) -> None:
    url = stack.url("redis")  # another producer, one that skips the proxy's validation
    queue = JobQueue(make_celery(QUEUE, url), JobStore.from_url(url, QUEUE), TASK_NAME)
    try:
        job = queue.submit([[5.1, 3.5, 1.4]], "bad-row")
    finally:
        queue.close()
    failed = heavy_answer(proxy, job)
    assert (failed["status"], failed["stage"], failed["attempts"]) == ("failed", None, 1)
    assert "expected rows of 4 features" in failed["error"]
    assert "prediction" not in failed


def test_each_stage_fails_on_its_own_and_no_heavy_job_is_lost(
    fresh_stack: Callable[..., Stack],
) -> None:
    delay_ms = 600
    # a short visibility timeout, so the killed job is redelivered soon after the restart
    stack = fresh_stack(env={"heavy": {"DELAY_MS": str(delay_ms), "VISIBILITY_TIMEOUT_S": "2"}})
    light_url = stack.url("light")
    with Client(stack.url()) as proxy:
        # (1) heavy worker down mid-job: light answers go on; heavy jobs stay pending
        in_flight = ask(proxy, [ROWS[0]])["job_id"]
        wait_until(lambda: proxy.get(f"/predict/{in_flight}").json()["status"] == "running",
                   10, what="the first heavy job running")
        stack.kill("heavy")  # SIGKILL: the message is never acked
        queued: list[str] = []
        down_since = time.monotonic()

        def light_keeps_answering() -> bool:
            """One more request while the worker is down; done after twice the heavy delay."""
            resp = proxy.post("/predict", json={"data": [ROWS[2]]})
            assert resp.status_code == 200, resp.text
            assert resp.json()["stage"] == "light" and resp.json()["prediction"] == [2]
            queued.append(resp.json()["job_id"])
            for job in queued:
                assert proxy.get(f"/predict/{job}").json()["status"] == "pending"
            return time.monotonic() - down_since > 2 * delay_ms / 1000

        wait_until(light_keeps_answering, 10, interval=0.3,
                   what="light answers over twice the heavy delay")
        assert proxy.get(f"/predict/{in_flight}").json()["stage"] is None

        # (2) the worker back: every heavy job finishes, the killed one delivered again
        stack.start_service("heavy")
        answers = {job: heavy_answer(proxy, job, timeout=30) for job in [in_flight, *queued]}
        assert all(a["status"] == "done" and a["stage"] == "heavy" for a in answers.values())
        assert answers[in_flight]["prediction"] == [0]
        assert answers[in_flight]["attempts"] == 2  # the killed attempt, then the redelivery
        assert all(answers[job]["prediction"] == [2] for job in queued)

        # (3) light predictor down: 202, no light answer, the heavy job is queued all the same
        stack.kill("light")
        resp = proxy.post("/predict", json={"data": [ROWS[1]]})
        assert resp.status_code == 202, resp.text
        partial = resp.json()
        assert partial["stage"] is None and partial["prediction"] is None
        assert partial["light_error"]["status"] == 502
        assert "light predictor" in partial["light_error"]["message"]
        assert light_url in partial["light_error"]["message"]
        assert resp.headers["location"] == f"/predict/{partial['job_id']}"
        heavy = heavy_answer(proxy, partial["job_id"])
        assert (heavy["stage"], heavy["model"], heavy["prediction"]) == (
            "heavy", "iris_heavy", [1])

        # (4) Redis down as well: neither stage can take the request, a 503 names both
        stack.kill("heavy")  # done with it; a worker without its broker is slow to stop
        stack.kill("redis")
        resp = proxy.post("/predict", json={"data": [ROWS[1]]})
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"] == "stages_unavailable"
        assert "light predictor" in resp.json()["message"]
        assert "job queue (Redis)" in resp.json()["message"]
        status = proxy.get(f"/predict/{partial['job_id']}")
        assert (status.status_code, status.json()["error"]) == (503, "queue_unavailable")

        # (5) the light predictor back, Redis still down: the light answer, and why no job
        stack.start_service("light")
        light = ask(proxy, [ROWS[1]])
        assert (light["stage"], light["prediction"], light["job_id"]) == ("light", [1], None)
        assert light["heavy_error"]["error"] == "queue_unavailable"
        stats = proxy.stats()
    assert (stats["light_failures"], stats["queue_failures"]) == (2, 2)
    assert stats["submitted"] == len(answers) + 1
