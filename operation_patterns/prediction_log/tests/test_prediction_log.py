"""O4 integration tests: real proxy, predictor, consumer, redis-server and SQLite, with counts.

Each reliability test prints `sent=... stored=... duplicated=... dropped=...` (issue 11's
done-when); the episodes are the demo's (`scenario.py`), asserted here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis

from operation_patterns.prediction_log import scenario
from operation_patterns.prediction_log.scenario import count_line, counts, log_db, run_tag, send
from patternkit import charts
from patternkit.client import Client, wait_until
from patternkit.predlog import STREAM_FIELD
from patternkit.testing import BAD_PREDICT_BODIES, check_picture, post_body
from patternkit.topology import Stack

STREAM = "prediction_log_prediction_log"
GROUP = "log-consumer"
P99_RATIO, P99_SLACK_MS = 1.5, 8.0  # p99 with the consumer down <= 1.5 x p99 up + 8 ms


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print the counts into the test output, even when pytest captures it."""

    def show(line: str) -> None:
        with capsys.disabled():
            print(f"\n[O4] {line}", flush=True)

    return show


@pytest.fixture
def consumer(stack: Stack) -> Iterator[Client]:
    with Client(stack.url("consumer")) as client:
        yield client


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.url("redis"))
    yield client
    client.close()


def test_n_predictions_give_n_latency_and_prediction_rows_that_join_with_their_events(
    stack: Stack, consumer: Client, report: Callable[[str], None]
) -> None:
    got = scenario.joined(stack, n=50)
    report("join: " + count_line(sent=got["sent"], stored=got["stored"],
                                 duplicated=got["duplicated"], dropped=0))
    assert got["counts"] == {kind: {"rows": 50, "ids": 50}
                             for kind in ("latency", "prediction", "event.purchase")}
    assert got["duplicated"] == 0
    one = got["one"]  # GET /logs?request_id=: the three rows of one request
    assert sorted(one["kinds"]) == ["event.purchase", "latency", "prediction"]
    by_kind = {r["kind"]: r for r in one["rows"]}
    assert {r["request_id"] for r in one["rows"]} == {one["request_id"]}
    pred, lat, event = by_kind["prediction"], by_kind["latency"], by_kind["event.purchase"]
    assert pred["service"] == "predictor" and pred["model"] == "iris_lr"
    assert pred["version"] == lat["version"] == "1.0.0"
    assert pred["input"] == scenario.BODY["data"]
    assert pred["output"]["prediction"] == [2] and len(pred["output"]["probabilities"][0]) == 3
    assert lat["service"] == "proxy" and lat["extra"]["status"] == 200
    assert lat["latency_ms"] >= lat["extra"]["backend_ms"] > 0
    assert event["service"] == "client" and event["extra"]["value"] == 7.0


def test_logs_api_and_bad_input(stack: Stack, entry: Client, consumer: Client) -> None:
    missing = consumer.get("/logs", params={"request_id": "never-sent"})
    assert missing.status_code == 404 and "never-sent" in missing.json()["message"]
    assert consumer.get("/logs", params={"request_id": ""}).status_code == 422
    newest = consumer.get("/logs", params={"limit": 2})
    assert newest.status_code == 200 and newest.json()["count"] <= 2
    for body, field in (({"request_id": "x", "event": "Bad Name"}, "event"),
                        ({"event": "click"}, "request_id"),
                        ({"request_id": "x", "event": "click", "value": "a lot"}, "value"),
                        ({"request_id": "x", "event": "click", "extra": 1}, "extra")):
        resp = entry.post("/events", json=body)
        assert resp.status_code == 422, resp.text
        assert field in resp.text
    hits = Client(stack.url("predictor")).stats()["hits"]
    for body, status, names in BAD_PREDICT_BODIES[:4]:
        resp = post_body(entry, "/predict", body)
        assert resp.status_code == status and names in resp.json()["message"]
    assert Client(stack.url("predictor")).stats()["hits"] == hits  # refused at the proxy


def test_consumer_down_for_the_middle_500_of_1000_loses_nothing_and_costs_no_latency(
    stack: Stack, report: Callable[[str], None]
) -> None:
    got = scenario.consumer_outage(stack, n=1000)
    report("consumer outage: " + count_line(sent=got["sent"], stored=got["stored"],
                                            duplicated=got["duplicated"],
                                            dropped=got["dropped"]))
    report(f"consumer outage: p99 up {got['p99_up_ms']:.1f} ms, down "
           f"{got['p99_down_ms']:.1f} ms (bound {P99_RATIO} x up + {P99_SLACK_MS} ms)")
    assert got["stored_while_down"] == 0  # the consumer really was down for the middle 500
    assert got["counts"] == {"latency": {"rows": 1000, "ids": 1000},
                             "prediction": {"rows": 1000, "ids": 1000}}
    assert (got["stored"], got["duplicated"], got["dropped"]) == (2000, 0, 0)
    assert got["p99_down_ms"] <= P99_RATIO * got["p99_up_ms"] + P99_SLACK_MS


def test_pending_entries_of_a_crashed_consumer_are_stored_once_after_restart(
    stack: Stack, consumer: Client, redis_client: redis.Redis, report: Callable[[str], None]
) -> None:
    """Entries read but never acked (a consumer killed between read and commit): its own are
    read again at start (XREADGROUP 0), another's are claimed once idle (XAUTOCLAIM)."""
    tag = run_tag("pending")
    with Client(stack.url()) as proxy, log_db(stack) as engine:
        scenario.quiet(stack)
        stack.stop_service("consumer")
        try:
            send(proxy, tag, range(20))  # 40 records
            wait_until(lambda: all(scenario.spool(stack, s)["buffered"] == 0
                                   for s in ("proxy", "predictor")), 10)
            own = redis_client.xreadgroup(GROUP, "consumer", {STREAM: ">"}, count=15)
            ghost = redis_client.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=15)
            taken = len(own[0][1]) + len(ghost[0][1])
            assert taken == 30
            assert counts(engine, tag) == {}
        finally:
            stack.start_service("consumer")
        before = consumer.stats()
        found = scenario.wait_stored(engine, tag, {"latency": 20, "prediction": 20}, 20)
        wait_until(lambda: consumer.stats()["pending"] == 0, 10, what="no pending entries")
    after = consumer.stats()
    stored = sum(k["rows"] for k in found.values())
    report("pending: " + count_line(sent=20, stored=stored,
                                    duplicated=stored - sum(k["ids"] for k in found.values()),
                                    dropped=0) + f" claimed={after['claimed']}")
    assert found == {"latency": {"rows": 20, "ids": 20}, "prediction": {"rows": 20, "ids": 20}}
    assert after["claimed"] - before["claimed"] == 15  # the ghost's, after CLAIM_IDLE_MS


def test_an_entry_sent_twice_is_stored_once_and_a_malformed_one_is_skipped(
    stack: Stack, consumer: Client, redis_client: redis.Redis, report: Callable[[str], None]
) -> None:
    """A writer that lost its connection mid-batch sends the batch again: the rows are
    unique by (request id, service, kind), so the second copy is counted, not stored."""
    tag = run_tag("twice")
    with Client(stack.url()) as proxy, log_db(stack) as engine:
        send(proxy, tag, range(10))
        scenario.wait_stored(engine, tag, {"latency": 10, "prediction": 10})
        scenario.quiet(stack)
        before = consumer.stats()
        entries = [e for _, e in redis_client.xrange(STREAM, "-", "+")
                   if orjson.loads(e[STREAM_FIELD])["request_id"].startswith(tag)]
        assert len(entries) == 20
        for fields in entries:
            redis_client.xadd(STREAM, fields)
        redis_client.xadd(STREAM, {STREAM_FIELD: b"not json"})
        redis_client.xadd(STREAM, {b"other": b"field"})
        wait_until(lambda: consumer.stats()["acked"] - before["acked"] == 22, 10,
                   what="22 entries acked")
        found = counts(engine, tag)
    after = consumer.stats()
    duplicates = after["duplicates"] - before["duplicates"]
    report("resent: " + count_line(sent=20, stored=sum(k["rows"] for k in found.values()),
                                   duplicated=duplicates, dropped=0)
           + f" malformed={after['malformed'] - before['malformed']}")
    assert found == {"latency": {"rows": 10, "ids": 10}, "prediction": {"rows": 10, "ids": 10}}
    assert duplicates == 20
    assert after["stored"] == before["stored"]
    assert after["malformed"] - before["malformed"] == 2
    assert after["pending"] == 0


def test_redis_down_is_spooled_and_drained_after_it_returns(
    stack: Stack, report: Callable[[str], None]
) -> None:
    got = scenario.redis_outage(stack, n=300)
    report("redis outage: " + count_line(sent=got["sent"], stored=got["stored"],
                                         duplicated=got["duplicated"], dropped=got["dropped"])
           + f" spooled={got['spooled']} drained_s={got['drained_s']:.1f}")
    assert got["spooled"] == {"proxy": 300, "predictor": 300}  # all waited in the spools
    assert got["write_errors"] > 0  # they were tried, and failed, while Redis was down
    assert got["counts"] == {"latency": {"rows": 300, "ids": 300},
                             "prediction": {"rows": 300, "ids": 300}}
    assert (got["duplicated"], got["dropped"]) == (0, 0)


def test_a_full_spool_drops_exactly_the_excess_counts_it_and_keeps_memory_flat(
    stack: Stack, report: Callable[[str], None]
) -> None:
    n, bound, bulk = 300, scenario.SPOOL_BOUND, 400
    got = scenario.spool_overflow(stack, n=n, bound=bound, bulk=bulk)
    over = {s: v["dropped"] for s, v in got["spooled"].items()}
    report("full spool: " + count_line(sent=n, stored=got["stored"],
                                       duplicated=got["duplicated"], dropped=sum(over.values()))
           + f" by_service={over} metric={got['dropped_metric']}")
    growth_kb = got["rss_end_kb"] - got["rss_full_kb"]
    report(f"full spool: predictor RSS {got['rss_full_kb']} kB -> {got['rss_end_kb']} kB "
           f"(+{growth_kb} kB) over {bulk} bulky requests; unbounded would add >= "
           f"{got['would_be_kb']} kB")
    assert over == {"proxy": n - bound, "predictor": n - bound}
    assert got["spooled"]["proxy"]["buffered"] == got["spooled"]["predictor"]["buffered"] == bound
    assert got["dropped_metric"] == {"proxy": n - bound, "predictor": n - bound + bulk}
    assert got["dropped_stats"] == got["dropped_metric"]  # /stats and /metrics agree
    assert got["counts"] == {"latency": {"rows": bound, "ids": bound},
                             "prediction": {"rows": bound, "ids": bound}}
    assert all(got["first_kept"].values())  # the spool keeps the oldest, drops the newest
    assert got["bulk_stored"] == {}
    assert growth_kb < got["would_be_kb"] / 4, got


def test_the_demo_picture_draws_a_timeline(tmp_path: Path) -> None:
    """The picture from a made-up timeline: lag and spools over an outage of each kind."""
    tl = scenario.Timeline()
    for i in range(80):
        tl.t.append(i * 0.25)
        tl.lag.append(None if 20 <= i < 40 else float(max(0, 30 - abs(i - 45)) * 10))
        for service in ("proxy", "predictor"):
            tl.buffered[service].append(float(min(100, max(0, i - 50) * 10)))
            tl.dropped[service].append(float(max(0, i - 60) * 10))
    tl.spans += [("consumer down", 5.0, 10.0), ("redis down, spool 100", 12.5, 17.5)]
    path = tmp_path / scenario.PICTURE
    charts.picture(path, lambda: scenario.draw(tl))
    check_picture(path)
