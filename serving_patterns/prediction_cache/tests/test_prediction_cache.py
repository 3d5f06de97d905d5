"""S8 integration tests: the real proxy, predictor and redis-server, over HTTP."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.models import train_model
from patternkit.testing import BAD_PREDICT_BODIES, check_picture, post_body
from patternkit.topology import Stack
from serving_patterns.prediction_cache import scenario

SETOSA, VERSICOLOR, VIRGINICA = (row for row, _ in IRIS_ROWS)
_unique = itertools.count(1)


def new_row(base: list[float] = SETOSA) -> list[float]:
    """A row no earlier test sent, so its first call is a MISS on the shared stack."""
    return [*base[:3], round(base[3] + next(_unique) / 1000, 3)]


def predict(client: Client, row: list[float], **kwargs: object) -> httpx.Response:
    return client.post("/predict", json={"data": [row]}, **kwargs)


@pytest.fixture
def proxy(entry: Client) -> Client:
    return entry


@pytest.fixture
def predictor(stack: Stack) -> Iterator[Client]:
    with Client(stack.url("predictor")) as client:
        yield client


def test_a_repeated_input_is_a_fast_hit_that_spares_the_predictor(
    proxy: Client, predictor: Client
) -> None:
    row = new_row()
    first, first_ms = proxy.timed("POST", "/predict", json={"data": [row]})
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "MISS"
    assert first.headers["x-served-by"] == "predictor"
    assert first_ms >= 300  # the predictor's DELAY_MS

    predictor_hits = predictor.stats()["hits"]
    second, second_ms = proxy.timed("POST", "/predict", json={"data": [row]})
    assert second.status_code == 200, second.text
    assert second.headers["x-cache"] == "HIT"
    assert second_ms < 0.5 * first_ms, (first_ms, second_ms)
    assert predictor.stats()["hits"] == predictor_hits  # the predictor was not asked
    assert second.headers["x-served-by"] == "proxy"
    assert second.headers["x-model-version"] == "1.0.0"
    assert second.json()["prediction"] == first.json()["prediction"] == [0]
    assert second.json()["probabilities"] == first.json()["probabilities"]


def test_a_hit_is_the_stored_reply_with_headers_of_its_own(proxy: Client) -> None:
    """As an HTTP cache answers: the body is what the predictor computed (its `served_by`
    and `version`), the headers say who answered now, from where, and how old it is."""
    row = new_row()
    miss = predict(proxy, row)
    assert "age" not in miss.headers
    hit = predict(proxy, row)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["x-served-by"] == "proxy"
    assert hit.json()["served_by"] == miss.json()["served_by"] == miss.headers["x-served-by"]
    assert hit.json()["version"] == hit.headers["x-model-version"] == "1.0.0"
    assert 0 <= int(hit.headers["age"]) <= 60  # whole seconds since stored, within the TTL


def test_a_hit_carries_its_own_request_id(proxy: Client) -> None:
    row = new_row()
    predict(proxy, row, headers={"X-Request-ID": "first-call"})
    hit = predict(proxy, row, headers={"X-Request-ID": "second-call"})
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["x-request-id"] == "second-call"
    assert hit.json()["request_id"] == "second-call"
    own = proxy.post("/predict", json={"data": [row], "request_id": "in-the-body"},
                     headers={"X-Request-ID": "third-call"})
    assert own.headers["x-cache"] == "HIT"
    assert own.headers["x-request-id"] == "third-call"
    assert own.json()["request_id"] == "in-the-body"  # the body's own id, as the predictor


def test_the_key_is_the_data_not_its_spelling(proxy: Client) -> None:
    row = new_row([5.0, 3.5, 1.4, 0.2])
    assert predict(proxy, row).headers["x-cache"] == "MISS"
    # other whitespace, another key order, 5 for 5.0 and a request_id: the same data, one key
    respelled = f'{{ "request_id": "respelled", "data": [ [5, 3.5, 1.4, {row[3]!r}] ] }}'
    resp = proxy.post("/predict", content=respelled, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-cache"] == "HIT"
    assert resp.json()["request_id"] == "respelled"


def test_different_inputs_get_different_keys(proxy: Client, predictor: Client) -> None:
    a, b = new_row(SETOSA), new_row(VIRGINICA)
    before = predictor.stats()["hits"]
    assert predict(proxy, a).headers["x-cache"] == "MISS"
    assert predict(proxy, b).headers["x-cache"] == "MISS"
    assert predictor.stats()["hits"] == before + 2
    hit_a, hit_b = predict(proxy, a), predict(proxy, b)
    assert (hit_a.headers["x-cache"], hit_b.headers["x-cache"]) == ("HIT", "HIT")
    assert hit_a.json()["prediction"] == [0]
    assert hit_b.json()["prediction"] == [2]


@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_gets_a_4xx_and_is_never_cached(
    proxy: Client, predictor: Client, body: object, status: int, names: str
) -> None:
    predictor_hits = predictor.stats()["hits"]
    cache_before = proxy.stats()["cache"]
    for _ in range(2):
        resp = post_body(proxy, "/predict", body)
        assert resp.status_code == status, resp.text
        assert names in resp.json()["message"]
        assert "x-cache" not in resp.headers
    cache_after = proxy.stats()["cache"]
    assert (cache_after["hits"], cache_after["misses"]) == (
        cache_before["hits"], cache_before["misses"]
    )
    assert predictor.stats()["hits"] == predictor_hits


def test_cache_counters_on_stats_and_metrics(proxy: Client) -> None:
    row = new_row()
    before = proxy.stats()["cache"]
    predict(proxy, row)
    predict(proxy, row)
    after = proxy.stats()["cache"]
    assert after["misses"] == before["misses"] + 1
    assert after["hits"] == before["hits"] + 1
    assert after["errors"] == 0
    assert after["ttl_s"] == 60
    metrics = proxy.get("/metrics").text
    for name in ("prediction_cache_hits_total", "prediction_cache_misses_total"):
        line = next(x for x in metrics.splitlines() if x.startswith(name + " "))
        assert float(line.split()[1]) >= 1
    assert proxy.get("/metadata").json()["model_version"] == "1.0.0"


def test_the_demo_shows_hits_and_misses_and_draws_their_latency(
    stack: Stack, tmp_path: Path
) -> None:
    rows = scenario.run(stack, out=tmp_path)
    sample = next(r for r in rows if r["call"].endswith("repeats each"))
    n = scenario.INPUTS
    assert sample["x_cache"] == f"{n * scenario.REPEATS} HIT, {n} MISS"
    assert sample["predictor_calls"] == n  # only the MISSes reached the predictor
    check_picture(tmp_path / scenario.PICTURE)


def test_a_new_model_version_is_a_miss(
    fresh_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    train_model("iris_lr", tmp_path / "v2", version="2.0.0")
    stack = fresh_stack(env={"proxy": {"VERSION_REFRESH_S": "0.5"}})
    with Client(stack.url()) as proxy:
        assert predict(proxy, VERSICOLOR).headers["x-cache"] == "MISS"
        assert predict(proxy, VERSICOLOR).headers["x-cache"] == "HIT"

        stack.restart("predictor", env={"MODEL_PATH": str(tmp_path / "v2")})
        wait_until(lambda: proxy.get("/metadata").json()["model_version"] == "2.0.0",
                   timeout=10, what="the proxy learning model version 2.0.0")

        resp = predict(proxy, VERSICOLOR)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cache"] == "MISS"
        assert resp.headers["x-model-version"] == "2.0.0"
        assert resp.json()["version"] == "2.0.0"
        again = predict(proxy, VERSICOLOR)
        assert again.headers["x-cache"] == "HIT"
        assert again.headers["x-model-version"] == "2.0.0"


def test_an_expired_prediction_is_a_miss_again(fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(env={"proxy": {"CACHE_TTL_S": "1"}})
    with Client(stack.url()) as proxy:
        sent = time.monotonic()
        assert predict(proxy, SETOSA).headers["x-cache"] == "MISS"
        assert predict(proxy, SETOSA).headers["x-cache"] == "HIT"
        wait_until(lambda: predict(proxy, SETOSA).headers["x-cache"] == "MISS",
                   timeout=5, interval=0.1, what="the cached prediction expiring")
        assert time.monotonic() - sent >= 1.0  # not before the TTL
        assert predict(proxy, SETOSA).headers["x-cache"] == "HIT"  # stored again


def test_without_redis_the_proxy_still_answers_then_caching_resumes(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack()
    with Client(stack.url()) as proxy:
        assert predict(proxy, VIRGINICA).headers["x-cache"] == "MISS"
        assert predict(proxy, VIRGINICA).headers["x-cache"] == "HIT"

        # a hung Redis (stopped, not dead): the short socket timeout keeps the proxy moving
        stack.pause("redis")
        try:
            resp, ms = proxy.timed("POST", "/predict", json={"data": [VIRGINICA]})
        finally:
            stack.resume("redis")
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cache"] == "MISS"
        assert ms < 1500, ms  # no hang: 300 ms predictor + one 200 ms Redis timeout

        # a dead Redis: every call is a MISS answered by the predictor, never a 500
        stack.kill("redis")
        for _ in range(3):
            resp, ms = proxy.timed("POST", "/predict", json={"data": [VIRGINICA]})
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-cache"] == "MISS"
            assert resp.json()["prediction"] == [2]
            assert ms < 1500, ms  # a refused connection costs nothing
        cache = proxy.stats()["cache"]
        assert cache["errors"] >= 2
        assert cache["redis_ok"] is False

        # Redis is back (empty): a MISS stores the prediction again, then it is a HIT
        stack.start_service("redis")
        seen: list[str] = []

        def hit() -> bool:
            seen.append(predict(proxy, VIRGINICA).headers["x-cache"])
            return seen[-1] == "HIT"

        wait_until(hit, timeout=10, interval=0.1, what="caching resuming after Redis restarted")
        assert "MISS" in seen
        assert proxy.stats()["cache"]["redis_ok"] is True

        # and with the predictor gone, cached inputs are still answered; others get a 502
        stack.kill("predictor")
        assert predict(proxy, VIRGINICA).headers["x-cache"] == "HIT"
        assert predict(proxy, new_row(VERSICOLOR)).status_code == 502
