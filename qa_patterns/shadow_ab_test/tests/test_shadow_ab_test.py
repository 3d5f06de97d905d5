"""Q1 integration tests: a real proxy in front of A, mirroring to a slow B and to A' (A's
retrain), every answer logged to the SQL backing by request id."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.db import make_engine
from patternkit.models import OnnxModel, load_dataset
from patternkit.predlog import read_predictions
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack
from qa_patterns.shadow_ab_test.mirror import selected
from qa_patterns.shadow_ab_test.proxy import TABLE_PREFIX

VIRGINICA = IRIS_ROWS[2][0]
_ids = itertools.count(1)


# B's injected delay and the mirror's deadline are kept by event-loop timers, which may fire
# a fraction of a millisecond early: a latency floor they set has this margin
EARLY_MS = 5

def new_id(what: str) -> str:
    return f"{what}-{next(_ids)}-{time.monotonic_ns()}"


@pytest.fixture
def proxy(entry: Client) -> Client:
    return entry


@pytest.fixture
def engine(stack: Stack) -> Iterator[sa.Engine]:
    eng = make_engine(stack.url("db"))
    yield eng
    eng.dispose()


def predict(client: Client, row: list[float], rid: str) -> httpx.Response:
    resp = client.post("/predict", json={"data": [row]}, headers={"x-request-id": rid})
    assert resp.status_code == 200, resp.text
    return resp


def logged(engine: sa.Engine, rids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """request id -> service -> its log row."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for row in read_predictions(engine, TABLE_PREFIX, request_ids=rids):
        found.setdefault(row["request_id"], {})[row["service"]] = row
    return found


def wait_logged(
    engine: sa.Engine, rids: list[str], services: set[str], timeout: float = 15
) -> dict[str, dict[str, dict[str, Any]]]:
    def complete() -> dict[str, dict[str, dict[str, Any]]] | None:
        rows = logged(engine, rids)
        return rows if all(set(rows.get(r, {})) >= services for r in rids) else None

    return wait_until(complete, timeout=timeout, interval=0.1,
                      what=f"{services} rows for {len(rids)} request ids")


def set_fraction(proxy: Client, fraction: float) -> None:
    resp = proxy.request("PUT", "/config", json={"mirror_fraction": fraction})
    assert resp.status_code == 200, resp.text
    assert resp.json()["mirror_fraction"] == fraction


def wait_idle(proxy: Client, timeout: float = 20) -> None:
    """Until every mirrored request has been sent and answered (or has failed)."""
    def idle() -> bool:
        mirror = proxy.stats()["mirror"]
        return mirror["queued"] == 0 and mirror["in_flight"] == 0

    wait_until(idle, timeout=timeout, interval=0.1, what="the mirror queue draining")


def test_the_client_gets_a_and_the_log_holds_a_a_prime_and_b_by_request_id(
    stack: Stack, proxy: Client, engine: sa.Engine
) -> None:
    rid = new_id("join")
    resp = predict(proxy, VIRGINICA, rid)
    with Client(stack.url("a")) as a, Client(stack.url("b")) as b:
        direct_a = a.post("/predict", json={"data": [VIRGINICA]}, headers={"x-request-id": rid})
        direct_b = b.post("/predict", json={"data": [VIRGINICA]}, headers={"x-request-id": rid})
    assert resp.content == direct_a.content  # A's reply, byte for byte
    assert resp.headers["x-served-by"] == direct_a.headers["x-served-by"] == "a"
    assert resp.headers["x-model-version"] == "1.0.0"
    assert resp.headers["x-request-id"] == rid
    assert resp.headers["x-shadow"] == "mirrored"
    assert resp.json()["model"] == "iris_lr"

    rows = wait_logged(engine, [rid], {"a", "a_prime", "b"})[rid]
    a_row, b_row, twin = rows["a"], rows["b"], rows["a_prime"]
    assert a_row["input"] == [VIRGINICA]
    assert a_row["output"] == {k: direct_a.json()[k] for k in ("prediction", "probabilities")}
    assert (a_row["model"], a_row["extra"]["shadow"]) == ("iris_lr", "mirrored")
    assert b_row["output"] == {k: direct_b.json()[k] for k in ("prediction", "probabilities")}
    assert (b_row["model"], b_row["extra"]["served_by"]) == ("iris_rf", "b")
    assert b_row["latency_ms"] >= int(stack.proc("b").env["DELAY_MS"]) - EARLY_MS
    assert (twin["model"], twin["extra"]["served_by"]) == ("iris_lr", "a_prime")
    assert twin["output"]["prediction"] == [2]
    assert b_row["input"] is None and twin["input"] is None  # the rows are on A's row only


def test_bad_input_is_refused_before_a_or_any_shadow_sees_it(
    stack: Stack, proxy: Client
) -> None:
    with Client(stack.url("a")) as a:
        hits = a.stats()["hits"]
        before = proxy.stats()["mirror"]
        for body, status, names in BAD_PREDICT_BODIES:
            resp = post_body(proxy, "/predict", body)
            assert resp.status_code == status, resp.text
            assert names in resp.json()["message"]
            assert "x-shadow" not in resp.headers
        assert a.stats()["hits"] == hits
    after = proxy.stats()["mirror"]
    assert {k: after[k] for k in ("mirrored", "skipped", "dropped")} == {
        k: before[k] for k in ("mirrored", "skipped", "dropped")}


def test_the_report_compares_b_with_a_against_the_noise_of_a_retrain(
    stack: Stack, proxy: Client
) -> None:
    X, _, _, _ = load_dataset("iris")
    since = datetime.now(UTC)
    rids = [new_id("iris") for _ in range(len(X))]
    for rid, row in zip(rids, X.tolist(), strict=True):
        assert predict(proxy, row, rid).headers["x-shadow"] == "mirrored"
    wait_idle(proxy)
    report = proxy.get("/shadow/report", params={"since": since.isoformat()}).json()

    # the same comparison, computed here from the three model files of the run
    models = {name: OnnxModel(stack.run_dir / "models" / name).predict(X)
              for name in ("a", "a_prime", "b")}
    # as the predictors send them: float32 in orjson's shortest form, read back as floats
    p = {name: np.asarray(orjson.loads(orjson.dumps(m.probabilities,
                                                     option=orjson.OPT_SERIALIZE_NUMPY)))
         for name, m in models.items()}
    d_ab = np.abs(p["a"] - p["b"]).max(axis=1)
    d_aa = np.abs(p["a"] - p["a_prime"]).max(axis=1)
    floor = float(np.quantile(d_aa, 0.99))
    raw_labels = int((models["a"].labels != models["b"].labels).sum())
    noise_labels = int((models["a"].labels != models["a_prime"].labels).sum())

    assert (report["requests"], report["compared_rows"], report["pending"]) == (150, 150, 0)
    assert report["mirror_decisions"] == {"mirrored": 150}
    labels, probs = report["labels"], report["probabilities"]
    assert (labels["raw"], labels["noise"]) == (raw_labels, noise_labels)
    assert labels["agreement_a_b"] == round(1 - raw_labels / 150, 4)
    assert probs["noise_floor"] == pytest.approx(floor, abs=1e-5)
    assert probs["diff_a_b"]["p50"] == pytest.approx(np.quantile(d_ab, 0.5), abs=1e-4)
    assert probs["diff_a_b"]["max"] == pytest.approx(d_ab.max(), abs=1e-4)
    assert probs["diff_a_a_prime"]["p99"] == pytest.approx(floor, abs=1e-4)
    assert probs["raw"] == report["flagged_rows"] == int((d_ab > floor).sum())
    assert probs["noise"] == int((d_aa > floor).sum()) <= 2  # the top 1% of 150 rows
    # a retrain of A changes no label and little probability; B does more than that
    assert 0 < floor < 0.1 and probs["diff_a_b"]["p50"] > floor
    assert labels["flagged"] and probs["flagged"]
    assert report["verdict"] == ("B differs from A beyond A's retrain noise in: labels, "
                                 "probabilities")
    flagged = report["flagged"]
    assert flagged and all(f["diff_a_b"] > floor for f in flagged)
    assert flagged == sorted(flagged, key=lambda f: -f["diff_a_b"])
    assert {f["request_id"] for f in flagged} <= set(rids)

    delay = int(stack.proc("b").env["DELAY_MS"])
    lat = report["latency"]
    assert lat["b"]["n"] == lat["a"]["n"] == 150
    assert lat["b"]["p50_ms"] >= delay - EARLY_MS and delay > 2 * lat["a"]["p50_ms"]
    assert report["errors"]["b"] == {"calls": 150, "errors": 0, "rate": 0.0, "by_error": {}}

    later = proxy.get("/shadow/report", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert (later["requests"], later["verdict"]) == (0, "nothing compared yet")
    bad = proxy.get("/shadow/report", params={"since": "yesterday"})
    assert bad.status_code == 422 and "since" in bad.json()["message"]


def test_mirror_fraction_changes_at_runtime_and_picks_requests_by_id_hash(
    proxy: Client, engine: sa.Engine
) -> None:
    rids = [f"half-{i}" for i in range(200)]  # fixed ids: the same ones are picked every run
    expected = {rid for rid in rids if selected(rid, 0.5)}
    # a Binomial(200, 0.5) count for uniform hashes: within 5 sigma of 100 (~1e-6 outside)
    assert 65 <= len(expected) <= 135
    set_fraction(proxy, 0.5)
    try:
        assert proxy.get("/config").json()["mirror_fraction"] == 0.5
        before = proxy.stats()["mirror"]
        shadow = {rid: predict(proxy, VIRGINICA, rid).headers["x-shadow"] for rid in rids}
        assert {rid for rid, s in shadow.items() if s == "mirrored"} == expected
        assert {s for rid, s in shadow.items() if rid not in expected} == {"skipped"}
        after = proxy.stats()["mirror"]
        assert after["mirrored"] - before["mirrored"] == len(expected)
        assert after["skipped"] - before["skipped"] == len(rids) - len(expected)

        set_fraction(proxy, 0.0)
        assert predict(proxy, VIRGINICA, new_id("off")).headers["x-shadow"] == "skipped"
    finally:
        set_fraction(proxy, 1.0)
    wait_logged(engine, sorted(expected), {"a", "a_prime", "b"})
    rows = wait_logged(engine, rids, {"a"})
    assert {rid for rid, got in rows.items() if "b" in got} == expected
    assert {rid for rid, got in rows.items() if "a_prime" in got} == expected

    for bad in ({"mirror_fraction": 1.5}, {"mirror_fraction": -0.1},
                {"mirror_fraction": "half"}, {}, {"mirror_fraction": 0.5, "extra": 1}):
        resp = proxy.request("PUT", "/config", json=bad)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["error"] == "validation_error"
    assert proxy.get("/config").json()["mirror_fraction"] == 1.0


def client_latency(proxy: Client, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        resp, ms = proxy.timed("POST", "/predict", json={"data": [VIRGINICA]})
        assert resp.status_code == 200, resp.text
        samples.append(ms)
    return samples


def test_a_slow_failing_b_leaves_the_clients_latency_as_without_a_shadow(
    stack: Stack, proxy: Client, engine: sa.Engine
) -> None:
    delay = int(stack.proc("b").env["DELAY_MS"])
    stack.restart("b", env={"FAIL_MODE": "always"})  # 500 ms, then a 500 error, every call
    try:
        before = proxy.stats()["mirror"]["calls"]["b"]
        since = datetime.now(UTC)
        off: list[float] = []
        on: list[float] = []
        for _ in range(4):  # interleaved blocks: a busy machine slows both alike
            set_fraction(proxy, 0.0)
            off += client_latency(proxy, 10)
            set_fraction(proxy, 1.0)
            on += client_latency(proxy, 10)
        # the mirror's own work costs a few ms of CPU on a shared 2-core machine; had a reply
        # waited for B, the ratio would be over 20 and the gap over 500 ms
        median_on, median_off = statistics.median(on), statistics.median(off)
        assert median_on / median_off < 2.5, (sorted(on), sorted(off))
        assert median_on - median_off < delay / 10, (sorted(on), sorted(off))
        assert sorted(on)[int(0.9 * len(on))] < delay / 2, sorted(on)
        wait_idle(proxy)
        after = proxy.stats()["mirror"]["calls"]["b"]
        assert after["backend_error"] - before["backend_error"] == 40
        assert after["ok"] == before["ok"]

        report = proxy.get("/shadow/report", params={"since": since.isoformat()}).json()
        assert report["errors"]["b"]["errors"] == 40 and report["errors"]["b"]["rate"] == 1.0
        assert report["errors"]["b"]["by_error"] == {"backend_error": 40}
        assert report["errors"]["a_prime"]["errors"] == 0
        assert report["latency"]["b"]["n"] == 0  # no B answer to time
        assert report["compared_rows"] == 0
        failed = read_predictions(engine, TABLE_PREFIX, since=since, services=["b"])
        assert len(failed) == 40
        for r in failed:
            assert r["output"] is None and r["extra"]["error"] == "backend_error", r
            assert "injected" in r["extra"]["reason"] and r["latency_ms"] >= delay - EARLY_MS, r
    finally:
        stack.restart("b", env={"FAIL_MODE": "none"})


def test_a_full_mirror_queue_drops_and_counts_and_timeouts_are_logged(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack(env={
        "b": {"DELAY_MS": "3000"},  # far slower than the mirror's deadline
        "proxy": {"MIRROR_QUEUE": "2", "MIRROR_CONCURRENCY": "1", "MIRROR_TIMEOUT_MS": "1000",
                  "A_PRIME_URL": ""},
    })
    engine = make_engine(stack.url("db"))
    try:
        with Client(stack.url()) as proxy:
            rids = [new_id("burst") for _ in range(20)]
            shadow, slowest = {}, 0.0
            for rid in rids:
                resp, ms = proxy.timed("POST", "/predict", json={"data": [VIRGINICA]},
                                       headers={"x-request-id": rid})
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-served-by"] == "a"
                shadow[rid] = resp.headers["x-shadow"]
                slowest = max(slowest, ms)
            mirrored = [rid for rid in rids if shadow[rid] == "mirrored"]
            dropped = [rid for rid in rids if shadow[rid] == "dropped"]
            # one in flight and two queued; the next found the queue full (B holds each call
            # for the whole 1 s deadline; a slot frees once a second, 20 calls to A take less)
            assert len(mirrored) + len(dropped) == 20
            assert mirrored[:3] == rids[:3] and len(dropped) >= 10, shadow
            assert slowest < 1000, slowest  # no reply waited for the 3 s B
            stats = proxy.stats()["mirror"]
            assert (stats["mirrored"], stats["dropped"]) == (len(mirrored), len(dropped))
            assert proxy.get("/config").json()["mirror_queue"] == 2

            rows = wait_logged(engine, mirrored, {"a", "b"}, timeout=20)
            for rid in mirrored:
                b_row = rows[rid]["b"]
                assert b_row["extra"]["error"] == "backend_timeout", b_row
                assert "1000 ms" in b_row["extra"]["reason"]
                assert 1000 - EARLY_MS <= b_row["latency_ms"] < 3000
            assert "a_prime" not in rows[mirrored[0]]  # A_PRIME_URL empty: no floor
            a_rows = logged(engine, dropped)
            assert {a_rows[rid]["a"]["extra"]["shadow"] for rid in dropped} == {"dropped"}
            assert not any("b" in a_rows[rid] for rid in dropped)
            report = proxy.get("/shadow/report").json()
            assert report["errors"]["b"]["by_error"] == {"backend_timeout": len(mirrored)}
            assert report["mirror_decisions"] == {"mirrored": len(mirrored),
                                                  "dropped": len(dropped)}
            assert "a_prime" not in report["errors"]
    finally:
        engine.dispose()
