"""patternkit.service and patternkit.predictor: the scaffold every service is built on.

The scaffold is exercised in-process (Starlette's TestClient) for its error shapes and
headers, and as a real uvicorn process for readiness and start-up failures.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from patternkit.client import Client, wait_until
from patternkit.models import MODEL_FILE
from patternkit.predictor import create_app
from patternkit.service import ApiError, create_service
from patternkit.settings import PredictorSettings, ServiceSettings
from patternkit.topology import Stack, StackError, Topology

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def predictor(iris_model: Path) -> Iterator[TestClient]:
    app = create_app(PredictorSettings(model_path=str(iris_model), instance_name="p-1",
                                       max_body_bytes=10_000))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, 10, what="model loaded")
        yield client


def test_identity_headers_and_body(predictor: TestClient) -> None:
    resp = predictor.post("/predict", json={"data": [ROW, ROW]})
    assert resp.status_code == 200
    assert resp.headers["x-served-by"] == "p-1"
    assert resp.headers["x-model-version"] == "1.2.3"
    body = resp.json()
    assert body["prediction"] == [0, 0]
    assert len(body["probabilities"]) == 2
    assert body["request_id"] == resp.headers["x-request-id"]


def test_errors_share_one_shape(predictor: TestClient) -> None:
    for resp in (
        predictor.post("/predict", json={"data": [[1, 2]]}),
        predictor.get("/nowhere"),
        predictor.put("/predict", json={}),
    ):
        assert set(resp.json()) == {"error", "message", "details", "request_id"}
    assert predictor.get("/nowhere").status_code == 404
    assert predictor.put("/predict").json()["error"] == "method_not_allowed"


def test_body_limit_with_and_without_content_length(predictor: TestClient) -> None:
    big = b'{"data": [' + b"[1,2,3,4]," * 2000 + b"[1,2,3,4]]}"
    assert predictor.post("/predict", content=big).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield big[:5000]
        yield big[5000:]

    resp = predictor.post("/predict", content=chunks())
    assert resp.status_code == 413
    assert "MAX_BODY_BYTES" in resp.json()["message"]


def test_stats_count_work_not_probes(predictor: TestClient) -> None:
    before = predictor.get("/stats").json()["hits"]
    predictor.get("/health")
    predictor.get("/ready")
    predictor.post("/predict", json={"data": [ROW]})
    stats = predictor.get("/stats").json()
    assert stats["hits"] == before + 1
    assert stats["max_in_flight"] >= 1


def test_metrics_use_route_templates(predictor: TestClient) -> None:
    predictor.post("/predict", json={"data": [ROW]})
    predictor.get("/x/1")
    predictor.get("/x/2")
    text = predictor.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"} 2.0' in text
    assert "http_requests_in_flight" in text


def test_unexpected_exceptions_are_500_json_and_api_errors_keep_their_status() -> None:
    app = create_service(ServiceSettings(service_name="t"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/conflict")
    async def conflict() -> None:
        raise ApiError(409, "run ids differ", details=[{"a": 1}])

    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/boom")
        assert resp.status_code == 500
        assert resp.json()["message"] == "internal error: RuntimeError"
        resp = client.get("/conflict")
        assert resp.status_code == 409
        assert resp.json() == {"error": "conflict", "message": "run ids differ",
                               "details": [{"a": 1}], "request_id": resp.headers["x-request-id"]}


def single_predictor(env: dict[str, str], ready: str) -> Topology:
    spec: dict[str, Any] = {"app": "patternkit.predictor:create_app", "ready": ready, "env": env}
    return Topology.model_validate(
        {"name": "single", "id": "X", "title": "single", "summary": "one predictor",
         "category": "serving", "entry": "predictor", "services": {"predictor": spec}}
    )


def test_ready_is_503_until_the_model_is_loaded(iris_model: Path, tmp_path: Path) -> None:
    env = {"MODEL_PATH": str(iris_model), "LOAD_DELAY_MS": "1500"}
    with Stack(single_predictor(env, "/health"), tmp_path) as stack, Client(stack.url()) as c:
        assert c.get("/health").status_code == 200
        first = c.get("/ready")
        assert first.status_code == 503
        assert first.json()["error"] == "not_ready"
        assert c.post("/predict", json={"data": [ROW]}).status_code == 503
        c.wait_ready(timeout=15)
        assert c.post("/predict", json={"data": [ROW]}).status_code == 200


def test_a_tampered_model_stops_the_predictor(iris_model: Path, tmp_path: Path) -> None:
    shutil.copytree(iris_model, tmp_path / "m")
    (tmp_path / "m" / MODEL_FILE).write_bytes(b"not a model")
    topology = single_predictor({"MODEL_PATH": str(tmp_path / "m")}, "/ready")
    with pytest.raises(StackError, match="sha256 mismatch"), Stack(topology, tmp_path / "run"):
        pass


def test_chunked_body_over_real_http(iris_model: Path, tmp_path: Path) -> None:
    env = {"MODEL_PATH": str(iris_model), "MAX_BODY_BYTES": "2000"}
    with Stack(single_predictor(env, "/ready"), tmp_path) as stack:
        resp = httpx.post(stack.url() + "/predict", content=iter([b"{" + b" " * 3000 + b"}"]))
        assert resp.status_code == 413
