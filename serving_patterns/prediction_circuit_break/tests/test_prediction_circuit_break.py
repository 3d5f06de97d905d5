"""S10 integration tests: the real proxy in front of two real, slow predictors, over HTTP.

Bursts come from a bare asyncio HTTP client (`scenario.burst`). Timing claims lean on the
predictors' DELAY_MS (1 s): a fallback comes back in a fraction of it, a real answer never
before it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.client import burst as client_burst
from patternkit.testing import BAD_PREDICT_BODIES, check_picture, post_body
from patternkit.topology import Stack
from serving_patterns.prediction_circuit_break import scenario
from serving_patterns.prediction_circuit_break.scenario import Shot, burst

ROW = IRIS_ROWS[0][0]


@pytest.fixture
def proxy(entry: Client) -> Client:
    return entry


def setting(stack: Stack, name: str, var: str) -> int:
    return int(stack.proc(name).env[var])


def predictor_stats(stack: Stack) -> dict[str, dict[str, Any]]:
    stats = {}
    for name in stack.instances("predictor"):
        with Client(stack.url(name)) as predictor:
            stats[name] = predictor.stats()
    return stats


def predictor_hits(stack: Stack) -> int:
    return sum(s["hits"] for s in predictor_stats(stack).values())


def breakers(proxy: Client) -> dict[str, dict[str, Any]]:
    """Each backend's entry on /breaker, by its URL."""
    return {b["url"]: b for b in proxy.get("/breaker").json()["backends"]}


def states(proxy: Client) -> list[str]:
    return [b["state"] for b in breakers(proxy).values()]


def predict(proxy: Client) -> httpx.Response:
    return proxy.post("/predict", json={"data": [ROW]})


def split(shots: list[Shot]) -> tuple[list[Shot], list[Shot]]:
    answered = [s for s in shots if s.answered]
    fallbacks = [s for s in shots if s.fallback]
    errors = [(s.status, s.body) for s in shots if not s.answered and not s.fallback]
    assert not errors, errors
    return answered, fallbacks


@contextmanager
def proxy_settings(stack: Stack, **env: str) -> Iterator[Client]:
    """Restart the shared stack's proxy with other settings; put the old ones back after."""
    old = {key: stack.proc("proxy").env[key] for key in env}
    stack.restart("proxy", env=env)
    try:
        with Client(stack.url()) as client:
            yield client
    finally:
        stack.restart("proxy", env=old)


# -- load shedding ------------------------------------------------------------------------------


def test_up_to_the_cap_every_request_gets_a_real_answer(stack: Stack, proxy: Client) -> None:
    cap = setting(stack, "proxy", "MAX_INFLIGHT")
    replicas = stack.instances("predictor")
    fallbacks_before = proxy.stats()["fallbacks"]

    shots = burst(stack.url(), cap * len(replicas))  # 5 per replica, all at once

    answered, fallbacks = split(shots)
    assert len(answered) == cap * len(replicas)
    assert not fallbacks
    assert all(s.body["prediction"] == [0] for s in answered)
    assert {s.headers["x-served-by"] for s in answered} == set(replicas)
    assert proxy.stats()["fallbacks"] == fallbacks_before


def test_a_burst_over_the_cap_is_shed_at_once(stack: Stack, proxy: Client) -> None:
    cap = setting(stack, "proxy", "MAX_INFLIGHT")
    delay_ms = setting(stack, "predictor-1", "DELAY_MS")
    replicas = stack.instances("predictor")
    overloaded_before = proxy.stats()["fallbacks"]["overloaded"]
    hits_before = predictor_hits(stack)

    shots = burst(stack.url(), 30)

    answered, fallbacks = split(shots)
    # every replica takes `cap` calls; a call admitted later would need a slot to free, which
    # takes DELAY_MS (1 s), much longer than 30 requests take to arrive
    assert len(answered) == cap * len(replicas), [s.status for s in shots]
    assert len(fallbacks) == 30 - cap * len(replicas)
    assert predictor_hits(stack) - hits_before == len(answered)  # shed calls never got there
    for shot in fallbacks:
        assert shot.status == 503
        assert shot.headers["retry-after"] == "1"
        assert shot.headers["x-fallback"] == "overloaded"
        assert shot.headers["x-served-by"] == "proxy"
        body = shot.body
        assert (body["prediction"], body["fallback"], body["reason"]) == (None, True, "overloaded")
        assert "MAX_INFLIGHT" in body["message"]
    # a fallback does not wait for a slot: it comes back in a fraction of the model's time
    fallback_ms = [s.ms for s in fallbacks]
    assert statistics.median(fallback_ms) < 0.5 * delay_ms, fallback_ms
    assert max(fallback_ms) < delay_ms, fallback_ms
    assert min(s.ms for s in answered) >= delay_ms
    # the cap holds at the backends themselves, and on the proxy's own count
    for name, stats in predictor_stats(stack).items():
        assert stats["max_in_flight"] == cap, (name, stats)
    for backend in breakers(proxy).values():
        assert backend["max_in_flight"] == cap
        assert backend["state"] == "closed"
    assert proxy.stats()["fallbacks"]["overloaded"] - overloaded_before == len(fallbacks)
    metrics = proxy.get("/metrics").text
    line = next(x for x in metrics.splitlines()
                if x.startswith('circuit_break_fallbacks_total{reason="overloaded"}'))
    assert float(line.split()[1]) >= len(fallbacks)


def test_open_inference_protocol_calls_are_admitted_and_shed_like_predict(
    stack: Stack, proxy: Client
) -> None:
    cap = setting(stack, "proxy", "MAX_INFLIGHT")
    slots = cap * len(stack.instances("predictor"))
    overloaded_before = proxy.stats()["fallbacks"]["overloaded"]
    body = {"id": "s10", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                     "data": ROW}]}

    shots = client_burst(stack.url() + "/v2/models/iris_lr/infer", slots + 8, body)

    answered = [s for s in shots if s.status == 200]
    shed = [s for s in shots if s.status == 503]
    assert (len(answered), len(shed)) == (slots, 8), [(s.status, s.body) for s in shots]
    for shot in answered:
        label = next(o for o in shot.body["outputs"] if o["name"] == "label")
        assert (shot.body["id"], label["data"]) == ("s10", [0])
    for shot in shed:  # the protocol has no null answer: its error object, with Retry-After
        assert list(shot.body) == ["error"] and "MAX_INFLIGHT" in shot.body["error"]
        assert (shot.headers["retry-after"], shot.headers["x-fallback"]) == ("1", "overloaded")
    assert proxy.stats()["fallbacks"]["overloaded"] - overloaded_before == len(shed)
    meta = proxy.get("/v2/models/iris_lr")
    assert meta.status_code == 200
    assert meta.json()["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]


# -- what is and is not a failure -----------------------------------------------------------------


def test_bad_input_is_the_callers_fault_and_never_opens_a_breaker(
    stack: Stack, proxy: Client
) -> None:
    before = breakers(proxy)
    for body, status, names in BAD_PREDICT_BODIES:  # 10 in a row, threshold 3
        resp = post_body(proxy, "/predict", body)
        assert resp.status_code == status, resp.text
        assert names in resp.json()["message"]
        assert resp.headers["x-served-by"].startswith("predictor")  # the predictor said so
    after = breakers(proxy)
    for url, backend in after.items():
        assert backend["state"] == "closed"
        assert backend["consecutive_failures"] == 0
        assert backend["failures"] == before[url]["failures"]
    oversized = proxy.post("/predict", content=b"x" * (2 * 1024 * 1024),
                           headers={"content-type": "application/json"})
    assert oversized.status_code == 413  # refused by the proxy itself
    assert "MAX_BODY_BYTES" in oversized.json()["message"]
    assert predict(proxy).status_code == 200


def test_breaker_metrics_and_request_ids(stack: Stack, proxy: Client) -> None:
    resp = proxy.post("/predict", json={"data": [ROW]}, headers={"X-Request-ID": "cb-1"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "cb-1"
    assert resp.json()["request_id"] == "cb-1"  # passed on to the predictor

    report = proxy.get("/breaker").json()
    assert [b["url"] for b in report["backends"]] == stack.urls("predictor")
    assert report["states"] == {"closed": 2, "open": 0, "half_open": 0}
    for backend in report["backends"]:
        assert backend["fail_threshold"] == 3
        assert backend["cooldown_s"] == 2
        assert backend["limit"] == 5
        assert backend["opened_at"] is None
    metrics = proxy.get("/metrics").text
    for url in stack.urls("predictor"):
        assert f'circuit_break_breaker_state{{backend="{url}"}} 0.0' in metrics
        assert f'circuit_break_backend_in_flight{{backend="{url}"}} 0.0' in metrics


# -- other proxy settings, a hung replica (the shared stack, put back as it was) ------------------


def test_adding_a_replica_raises_the_share_of_real_answers(stack: Stack) -> None:
    first, _ = stack.urls("predictor")
    # BACKEND_URLS is the proxy's replica list: first one replica, then (put back) both
    with proxy_settings(stack, BACKEND_URLS=first):
        one, _ = split(burst(stack.url(), 30))
    two, _ = split(burst(stack.url(), 30))
    assert (len(one), len(two)) == (5, 10)  # MAX_INFLIGHT per replica
    assert {s.headers["x-served-by"] for s in one} == {"predictor-1"}
    assert {s.headers["x-served-by"] for s in two} == {"predictor-1", "predictor-2"}


def test_a_rate_cap_sheds_what_exceeds_max_rps_and_fallbacks_can_be_a_200(stack: Stack) -> None:
    with proxy_settings(stack, MAX_RPS="3", FALLBACK_STATUS="200") as proxy:
        shots = burst(stack.url(), 20)
        answered, fallbacks = split(shots)
        # a full bucket holds 3 tokens and refills at 3 per second while the burst arrives
        arrived_s = max(s.ms for s in fallbacks) / 1000
        assert 3 <= len(answered) <= 3 + int(3 * arrived_s) + 1, (len(answered), arrived_s)
        for shot in fallbacks:
            assert shot.status == 200  # FALLBACK_STATUS=200: a null answer, not an error
            assert "retry-after" not in shot.headers
            assert shot.headers["x-fallback"] == "rate_limited"
            assert (shot.body["prediction"], shot.body["reason"]) == (None, "rate_limited")
            assert "MAX_RPS" in shot.body["message"]
        assert proxy.stats()["fallbacks"]["rate_limited"] == len(fallbacks)
        assert proxy.get("/breaker").json()["rate"]["rate"] == 3
        wait_until(lambda: not predict(proxy).json().get("fallback"), timeout=5,
                   what="a token to come back")


def test_a_hung_backend_times_out_and_only_its_breaker_opens(stack: Stack, proxy: Client) -> None:
    timeout_ms = setting(stack, "proxy", "BACKEND_TIMEOUT_MS")
    hung = stack.url("predictor-1")
    stack.pause("predictor-1")  # alive, accepting connections, never answering
    try:
        shots = burst(stack.url(), 6)  # 3 per replica: the least busy one takes each call
    finally:
        stack.resume("predictor-1")
    timed_out = [s for s in shots if s.status == 504]
    assert len(timed_out) == 3, [(s.status, s.body) for s in shots]
    for shot in timed_out:
        assert shot.body["error"] == "backend_timeout"
        assert shot.body["message"] == (
            f"backend {hung}/predict did not answer within {timeout_ms} ms"
        )
        assert timeout_ms <= shot.ms < timeout_ms + 2000
    assert {s.headers["x-served-by"] for s in shots if s.answered} == {"predictor-2"}
    report = breakers(proxy)
    assert (report[hung]["state"], report[hung]["consecutive_failures"]) == ("open", 3)
    assert report[stack.url("predictor-2")]["state"] == "closed"
    resp = predict(proxy)  # the other replica still answers
    assert (resp.status_code, resp.headers["x-served-by"]) == (200, "predictor-2")
    # predictor-1 answers again: after the cooldown a trial call closes its breaker
    wait_until(lambda: predict(proxy).status_code == 200 and breakers(proxy)[hung]["state"]
               == "closed", timeout=10, what="predictor-1's breaker closing")


# -- the demo and its picture (the shared stack: the scenario puts the predictors back) ----------


def test_the_demo_sheds_breaks_heals_and_draws_it(stack: Stack, tmp_path: Path) -> None:
    rows = {row["step"]: row for row in scenario.run(stack, out=tmp_path)}

    over = rows["30 at once"]
    assert (over["answered"], over["fallbacks"], over["errors"]) == (10, "20 overloaded", 0)
    assert over["peak_in_flight"] == "5/5"
    failing = rows["predictors fail: 6 at once"]
    assert (failing["errors"], failing["breakers"]) == (6, "open / open")
    cut_off = rows["breakers open: 5 calls"]
    assert (cut_off["fallbacks"], cut_off["predictor_calls"]) == ("5 breaker_open", 0)
    healed = rows["10 at once, closed again"]
    assert (healed["answered"], healed["breakers"]) == (10, "closed / closed")
    check_picture(tmp_path / scenario.PICTURE)


# -- the error breaker -----------------------------------------------------------------------------


def test_failures_open_the_breaker_and_a_trial_after_the_cooldown_closes_it(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack(env={"predictor": {"FAIL_MODE": "always", "DELAY_MS": "100"}})
    replicas = stack.instances("predictor")
    url_of = {name: stack.url(name) for name in replicas}
    with Client(stack.url()) as proxy:
        # closed: calls reach the failing predictors until 3 in a row failed on each
        failed = 0
        while (resp := predict(proxy)).status_code == 502:
            assert "answered 500: injected failure" in resp.json()["message"]
            failed += 1
            assert failed <= 6, "the breakers did not open"
        assert failed == 6
        assert resp.status_code == 503
        assert resp.json()["reason"] == "breaker_open"
        report = breakers(proxy)
        for backend in report.values():
            assert backend["state"] == "open"
            assert (backend["consecutive_failures"], backend["opened"]) == (3, 1)
            assert backend["opened_at"] is not None

        # open: calls fall back at once and the predictors see nothing
        hits = predictor_hits(stack)
        for _ in range(5):
            resp = predict(proxy)
            assert resp.status_code == 503
            assert resp.json() | {"message": "", "request_id": ""} == {
                "prediction": None, "fallback": True, "reason": "breaker_open",
                "retry_after_s": int(resp.headers["retry-after"]), "message": "",
                "request_id": "",
            }
            assert resp.headers["retry-after"] in ("1", "2")  # the rest of COOLDOWN_S=2
        assert predictor_hits(stack) == hits

        # half-open after the cooldown: one trial per backend goes through, the rest fall back
        wait_until(lambda: states(proxy) == ["half_open", "half_open"], timeout=5,
                   what="both breakers turning half-open")
        shots = burst(stack.url(), 6)
        trials = [s for s in shots if not s.fallback]
        fallbacks = [s for s in shots if s.fallback]
        assert predictor_hits(stack) == hits + 2
        assert sorted(s.status for s in trials) == [502, 502]  # the trials failed ...
        assert {s.body["reason"] for s in fallbacks} == {"breaker_open"}
        for backend in breakers(proxy).values():  # ... so both breakers opened again
            assert (backend["state"], backend["opened"]) == ("open", 2)

        # predictor-1 healthy again: after the cooldown its trial succeeds and closes its
        # breaker; predictor-2 still fails, so its trial opens its breaker once more
        stack.restart("predictor-1", env={"FAIL_MODE": "none"})
        wait_until(lambda: states(proxy) == ["half_open", "half_open"], timeout=5,
                   what="the cooldown ending")
        resp = predict(proxy)  # the first half-open backend gets the trial: predictor-1
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-served-by"] == "predictor-1"
        healed = breakers(proxy)[url_of["predictor-1"]]
        assert (healed["state"], healed["consecutive_failures"]) == ("closed", 0)
        resp = predict(proxy)  # predictor-2's trial
        assert resp.status_code == 502
        assert states(proxy) == ["closed", "open"]
        cut_off = predictor_stats(stack)["predictor-2"]["hits"]
        shots = burst(stack.url(), 5)  # predictor-1 alone takes these
        assert all(s.answered and s.headers["x-served-by"] == "predictor-1" for s in shots)
        assert predictor_stats(stack)["predictor-2"]["hits"] == cut_off
        metrics = proxy.get("/metrics").text
        opened = {url_of["predictor-1"]: "2.0", url_of["predictor-2"]: "3.0"}
        for url, times in opened.items():
            assert f'circuit_break_breaker_opened_total{{backend="{url}"}} {times}' in metrics
        assert f'circuit_break_breaker_state{{backend="{url_of["predictor-1"]}"}} 0.0' in metrics
        assert f'circuit_break_breaker_state{{backend="{url_of["predictor-2"]}"}} 2.0' in metrics
        assert proxy.stats()["fallbacks"]["breaker_open"] == 1 + 5 + len(fallbacks)
