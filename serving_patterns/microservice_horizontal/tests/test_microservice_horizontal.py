"""S7 integration tests: a real fan-out proxy over three real, deliberately slow predictors."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from patternkit.client import IRIS_ROWS, Client
from patternkit.models import OnnxModel, load_dataset, train_model
from patternkit.topology import Stack

MODELS = ("setosa", "versicolor", "virginica")
SETOSA, VERSICOLOR, VIRGINICA = (row for row, _ in IRIS_ROWS)


@pytest.fixture
def proxy(stack: Stack) -> Iterator[Client]:
    with Client(stack.url()) as client:
        yield client


def hits(stack: Stack) -> dict[str, int]:
    found = {}
    for name in MODELS:
        with Client(stack.url(name)) as client:
            found[name] = int(client.stats()["hits"])
    return found


def delays(stack: Stack) -> dict[str, int]:
    return {name: int(stack.proc(name).env["DELAY_MS"]) for name in MODELS}


def test_latency_is_about_the_slowest_model_not_the_sum(stack: Stack, proxy: Client) -> None:
    before = hits(stack)
    samples = []
    for _ in range(5):
        resp, ms = proxy.timed("POST", "/predict", json={"data": [VIRGINICA]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["complete"] is True
        samples.append(ms)
    slowest, total = max(delays(stack).values()), sum(delays(stack).values())
    assert min(samples) >= slowest  # every answer waited for the slowest model
    assert statistics.median(samples) < 0.7 * total, samples  # but not for the sum
    assert hits(stack) == {name: count + 5 for name, count in before.items()}


def test_the_reply_has_each_models_output(proxy: Client) -> None:
    for features, expected in IRIS_ROWS:
        resp = proxy.post("/predict", json={"data": [features]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["prediction"] == [expected]
        assert body["labels"] == [MODELS[expected]]
        assert (body["complete"], body["missing"], body["errors"]) == (True, [], {})
        assert list(body["models"]) == list(MODELS)
        positive = []
        for name, out in body["models"].items():
            assert out["model"] == f"iris_{name}"
            assert out["served_by"] == name
            assert out["version"] == "1.0.0"
            assert len(out["probabilities"]) == 1 and len(out["probabilities"][0]) == 2
            positive.append(out["probabilities"][0][1])
        # the aggregate is the model most sure of its own class
        assert positive.index(max(positive)) == expected


def test_the_aggregate_mostly_matches_the_3_class_model(proxy: Client, tmp_path: Path) -> None:
    X, y, _, _ = load_dataset("iris")
    train_model("iris_lr", tmp_path / "iris_lr")
    reference = OnnxModel(tmp_path / "iris_lr").predict(X).labels.tolist()
    resp = proxy.post("/predict", json={"data": X.tolist()})
    assert resp.status_code == 200, resp.text
    labels = resp.json()["prediction"]
    assert len(labels) == len(X)
    agree = sum(a == b for a, b in zip(labels, reference, strict=True)) / len(X)
    assert agree >= 0.9, agree
    assert sum(a == b for a, b in zip(labels, y.tolist(), strict=True)) / len(X) >= 0.85


def test_the_request_id_is_kept(proxy: Client) -> None:
    resp = proxy.post("/predict", json={"data": [SETOSA]}, headers={"X-Request-ID": "h-7"})
    assert resp.headers["x-request-id"] == "h-7"
    assert resp.headers["x-served-by"] == "proxy"
    assert resp.json()["request_id"] == "h-7"


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"data": [[5.1, 3.5, 1.4]]}, 422, "expected 4 features"),
        ({"data": [[5.1, 3.5, 1.4, "x"]]}, 422, "body.data.0.3"),
        ('{"data": [[Infinity, 3.5, 1.4, 0.2]]}', 422, "finite"),
        ({"rows": [SETOSA]}, 422, "body.data"),
        ({"data": [SETOSA] * 1001}, 413, "MAX_BATCH_ROWS"),
    ],
)
def test_bad_input_gets_a_4xx_and_reaches_no_model(
    stack: Stack, proxy: Client, body: object, status: int, names: str
) -> None:
    before = hits(stack)
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    resp = proxy.post("/predict", headers={"content-type": "application/json"}, **kwargs)
    assert resp.status_code == status, resp.text
    assert names in resp.json()["message"]
    assert hits(stack) == before


def test_a_slow_or_dead_model_gives_a_partial_answer_naming_it(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack(env={"virginica": {"DELAY_MS": "4000"}})
    timeout_ms = int(stack.proc("proxy").env["BACKEND_TIMEOUT_MS"])
    with Client(stack.url()) as proxy:
        # virginica slower than the timeout: the others' answer, at about the timeout
        resp, ms = proxy.timed("POST", "/predict", json={"data": [VERSICOLOR]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert timeout_ms <= ms < timeout_ms + 1500, ms  # far below virginica's 4 s
        assert body["complete"] is False
        assert body["missing"] == ["virginica"]
        assert body["errors"]["virginica"]["error"] == "backend_timeout"
        assert body["errors"]["virginica"]["reason"] == f"no answer within {timeout_ms} ms"
        assert list(body["models"]) == ["setosa", "versicolor"]
        assert body["labels"] == ["versicolor"]
        fanout = proxy.stats()["fanout"]
        assert (fanout["partial"], fanout["missing"]["virginica"]) == (1, 1)

        # virginica killed: still a partial answer naming it, and without waiting for it
        stack.kill("virginica")
        resp, ms = proxy.timed("POST", "/predict", json={"data": [SETOSA]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["missing"] == ["virginica"]
        assert body["errors"]["virginica"]["error"] == "backend_unavailable"
        assert body["errors"]["virginica"]["reason"].startswith("unreachable")
        assert body["labels"] == ["setosa"]
        assert ms < timeout_ms, ms

        # nobody left: a 502 naming every model, never a 500
        stack.kill("setosa")
        stack.kill("versicolor")
        resp = proxy.post("/predict", json={"data": [SETOSA]})
        assert resp.status_code == 502, resp.text
        err = resp.json()
        assert err["error"] == "no_backend_answered"
        assert [d["backend"] for d in err["details"]] == list(MODELS)
        assert all(f"{name}: unreachable" in err["message"] for name in MODELS)
