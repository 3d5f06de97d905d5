"""S6 integration tests: a real proxy chaining two real, deliberately slow predictors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from patternkit.client import IRIS_ROWS, Client
from patternkit.models import OnnxModel, load_dataset, train_model
from patternkit.topology import Stack

SETOSA, VERSICOLOR, VIRGINICA = (row for row, _ in IRIS_ROWS)


@pytest.fixture
def proxy(stack: Stack) -> Iterator[Client]:
    with Client(stack.url()) as client:
        yield client


def hits(stack: Stack, service: str) -> int:
    with Client(stack.url(service)) as client:
        return int(client.stats()["hits"])


def delay_ms(stack: Stack, service: str) -> int:
    return int(stack.proc(service).env["DELAY_MS"])


def test_a_non_setosa_row_runs_both_stages_in_order(stack: Stack, proxy: Client) -> None:
    before = hits(stack, "stage1"), hits(stack, "stage2")
    resp, ms = proxy.timed("POST", "/predict", json={"data": [VERSICOLOR]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["prediction"] == [1]
    assert body["labels"] == ["versicolor"]
    assert body["decided_by"] == ["stage2"]
    trace = body["trace"]
    assert [t["name"] for t in trace] == ["stage1", "stage2"]
    assert [t["model"] for t in trace] == ["iris_setosa", "versicolor_vs_virginica"]
    assert [t["served_by"] for t in trace] == ["stage1", "stage2"]
    assert all(t["version"] == "1.0.0" for t in trace)
    # the stages ran one after the other: the user waits for the sum of their delays
    assert trace[0]["ms"] >= delay_ms(stack, "stage1")
    assert trace[1]["ms"] >= delay_ms(stack, "stage2")
    assert ms >= delay_ms(stack, "stage1") + delay_ms(stack, "stage2")
    assert (hits(stack, "stage1"), hits(stack, "stage2")) == (before[0] + 1, before[1] + 1)


def test_a_setosa_row_stops_after_stage1(stack: Stack, proxy: Client) -> None:
    stage2_before = hits(stack, "stage2")
    chain_before = proxy.stats()["chain"]
    resp = proxy.post("/predict", json={"data": [SETOSA]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["labels"] == ["setosa"]
    assert body["decided_by"] == ["stage1"]
    assert [t["name"] for t in body["trace"]] == ["stage1"]
    assert hits(stack, "stage2") == stage2_before  # stage 2 was never called
    chain = proxy.stats()["chain"]
    assert chain["stage1_calls"] == chain_before["stage1_calls"] + 1
    assert chain["stage2_calls"] == chain_before["stage2_calls"]
    assert chain["rows_done_at_stage1"] == chain_before["rows_done_at_stage1"] + 1


def test_a_batch_sends_only_the_undecided_rows_on(stack: Stack, proxy: Client) -> None:
    stage2_before = hits(stack, "stage2")
    resp = proxy.post("/predict", json={"data": [VIRGINICA, SETOSA, VERSICOLOR]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["labels"] == ["virginica", "setosa", "versicolor"]
    assert body["decided_by"] == ["stage2", "stage1", "stage2"]
    assert [t["rows"] for t in body["trace"]] == [[0, 1, 2], [0, 2]]
    assert hits(stack, "stage2") == stage2_before + 1  # one call for both rows


def test_labels_agree_with_the_3_class_model(
    stack: Stack, proxy: Client, tmp_path: Path
) -> None:
    X, y, _, _ = load_dataset("iris")
    train_model("iris_lr", tmp_path / "iris_lr")
    reference = OnnxModel(tmp_path / "iris_lr").predict(X).labels.tolist()
    resp = proxy.post("/predict", json={"data": X.tolist()})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    labels = body["prediction"]
    agree = sum(a == b for a, b in zip(labels, reference, strict=True)) / len(X)
    assert agree >= 0.95, agree
    assert sum(a == b for a, b in zip(labels, y.tolist(), strict=True)) / len(X) >= 0.9
    # stage 2 saw exactly the rows stage 1 did not call setosa
    stage1, stage2 = body["trace"]
    assert len(stage1["rows"]) == len(X)
    assert stage2["rows"] == [i for i, label in enumerate(labels) if label != 0]


def test_the_request_id_is_kept(proxy: Client) -> None:
    resp = proxy.post("/predict", json={"data": [VIRGINICA]}, headers={"X-Request-ID": "v-42"})
    assert resp.headers["x-request-id"] == "v-42"
    assert resp.headers["x-served-by"] == "proxy"
    assert resp.json()["request_id"] == "v-42"


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"data": [[5.1, 3.5, 1.4]]}, 422, "expected 4 features"),
        ({"data": []}, 422, "body.data"),
        ('{"data": [[NaN, 3.5, 1.4, 0.2]]}', 422, "finite"),
        ("{not json", 422, "JSON"),
        ({"data": [SETOSA] * 1001}, 413, "MAX_BATCH_ROWS"),
    ],
)
def test_bad_input_gets_a_4xx_and_reaches_no_stage(
    stack: Stack, proxy: Client, body: object, status: int, names: str
) -> None:
    before = hits(stack, "stage1")
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    resp = proxy.post("/predict", headers={"content-type": "application/json"}, **kwargs)
    assert resp.status_code == status, resp.text
    assert names in resp.json()["message"]
    assert hits(stack, "stage1") == before


def test_a_failing_stage_is_named_and_setosa_rows_still_get_answers(
    fresh_stack: Callable[..., Stack],
) -> None:
    timeout_ms = 600
    stack = fresh_stack(env={"stage2": {"DELAY_MS": "3000"},
                             "proxy": {"STAGE_TIMEOUT_MS": str(timeout_ms)}})
    with Client(stack.url()) as proxy:
        # stage 2 too slow: a 504 naming it, at about stage 1's delay plus the timeout
        resp, ms = proxy.timed("POST", "/predict", json={"data": [VERSICOLOR]})
        assert resp.status_code == 504, resp.text
        err = resp.json()
        assert err["error"] == "backend_timeout"
        assert err["message"].startswith("stage2: no answer within 600 ms")
        assert err["details"][0]["backend"] == "stage2"
        assert delay_ms(stack, "stage1") + timeout_ms <= ms < 3000
        assert proxy.post("/predict", json={"data": [SETOSA]}).status_code == 200

        # stage 2 failing: a 502 naming it and what it said, never a 500
        stack.restart("stage2", env={"DELAY_MS": "0", "FAIL_MODE": "always"})
        resp = proxy.post("/predict", json={"data": [VIRGINICA]})
        assert resp.status_code == 502, resp.text
        assert resp.json()["message"].startswith("stage2: answered 500: injected failure")

        # stage 2 down: a 502 naming it; setosa rows never needed it
        stack.kill("stage2")
        for row in (VERSICOLOR, VIRGINICA):
            resp = proxy.post("/predict", json={"data": [row]})
            assert resp.status_code == 502, resp.text
            assert resp.json()["error"] == "backend_unavailable"
            assert resp.json()["message"].startswith("stage2: unreachable")
        resp = proxy.post("/predict", json={"data": [SETOSA]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["labels"] == ["setosa"]

        # and with stage 1 down too, nothing can be answered: the error names stage 1
        stack.kill("stage1")
        resp = proxy.post("/predict", json={"data": [SETOSA]})
        assert resp.status_code == 502, resp.text
        assert resp.json()["message"].startswith("stage1: unreachable")
