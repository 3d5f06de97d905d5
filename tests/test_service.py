"""patternkit.service and patternkit.predictor: the scaffold every service is built on.

The scaffold is exercised in-process (Starlette's TestClient) for its error shapes and
headers, and as a real uvicorn process for readiness and start-up failures.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from pydantic import BaseModel

from patternkit.client import Client, wait_until
from patternkit.logs import configure
from patternkit.models import MODEL_FILE
from patternkit.predictor import create_app
from patternkit.service import (
    DRAIN_FACTOR,
    ApiError,
    ServiceDep,
    ServiceState,
    create_service,
    fast_route,
    from_state,
    json_response,
)
from patternkit.settings import PredictorSettings, ServiceSettings
from patternkit.topology import Stack, StackError, Topology

ROW = [5.1, 3.5, 1.4, 0.2]
Greeting = Annotated[str, Depends(from_state("greeting"))]  # module level: FastAPI resolves it


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


class Numbers(BaseModel):
    x: list[int]


def test_a_chunked_body_past_the_limit_is_a_413_on_routes_that_parse_a_model() -> None:
    """FastAPI turns other errors raised while it reads a body into a 400."""
    app = create_service(ServiceSettings(service_name="t", max_body_bytes=1000))

    @app.post("/numbers")
    async def numbers(body: Numbers) -> dict[str, int]:
        return {"n": len(body.x)}

    big = b'{"x": [' + b"1," * 2000 + b"1]}"
    with TestClient(app) as client:
        for content in (iter([big[:500], big[500:]]), big):
            resp = client.post("/numbers", content=content,
                               headers={"content-type": "application/json"})
            assert resp.status_code == 413, resp.text
            assert set(resp.json()) == {"error", "message", "details", "request_id"}
            assert resp.json()["error"] == "payload_too_large"
            assert "MAX_BODY_BYTES" in resp.json()["message"]
        assert client.post("/numbers", json={"x": [1, 2]}).json() == {"n": 2}


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

    with TestClient(app) as client:  # the middleware answers it: nothing reaches the server
        resp = client.get("/boom", headers={"x-request-id": "abc"})
        assert resp.status_code == 500
        assert resp.json()["message"] == "internal error: RuntimeError"
        assert resp.json()["request_id"] == resp.headers["x-request-id"] == "abc"
        assert resp.headers["x-served-by"] == "t"
        assert resp.headers["content-type"] == "application/json"
        metrics = client.get("/metrics").text
        assert 'http_requests_total{method="GET",route="/boom",status="500"} 1.0' in metrics
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


# -- a client that sends its whole body before it reads -------------------------------------------

LIMIT = 300_000  # MAX_BODY_BYTES of the predictor below


@pytest.fixture(scope="module")
def limited(iris_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"MODEL_PATH": str(iris_model), "MAX_BODY_BYTES": str(LIMIT)}
    with Stack(single_predictor(env, "/ready"), tmp_path_factory.mktemp("limited")) as stack:
        yield stack


def connect(stack: Stack) -> socket.socket:
    where = urlsplit(stack.url())
    assert where.hostname is not None and where.port is not None
    return socket.create_connection((where.hostname, where.port), timeout=15)


def send_first(sock: socket.socket, body: bytes, *headers: str, chunked: bool = False) -> None:
    """Write the request line, headers and the whole body before reading anything."""
    if chunked:
        step = 64 * 1024
        framed = [b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                  for i in range(0, len(body), step)]
        body, length = b"".join(framed) + b"0\r\n\r\n", "Transfer-Encoding: chunked"
    else:
        length = f"Content-Length: {len(body)}"
    head = ["POST /predict HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
            length, *headers, "", ""]
    sock.sendall("\r\n".join(head).encode() + body)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lower-case), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_send_first_client_that_closes_reads_the_413(limited: Stack, chunked: bool) -> None:
    # uvicorn closes at once after the answer to `Connection: close`: with the body unread,
    # that close was a reset, and the 413 was lost under it
    body = b"{" + b" " * (3 * LIMIT) + b"}"  # past the limit, within the drain bound
    assert LIMIT < len(body) <= DRAIN_FACTOR * LIMIT
    with connect(limited) as sock:
        send_first(sock, body, "Connection: close", "X-Request-ID: big-1", chunked=chunked)
        status, headers, payload = read_response(sock)
        assert sock.recv(65536) == b""  # an orderly close after the answer, not a reset
    assert status == 413
    error = json.loads(payload)
    assert set(error) == {"error", "message", "details", "request_id"}
    assert (error["error"], error["request_id"]) == ("payload_too_large", "big-1")
    assert "MAX_BODY_BYTES" in error["message"]
    if not chunked:
        assert f"{len(body)} bytes" in error["message"]
    assert headers["x-served-by"] == "predictor"


def test_a_send_first_client_keeps_its_connection_after_a_413(limited: Stack) -> None:
    with connect(limited) as sock:
        send_first(sock, b"{" + b" " * (2 * LIMIT) + b"}")
        status, _, _ = read_response(sock)
        assert status == 413
        send_first(sock, json.dumps({"data": [ROW]}).encode())  # the same connection
        status, _, payload = read_response(sock)
    assert status == 200, payload
    assert json.loads(payload)["prediction"] == [0]


def test_a_client_waiting_on_expect_100_continue_gets_the_413_without_sending(
    limited: Stack,
) -> None:
    with connect(limited) as sock:
        head = ["POST /predict HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                f"Content-Length: {100 * LIMIT}", "Expect: 100-continue", "", ""]
        sock.sendall("\r\n".join(head).encode())  # and no body: it waits for 100 Continue
        status, _, payload = read_response(sock)
    assert status == 413
    assert "MAX_BODY_BYTES" in json.loads(payload)["message"]


def test_a_fast_route_is_served_by_the_middleware_with_the_same_errors_and_metrics() -> None:
    from patternkit.service import add_fast_route, json_response

    app = create_service(ServiceSettings(service_name="fast"))

    async def boom(request: Any) -> Any:
        body = await request.body()
        if body == b"api":
            raise ApiError(409, "named conflict", "conflict")
        if body == b"bug":
            raise RuntimeError("a bug")
        return json_response({"ok": True})

    add_fast_route(app, "/boom", boom)
    with TestClient(app) as client:
        assert client.post("/boom", content=b"fine").json() == {"ok": True}
        conflict = client.post("/boom", content=b"api")
        assert (conflict.status_code, conflict.json()["error"]) == (409, "conflict")
        bug = client.post("/boom", content=b"bug", headers={"x-request-id": "r-500"})
        assert bug.status_code == 500
        assert bug.json() == {"error": "internal_error", "message": "internal error: RuntimeError",
                              "details": [], "request_id": "r-500"}
        assert bug.headers["x-request-id"] == "r-500"  # inside the service middleware
        assert bug.headers["x-served-by"] == "fast"
        assert client.get("/boom").status_code == 405  # other methods still go by the router
        metrics = client.get("/metrics").text
        for status in ("200", "409", "500"):
            assert f'route="/boom",status="{status}"' in metrics


def test_a_middleware_inside_the_scaffold_still_sees_fast_routes() -> None:
    from starlette.middleware import Middleware

    from patternkit.service import add_fast_route, error_response, json_response

    def guard(app: Any) -> Any:
        async def check(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and dict(scope["headers"]).get(b"x-key") != b"k":
                await error_response(401, "no key")(scope, receive, send)
                return
            await app(scope, receive, send)
        return check

    app = create_service(ServiceSettings(service_name="guarded"))

    async def ok(request: Any) -> Any:
        return json_response({"ok": True})

    add_fast_route(app, "/ok", ok)
    app.user_middleware.append(Middleware(guard))  # inside the scaffold, as S12's key check
    with TestClient(app) as client:
        assert client.post("/ok").status_code == 401
        assert client.post("/ok", headers={"x-key": "k"}).json() == {"ok": True}


def test_lifespan_state_and_upstreams_reach_routes_typed() -> None:
    closed: list[str] = []

    class Client:
        async def aclose(self) -> None:
            closed.append("client")

    class Resources(TypedDict):
        greeting: str

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        yield {"greeting": "hello"}

    client_obj = Client()
    app = create_service(ServiceSettings(service_name="t"), lifespan=lifespan,
                         upstreams={"backend": client_obj})

    @app.get("/hello")
    async def hello(greeting: Greeting, service: ServiceDep, request: Request) -> dict[str, Any]:
        return {"greeting": greeting, "served_by": service.served_by,
                "same_client": request.state.backend is client_obj}

    @fast_route(app, "/fast", methods=["GET"])
    async def fast(request: Request) -> Response:
        return json_response({"greeting": request.state.greeting})

    with TestClient(app) as client:
        assert client.get("/hello").json() == {"greeting": "hello", "served_by": "t",
                                               "same_client": True}
        assert client.get("/fast").json() == {"greeting": "hello"}
        assert closed == []
    assert closed == ["client"]


def test_a_metric_is_declared_once_and_read_back_for_stats() -> None:
    app = create_service(ServiceSettings(service_name="t"))
    metrics = app.state.service.metrics
    hits = metrics.counter("t_cache_hits", "hits", stat="cache.hits")
    errors = metrics.counter("t_cache_errors", "errors", {"op": ("get", "set")},
                             stat="cache.errors", total=True)
    outcomes = metrics.counter("t_calls", "calls", {"backend": ("a", "b"),
                                                    "outcome": ("ok", "failed")}, stat="calls")
    app.state.service.stats["cache"] = {"ttl_s": 60}
    with TestClient(app) as client:
        text = client.get("/metrics").text
        for line in ('t_cache_errors_total{op="get"} 0.0', 't_cache_errors_total{op="set"} 0.0',
                     't_calls_total{backend="b",outcome="failed"} 0.0'):
            assert line in text  # every known series exists at zero from start-up
        hits.inc()
        errors.labels("set").inc(2)
        outcomes.labels("a", "ok").inc()
        stats = client.get("/stats").json()
        assert stats["cache"] == {"hits": 1, "errors": 2, "ttl_s": 60}
        assert stats["calls"] == {"a": {"ok": 1, "failed": 0}, "b": {"ok": 0, "failed": 0}}
        assert "t_cache_hits_total 1.0" in client.get("/metrics").text


def test_json_logs_carry_the_request_id_route_status_and_latency(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_service(ServiceSettings(service_name="t"))

    @app.get("/boom")
    async def boom() -> None:
        logging.getLogger("t").warning("about to fail")
        raise RuntimeError("kaput")

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    os.environ["ACCESS_LOG"] = "1"
    try:
        configure("t-1", fmt="json")
        with TestClient(app) as client:
            client.get("/boom", headers={"x-request-id": "r-1"})
    finally:
        del os.environ["ACCESS_LOG"]
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logging.getLogger("patternkit.access").setLevel(logging.NOTSET)
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == "r-1"]
    assert [x["message"] for x in mine][:1] == ["about to fail"]
    error = next(x for x in mine if x["level"] == "ERROR")
    assert (error["route"], error["status"], error["service"]) == ("/boom", 500, "t-1")
    assert "RuntimeError: kaput" in error["exc_info"]
    access = next(x for x in mine if x["logger"] == "patternkit.access")
    assert (access["route"], access["status"]) == ("/boom", 500)
    assert access["latency_ms"] >= 0
    assert {"time", "level", "service"} <= set(access)
