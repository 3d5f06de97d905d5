"""S1 integration tests: real predictors behind the real LB, over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from patternkit.client import Client
from patternkit.models import load_dataset
from patternkit.testing import BAD_PREDICT_BODIES, extra_instance, post_body
from patternkit.topology import Stack


@pytest.fixture
def lb(entry: Client) -> Client:
    return entry


def test_predictions_match_the_offline_pipeline(stack: Stack, lb: Client) -> None:
    # the offline pipeline, refitted from the manifest's recipe, is the reference
    from patternkit.models import build_pipeline

    manifest = json.loads((Path(stack.run_dir) / "models/iris_lr/manifest.json").read_text())
    X, y, _, _ = load_dataset("iris")
    from sklearn.model_selection import train_test_split

    X_train, _, y_train, _ = train_test_split(
        X, y, test_size=0.3, random_state=manifest["seed"], stratify=y
    )
    offline = build_pipeline(manifest["estimator"], manifest["seed"]).fit(X_train, y_train)
    resp = lb.post("/predict", json={"data": X.tolist()})
    assert resp.status_code == 200
    body = resp.json()
    assert body["prediction"] == offline.predict(X).tolist()
    np.testing.assert_allclose(body["probabilities"], offline.predict_proba(X), atol=1e-5)
    assert body["model"] == "iris_lr"


def test_metadata_shows_the_model_version(stack: Stack) -> None:
    for url in stack.urls("predictor"):
        with Client(url) as predictor:
            meta = predictor.get("/metadata").json()
            assert meta["model_version"] == "1.0.0"
            assert meta["model"]["name"] == "iris_lr"
            assert len(meta["model"]["sha256"]) == 64
    resp = Client(stack.url()).post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
    assert resp.headers["x-model-version"] == "1.0.0"


def test_lb_reaches_both_replicas(lb: Client) -> None:
    served = {
        lb.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).headers["x-served-by"]
        for _ in range(10)
    }
    assert served == {"predictor-1", "predictor-2"}


def test_request_id_is_propagated_or_generated(lb: Client) -> None:
    given = lb.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]},
                    headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    assert given.json()["request_id"] == "abc-123"
    generated = lb.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
    assert len(generated.headers["x-request-id"]) >= 16


@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_gets_a_clear_4xx(lb: Client, body: object, status: int, names: str) -> None:
    resp = post_body(lb, "/predict", body)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert names in error["message"]
    assert error["error"] in ("validation_error", "payload_too_large")


def test_oversized_body_is_refused_before_it_is_read(lb: Client) -> None:
    resp = lb.post("/predict", content=b"x" * (2 * 1024 * 1024),
                   headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert "MAX_BODY_BYTES" in resp.json()["message"]


def test_readiness_metrics_and_stats(stack: Stack, lb: Client) -> None:
    assert lb.get("/ready").status_code == 200
    assert lb.get("/health").json()["status"] == "ok"
    lb.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
    metrics = lb.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/predict",status="200"}' in metrics
    assert "http_request_duration_seconds_bucket" in metrics
    hits = [Client(u).stats()["hits"] for u in stack.urls("predictor")]
    assert all(h > 0 for h in hits)


OIP_INFER = "/v2/models/iris_lr/infer"
OIP_BODY = {"id": "s1", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                    "data": [5.1, 3.5, 1.4, 0.2]}]}


def test_the_open_inference_protocol_passes_through_the_lb(lb: Client) -> None:
    replies = [lb.post(OIP_INFER, json=OIP_BODY) for _ in range(4)]
    assert [r.status_code for r in replies] == [200] * 4, replies[0].text
    for reply in replies:
        body = reply.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("iris_lr", "1.0.0",
                                                                          "s1")
        label = next(o for o in body["outputs"] if o["name"] == "label")
        assert (label["datatype"], label["data"]) == ("INT64", [0])
    assert {r.headers["x-served-by"] for r in replies} == {"predictor-1", "predictor-2"}
    assert lb.get("/v2/health/ready").json() == {"ready": True}
    meta = lb.get("/v2/models/iris_lr").json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    # the replica's protocol errors come through as they are, and so does the LB's own 413
    bad = lb.post(OIP_INFER, json={"inputs": [{**OIP_BODY["inputs"][0], "shape": [1, 3]}]})
    assert bad.status_code == 400
    assert "does not match" in bad.json()["error"]
    assert lb.get("/v2/models/iris_rf").status_code == 404
    big = lb.post(OIP_INFER, content=b"x" * (2 * 1024 * 1024),
                  headers={"content-type": "application/json"})
    assert big.status_code == 413
    assert list(big.json()) == ["error"] and "MAX_BODY_BYTES" in big.json()["error"]


def test_the_lb_counts_each_replicas_calls_predict_and_v2_alike(stack: Stack, lb: Client) -> None:
    urls = stack.urls("predictor")
    before = lb.stats()["forwarded"]
    assert set(before) == set(urls)
    for _ in range(3):
        assert lb.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
        assert lb.post(OIP_INFER, json=OIP_BODY).status_code == 200
    after = lb.stats()["forwarded"]
    gained = {url: after[url] - before[url] for url in urls}
    assert sum(gained.values()) == 6
    assert set(gained.values()) == {3}  # in turn: three calls each
    metrics = lb.get("/metrics").text
    assert all(f'lb_forwarded_total{{backend="{url}"}}' in metrics for url in urls)
    assert lb.get("/metadata").json()["backend_timeout_ms"] == 5000


def test_a_replica_slower_than_backend_timeout_ms_is_a_504_naming_it(stack: Stack) -> None:
    with (
        extra_instance(stack, "predictor", env={"DELAY_MS": "1500"}) as slow,
        extra_instance(stack, "lb", env={"BACKEND_URLS": slow.url,
                                         "BACKEND_TIMEOUT_MS": "300"}) as lb,
    ):
        with Client(slow.url) as direct:
            direct.wait_ready()
        with Client(lb.url) as client:
            client.wait_ready()
            resp = client.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
            oip = client.post(OIP_INFER, json=OIP_BODY)
            forwarded = client.stats()["forwarded"]
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"] == "backend_timeout"
    assert resp.json()["message"] == (
        f"backend {slow.url}/predict did not answer within 300 ms")
    assert oip.status_code == 504
    assert "did not answer within 300 ms" in oip.json()["error"]
    assert forwarded == {slow.url: 0}  # a call with no reply is not counted as forwarded


def test_losing_a_replica_costs_capacity_not_answers(fresh_stack) -> None:
    stack = fresh_stack()
    stack.kill("predictor-2")
    with Client(stack.url()) as lb:
        replies = [lb.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}) for _ in range(6)]
    assert [r.status_code for r in replies] == [200] * 6
    assert {r.headers["x-served-by"] for r in replies} == {"predictor-1"}
    stack.kill("predictor-1")
    with Client(stack.url()) as lb:
        resp = lb.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
    assert resp.status_code == 502
    assert "no backend is reachable" in resp.json()["message"]
    with Client(stack.url()) as lb:
        oip = lb.post(OIP_INFER, json=OIP_BODY)  # the same failure in the protocol's shape
    assert oip.status_code == 502
    assert list(oip.json()) == ["error"] and "no backend is reachable" in oip.json()["error"]
