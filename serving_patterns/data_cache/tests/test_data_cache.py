"""S9 integration tests: the real proxy, DWH, predictor, warm-up job and redis-server, over HTTP."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.db import make_engine
from patternkit.testing import post_body
from patternkit.topology import Stack
from serving_patterns.data_cache.items import ITEMS
from serving_patterns.data_cache.warmup import parse_ids

SETOSA, VERSICOLOR, VIRGINICA = (row for row, _ in IRIS_ROWS)
DWH_DELAY_MS = 200  # topology.toml
# Ids 2-50 are setosa rows that no test asks for twice: each test takes its own.
_fresh = iter(range(2, 51))


def fresh_id() -> int:
    return next(_fresh)


def predict(client: Client, item_id: object, **kwargs: Any) -> httpx.Response:
    return client.post("/predict", json={"item_id": item_id}, **kwargs)


def put_item(dwh: Client, item_id: object, features: object) -> httpx.Response:
    return dwh.request("PUT", f"/items/{item_id}", json={"features": features})


def queries(dwh: Client) -> int:
    """How many read queries the DWH has run: a cache hit adds none."""
    return int(dwh.stats()["queries"])


def warmup(
    stack: Stack, *ids: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the warm-up job as an operator would, with the stack's settings (plus `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "serving_patterns.data_cache.warmup", "--ids", *ids],
        env={**os.environ, **stack.proc("warmup").env, **(env or {})}, cwd=stack.project,
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def proxy(entry: Client) -> Client:
    return entry


@pytest.fixture
def dwh(stack: Stack) -> Iterator[Client]:
    with Client(stack.url("dwh")) as client:
        yield client


def test_the_first_call_reads_the_dwh_and_the_second_the_faster_cache(
    proxy: Client, dwh: Client
) -> None:
    before = queries(dwh)
    first, first_ms = proxy.timed("POST", "/predict", json={"item_id": 1})
    assert first.status_code == 200, first.text
    assert first.headers["x-data-source"] == "dwh"
    assert first_ms >= DWH_DELAY_MS
    assert queries(dwh) == before + 1
    body = first.json()
    assert (body["item_id"], body["features"], body["data_source"]) == (1, SETOSA, "dwh")
    assert body["prediction"] == [0]
    assert (body["model"], body["version"]) == ("iris_lr", "1.0.0")
    assert first.headers["x-served-by"] == "predictor"
    assert first.headers["x-model-version"] == "1.0.0"

    second, second_ms = proxy.timed("POST", "/predict", json={"item_id": 1},
                                    headers={"X-Request-ID": "second-call"})
    assert second.status_code == 200, second.text
    assert second.headers["x-data-source"] == "cache"
    assert second_ms < 0.5 * first_ms, (first_ms, second_ms)
    assert queries(dwh) == before + 1  # the DWH was not asked again
    again = second.json()
    assert again["features"] == body["features"]
    assert again["features_updated_at"] == body["features_updated_at"]
    assert again["prediction"] == body["prediction"]
    assert again["probabilities"] == body["probabilities"]
    assert again["request_id"] == second.headers["x-request-id"] == "second-call"


def test_concurrent_misses_for_one_item_share_one_dwh_query(
    stack: Stack, proxy: Client, dwh: Client
) -> None:
    item, callers = fresh_id(), 6
    before_queries, before = queries(dwh), proxy.stats()["cache"]
    clients = [Client(stack.url()) for _ in range(callers)]
    # hold the DWH's answer (SIGSTOP) until every caller has missed: a DWH that is slow enough
    stack.pause("dwh")
    try:
        with ThreadPoolExecutor(callers) as pool:
            calls = [pool.submit(predict, client, item) for client in clients]
            wait_until(lambda: proxy.stats()["cache"]["misses"] - before["misses"] == callers,
                       timeout=10, what="every caller missing the cache")
            stack.resume("dwh")
            replies = [call.result(timeout=10) for call in calls]
    finally:
        if stack.status("dwh")[0].state == "paused":
            stack.resume("dwh")
        for client in clients:
            client.close()
    assert [r.status_code for r in replies] == [200] * callers
    assert {r.headers["x-data-source"] for r in replies} == {"dwh"}
    assert len({tuple(r.json()["features"]) for r in replies}) == 1
    assert queries(dwh) == before_queries + 1  # six misses, one query
    assert proxy.stats()["cache"]["coalesced"] == before["coalesced"] + callers - 1
    assert predict(proxy, item).headers["x-data-source"] == "cache"


def test_warmed_items_hit_on_their_first_call(stack: Stack, proxy: Client, dwh: Client) -> None:
    # the topology's warm-up job loaded ids 141-150 before the proxy took traffic
    before = queries(dwh)
    resp = predict(proxy, 145)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-data-source"] == "cache"
    assert resp.json()["prediction"] == [2]
    assert queries(dwh) == before

    # the same job, run again on demand for ids nobody has asked for (and one that is missing)
    job = warmup(stack, "130-132", "9999")
    assert job.returncode == 0, job.stderr
    report = orjson.loads(job.stdout.strip().rpartition("warm-up: ")[2])
    assert report["requested"] == 4
    assert (report["stored"], report["missing"], report["missing_ids"]) == (3, 1, [9999])
    assert report["queries"] == 1  # one bulk SQL query for every id
    assert queries(dwh) == before  # a batch job: it never used the per-item API

    for item in (130, 131, 132):
        resp = predict(proxy, item)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-data-source"] == "cache"
    assert queries(dwh) == before


def test_the_warm_up_job_reads_ids_and_ranges_and_names_a_bad_one() -> None:
    assert parse_ids(["1-3,7", "9 3"]) == [1, 2, 3, 7, 9]
    assert parse_ids([""]) == []
    for bad, names in [("3-x", "'3-x' is not an id or a range"), ("5-2", "low to high"),
                       ("0", "ids run from 1")]:
        with pytest.raises(ValueError, match=names):
            parse_ids([bad])


def test_an_unknown_item_is_a_404_naming_it(proxy: Client) -> None:
    for _ in range(2):  # never cached as found
        resp = predict(proxy, 9999)
        assert resp.status_code == 404, resp.text
        body = resp.json()
        assert body["error"] == "item_not_found"
        assert resp.headers["x-data-source"] == "dwh"
        assert "item 9999" in body["message"]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"item_id": "7"}, "body.item_id: Input should be a valid integer"),
        ({"item_id": 7.5}, "body.item_id: Input should be a valid integer"),
        ({"item_id": True}, "body.item_id: Input should be a valid integer"),
        ({"item_id": None}, "body.item_id"),
        ({"item_id": [7]}, "body.item_id"),
        ({}, "body.item_id: Field required"),
        ({"item_id": 0}, "greater than or equal to 1"),
        ({"item_id": 2**31}, "less than or equal to"),
        ({"item_id": 7, "rows": 1}, "body.rows"),
        ("{not json", "JSON"),
    ],
)
def test_a_bad_item_id_gets_a_422_and_reaches_neither_cache_nor_dwh(
    proxy: Client, dwh: Client, body: object, names: str
) -> None:
    before_queries, before = queries(dwh), proxy.stats()["cache"]
    resp = post_body(proxy, "/predict", body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "validation_error"
    assert names in resp.json()["message"]
    assert "x-data-source" not in resp.headers
    after = proxy.stats()["cache"]
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    assert queries(dwh) == before_queries


def test_an_updated_row_is_seen_on_the_next_call(proxy: Client, dwh: Client) -> None:
    item = fresh_id()
    assert predict(proxy, item).headers["x-data-source"] == "dwh"
    cached = predict(proxy, item)
    assert cached.headers["x-data-source"] == "cache"
    assert cached.json()["prediction"] == [0]

    put = put_item(dwh, item, VIRGINICA)
    assert put.status_code == 200, put.text
    assert put.json()["cache_invalidated"] is True
    assert put.json()["created"] is False
    assert put.json()["features"] == VIRGINICA

    resp = predict(proxy, item)
    assert resp.headers["x-data-source"] == "dwh"  # the write dropped the entry
    assert resp.json()["features"] == VIRGINICA
    assert resp.json()["prediction"] == [2]
    assert resp.json()["features_updated_at"] == put.json()["updated_at"]
    again = predict(proxy, item)
    assert again.headers["x-data-source"] == "cache"
    assert again.json()["features"] == VIRGINICA


def test_a_read_that_raced_an_update_does_not_put_the_old_row_back(
    proxy: Client, dwh: Client
) -> None:
    item = fresh_id()
    before_queries = queries(dwh)
    refused = proxy.stats()["cache"]["fills_refused"]
    with ThreadPoolExecutor(1) as pool:
        racing = pool.submit(predict, proxy, item)
        # the DWH has read the old row and is still "transferring" it (DWH_DELAY_MS)
        wait_until(lambda: queries(dwh) > before_queries, timeout=10, interval=0.005,
                   what="the proxy's DWH read starting")
        put = put_item(dwh, item, VERSICOLOR)
        assert put.status_code == 200, put.text
        raced = not racing.done()
        old = racing.result(timeout=10)
    assert old.status_code == 200, old.text
    assert old.headers["x-data-source"] == "dwh"
    assert old.json()["features"] != VERSICOLOR  # read before the write

    resp = predict(proxy, item)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-data-source"] == "dwh"
    assert resp.json()["features"] == VERSICOLOR
    if raced:  # the usual case: the read was still in flight when the write finished
        assert proxy.stats()["cache"]["fills_refused"] == refused + 1
    assert predict(proxy, item).json()["features"] == VERSICOLOR


def test_put_creates_a_new_item_and_refuses_bad_rows(proxy: Client, dwh: Client) -> None:
    item = random.randrange(1_000_000, 2**31 - 1)  # new even in a shared PostgreSQL
    assert predict(proxy, item).status_code == 404
    created = put_item(dwh, item, VERSICOLOR)
    assert created.status_code == 201, created.text
    assert created.json()["created"] is True
    resp = predict(proxy, item)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-data-source"] == "dwh"
    assert resp.json()["features"] == VERSICOLOR
    assert put_item(dwh, item, VIRGINICA).status_code == 200

    writes = dwh.stats()["writes"]
    for path_id, content, names in [
        (item, '{"features": [6.3, 3.3, 6.0]}', "body.features"),
        (item, '{"features": [6.3, 3.3, 6.0, 2.5, 1.0]}', "body.features"),
        (item, '{"features": [NaN, 3.3, 6.0, 2.5]}', "body.features.0"),
        (item, '{"features": ["a", 3.3, 6.0, 2.5]}', "body.features.0"),
        (item, '{"features": [6.3, true, 6.0, 2.5]}', "body.features.1"),
        (item, '{"features": [6.3, 3.3, "6.0", 2.5]}', "body.features.2"),
        (item, '{"data": [[6.3, 3.3, 6.0, 2.5]]}', "body.features"),
        ("abc", '{"features": [6.3, 3.3, 6.0, 2.5]}', "path.item_id"),
        (0, '{"features": [6.3, 3.3, 6.0, 2.5]}', "path.item_id"),
    ]:
        bad = dwh.request("PUT", f"/items/{path_id}", content=content,
                          headers={"content-type": "application/json"})
        assert bad.status_code == 422, bad.text
        assert names in bad.json()["message"]
    assert dwh.stats()["writes"] == writes


def test_cache_counters_on_stats_and_metrics(proxy: Client) -> None:
    item = fresh_id()
    before = proxy.stats()
    predict(proxy, item)
    predict(proxy, item)
    after = proxy.stats()
    assert after["cache"]["misses"] == before["cache"]["misses"] + 1
    assert after["cache"]["hits"] == before["cache"]["hits"] + 1
    assert after["cache"]["fills"] == before["cache"]["fills"] + 1
    assert after["dwh_reads"] == before["dwh_reads"] + 1
    assert after["cache"]["errors"] == 0
    assert after["cache"]["redis_ok"] is True
    assert after["cache"]["ttl_s"] == 300
    metrics = proxy.get("/metrics").text
    for name in ("data_cache_hits_total", "data_cache_misses_total"):
        line = next(x for x in metrics.splitlines() if x.startswith(name + " "))
        assert float(line.split()[1]) >= 1
    assert proxy.get("/metadata").json()["cache_ttl_s"] == 300


def test_a_write_that_skips_invalidation_shows_up_once_the_ttl_ends(
    stack: Stack, proxy: Client
) -> None:
    item, ttl_s = fresh_id(), 3
    job = warmup(stack, str(item), env={"CACHE_TTL_S": str(ttl_s)})  # the job's own TTL
    assert job.returncode == 0, job.stderr
    warmed = time.monotonic()  # the entry was stored just before: it expires before warmed + 3

    # an ETL job writes the table directly, past the DWH API that would invalidate the entry
    engine = make_engine(stack.url("db"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(ITEMS).where(ITEMS.c.id == item).values(
                f1=VIRGINICA[0], f2=VIRGINICA[1], f3=VIRGINICA[2], f4=VIRGINICA[3]))
    finally:
        engine.dispose()
    stale = predict(proxy, item)
    if time.monotonic() - warmed < ttl_s - 1:  # surely within the TTL: the old row is served
        assert stale.headers["x-data-source"] == "cache"
        assert stale.json()["features"] != VIRGINICA

    # the first reply that has the new row came from the DWH (under load that may be `stale`
    # itself, when it landed after the TTL); the next ones come from the cache again
    fresh = stale if stale.json()["features"] == VIRGINICA else wait_until(
        lambda: (r := predict(proxy, item)).json()["features"] == VIRGINICA and r,
        timeout=ttl_s + 10, interval=0.1, what="the cached row expiring",
    )
    assert fresh.headers["x-data-source"] == "dwh"
    assert fresh.json()["prediction"] == [2]
    assert predict(proxy, item).headers["x-data-source"] == "cache"  # stored again


def test_without_redis_items_come_from_the_dwh_then_caching_resumes(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack()
    item, other = 8, 9
    with Client(stack.url()) as proxy, Client(stack.url("dwh")) as dwh:
        assert predict(proxy, item).headers["x-data-source"] == "dwh"
        assert predict(proxy, item).headers["x-data-source"] == "cache"

        # a hung Redis (stopped, not dead): the short socket timeout keeps the proxy moving
        stack.pause("redis")
        try:
            resp, ms = proxy.timed("POST", "/predict", json={"item_id": item})
        finally:
            stack.resume("redis")
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-data-source"] == "dwh"
        assert ms < 2000, ms  # one 200 ms Redis timeout + the 200 ms DWH read, no hang

        # a dead Redis: every call is read from the DWH, never a 500, and Redis is tried
        # again after CACHE_RETRY_S (1 s), failing again
        stack.kill("redis")
        errors = proxy.stats()["cache"]["errors"]

        def answered_while_redis_fails() -> bool:
            resp = predict(proxy, item)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-data-source"] == "dwh"
            assert resp.json()["prediction"] == [0]
            return bool(proxy.stats()["cache"]["errors"] > errors)

        wait_until(answered_while_redis_fails, timeout=10, interval=0.1,
                   what="the proxy trying the dead Redis again")
        assert proxy.stats()["cache"]["redis_ok"] is False

        # a write while Redis is down still lands; the next read sees it
        put = put_item(dwh, item, VIRGINICA)
        assert put.status_code == 200, put.text
        assert put.json()["cache_invalidated"] is False
        assert dwh.stats()["invalidation_errors"] == 1
        resp = predict(proxy, item)
        assert resp.headers["x-data-source"] == "dwh"
        assert resp.json()["features"] == VIRGINICA

        # Redis is back (empty): a miss stores the row again, then it is a hit
        stack.start_service("redis")
        seen: list[str] = []

        def hit() -> bool:
            seen.append(predict(proxy, item).headers["x-data-source"])
            return seen[-1] == "cache"

        wait_until(hit, timeout=10, interval=0.1, what="caching resuming after Redis restarted")
        assert "dwh" in seen
        assert proxy.stats()["cache"]["redis_ok"] is True

        # with the DWH gone, cached items are still answered; others get a 502 naming the DWH
        stack.kill("dwh")
        assert predict(proxy, item).headers["x-data-source"] == "cache"
        resp = predict(proxy, other)
        assert resp.status_code == 502, resp.text
        assert resp.json()["message"].startswith("backend DWH at http://")

        # and with the predictor gone, a 502 naming the predictor
        stack.kill("predictor")
        resp = predict(proxy, item)
        assert resp.status_code == 502, resp.text
        assert resp.json()["message"].startswith("the predictor: unreachable at http://")
