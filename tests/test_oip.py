"""The Open Inference Protocol v2 on the template predictor, over real HTTP.

A real predictor process (uvicorn, the iris model) answers the protocol's own requests: the
KServe spec's infer example adapted to the iris input, flat and nested tensors, every bad
tensor (a 400 `{"error": ...}`, never a 500), unknown models and versions (404), the body and
batch limits (413), readiness while the model loads (503), and the official Triton client
(`tritonclient[http]`, skipped only when it is not installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patternkit.client import IRIS_ROWS, Client
from patternkit.oip import (
    INFER_EXAMPLE,
    INFER_REPLY_EXAMPLE,
    PLATFORM,
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
)
from patternkit.testing import post_body
from patternkit.topology import Stack, Topology

ROW = [5.1, 3.5, 1.4, 0.2]
ROWS = [row for row, _ in IRIS_ROWS]
LABELS = [label for _, label in IRIS_ROWS]
VERSION = "1.2.3"  # the conftest's iris_model
INFER = "/v2/models/iris_lr/infer"


def single_predictor(env: dict[str, str], ready: str = "/ready") -> Topology:
    spec: dict[str, Any] = {"app": "patternkit.predictor:create_app", "ready": ready, "env": env}
    return Topology.model_validate(
        {"name": "single", "id": "X", "title": "single", "summary": "one predictor",
         "category": "serving", "entry": "predictor", "services": {"predictor": spec}}
    )


def tensor(data: Any, shape: list[int], name: str = "X", datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def infer_body(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


@pytest.fixture(scope="module")
def stack(iris_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    topology = single_predictor({"MODEL_PATH": str(iris_model), "MAX_BODY_BYTES": "100000"})
    with Stack(topology, tmp_path_factory.mktemp("oip")) as booted:
        yield booted


@pytest.fixture
def predictor(stack: Stack) -> Iterator[Client]:
    with Client(stack.url()) as client:
        yield client


def outputs_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {out["name"]: out for out in body["outputs"]}


# -- health and metadata --------------------------------------------------------------------------


def test_server_metadata_live_and_ready(predictor: Client) -> None:
    meta = predictor.get("/v2")
    assert meta.status_code == 200
    assert meta.json() == {"name": "patternkit", "version": "0.1.0", "extensions": []}
    assert predictor.get("/v2/health/live").json() == {"live": True}
    ready = predictor.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


@pytest.mark.parametrize("path", ["/v2/models/iris_lr", f"/v2/models/iris_lr/versions/{VERSION}"])
def test_model_metadata_names_the_tensors(predictor: Client, path: str) -> None:
    resp = predictor.get(path)
    assert resp.status_code == 200
    assert resp.json() == {
        "name": "iris_lr",
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    }
    ModelMetadataResponse.model_validate(resp.json())
    assert resp.headers["x-model-version"] == VERSION


@pytest.mark.parametrize("path", ["/v2/models/iris_lr/ready",
                                  f"/v2/models/iris_lr/versions/{VERSION}/ready"])
def test_model_ready(predictor: Client, path: str) -> None:
    resp = predictor.get(path)
    assert (resp.status_code, resp.json()) == (200, {"name": "iris_lr", "ready": True})


@pytest.mark.parametrize(("method", "path", "names"), [
    ("GET", "/v2/models/iris_rf", "unknown model 'iris_rf'"),
    ("GET", "/v2/models/iris_rf/ready", "unknown model 'iris_rf'"),
    ("POST", "/v2/models/iris_rf/infer", "unknown model 'iris_rf'"),
    ("GET", "/v2/models/iris_lr/versions/9.9.9", "no version '9.9.9'"),
    ("GET", "/v2/models/iris_lr/versions/9.9.9/ready", "no version '9.9.9'"),
    ("POST", "/v2/models/iris_lr/versions/9.9.9/infer", "no version '9.9.9'"),
])
def test_an_unknown_model_or_version_is_a_404(
    predictor: Client, method: str, path: str, names: str
) -> None:
    resp = predictor.request(method, path, json=INFER_EXAMPLE if method == "POST" else None)
    assert resp.status_code == 404
    body = resp.json()
    assert list(body) == ["error"]
    assert names in body["error"]
    assert "'iris_lr'" in body["error"]  # ... and what is served instead


# -- inference ------------------------------------------------------------------------------------


def test_the_kserve_spec_example_adapted_to_iris(predictor: Client) -> None:
    # the spec's example: an id, the input tensors, and one output asked for by name
    body = {"id": "42", "inputs": [tensor(ROW, [1, 4])], "outputs": [{"name": "probabilities"}]}
    resp = predictor.post(INFER, json=body)
    assert resp.status_code == 200, resp.text
    reply = resp.json()
    InferenceResponse.model_validate(reply)
    assert {k: reply[k] for k in ("model_name", "model_version", "id")} == {
        "model_name": "iris_lr", "model_version": VERSION, "id": "42"}
    assert [out["name"] for out in reply["outputs"]] == ["probabilities"]
    probabilities = reply["outputs"][0]
    assert (probabilities["datatype"], probabilities["shape"]) == ("FP32", [1, 3])
    expected = predictor.post("/predict", json={"data": [ROW]}).json()["probabilities"]
    np.testing.assert_allclose(probabilities["data"], np.ravel(expected), rtol=1e-6)


def test_the_documented_example_gets_the_documented_reply(predictor: Client) -> None:
    InferenceRequest.model_validate(INFER_EXAMPLE)
    reply = predictor.post(INFER, json=INFER_EXAMPLE).json()
    assert reply["id"] == INFER_EXAMPLE["id"]
    def shapes(body: dict[str, Any]) -> list[tuple[str, str, list[int]]]:
        return [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]]

    assert shapes(reply) == shapes(INFER_REPLY_EXAMPLE)
    doc = predictor.get("/openapi.json").json()
    operation = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["example"] == INFER_EXAMPLE
    assert [p["name"] for p in operation["parameters"]] == ["name"]


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_flat_and_nested_data_give_the_predict_answer(predictor: Client, layout: str) -> None:
    data = [v for row in ROWS for v in row] if layout == "flat" else ROWS
    resp = predictor.post(INFER, json=infer_body(tensor(data, [3, 4])))
    assert resp.status_code == 200, resp.text
    outputs = outputs_by_name(resp.json())
    assert outputs["label"] == {"name": "label", "shape": [3], "datatype": "INT64",
                                "data": LABELS}
    assert (outputs["probabilities"]["shape"], outputs["probabilities"]["datatype"]) == (
        [3, 3], "FP32")
    predicted = predictor.post("/predict", json={"data": ROWS}).json()
    assert predicted["prediction"] == outputs["label"]["data"]
    np.testing.assert_allclose(outputs["probabilities"]["data"],
                               np.ravel(predicted["probabilities"]), rtol=1e-6)


def test_outputs_come_in_the_order_asked(predictor: Client) -> None:
    asked = [{"name": "probabilities"}, {"name": "label"}]
    reply = predictor.post(INFER, json=infer_body(tensor(ROW, [1, 4]), outputs=asked)).json()
    assert [out["name"] for out in reply["outputs"]] == ["probabilities", "label"]


def test_the_versioned_path_and_the_request_id(predictor: Client) -> None:
    resp = predictor.post(f"/v2/models/iris_lr/versions/{VERSION}/infer",
                          json=infer_body(tensor(ROW, [1, 4])), headers={"x-request-id": "r-7"})
    assert resp.status_code == 200
    assert resp.json()["id"] == "r-7"  # no id in the body: the request's own
    assert resp.headers["x-request-id"] == "r-7"
    assert resp.json()["model_version"] == VERSION


BAD_TENSORS: list[tuple[str, object, int, str]] = [
    ("FP64 datatype", infer_body(tensor(ROW, [1, 4], datatype="FP64")), 400, "datatype 'FP64'"),
    ("INT64 datatype", infer_body(tensor([5, 3, 1, 0], [1, 4], datatype="INT64")), 400,
     "the model takes FP32"),
    ("3 features", infer_body(tensor(ROW[:3], [1, 3])), 400, "does not match the model's [-1, 4]"),
    ("1-D shape", infer_body(tensor(ROW, [4])), 400, "does not match"),
    ("3-D shape", infer_body(tensor(ROW, [1, 1, 4])), 400, "does not match"),
    ("shape too big for data", infer_body(tensor(ROW, [2, 4])), 400,
     "holds 8 values, data has 4"),
    ("data too big for shape", infer_body(tensor([*ROW, 1.0], [1, 4])), 400,
     "holds 4 values, data has 5"),
    ("no rows", infer_body(tensor([], [0, 4])), 400, "no rows"),
    ("negative dimension", infer_body(tensor(ROW, [-1, 4])), 400, "inputs.0.shape.0"),
    ("unknown input", infer_body(tensor(ROW, [1, 4], name="input0")), 400,
     "unknown input 'input0'"),
    ("the input twice", infer_body(tensor(ROW, [1, 4]), tensor(ROW, [1, 4])), 400,
     "given 2 times"),
    ("a bool", infer_body(tensor([5.1, True, 1.4, 0.2], [1, 4])), 400, "data.1 is bool"),
    ("a numeric string", infer_body(tensor([[5.1, 3.5, "1.4", 0.2]], [1, 4])), 400,
     "data.0.2 is str"),
    ("a null", infer_body(tensor([5.1, None, 1.4, 0.2], [1, 4])), 400, "data.1 is null"),
    ("nested deeper than the shape", infer_body(tensor([[[5.1, 3.5, 1.4, 0.2]]], [1, 4])), 400,
     "data.0.0 is list"),
    ("NaN", '{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", '
            '"data": [NaN, 3.5, 1.4, 0.2]}]}', 400, "finite"),
    ("past the FP32 range", infer_body(tensor([5.1, 3.5, 1e39, 0.2], [1, 4])), 400, "finite"),
    ("an integer past float64", infer_body(tensor([5, 3, 10**400, 0], [1, 4])), 400, "finite"),
    ("no inputs", infer_body(), 400, "inputs"),
    ("no datatype", {"inputs": [{"name": "X", "shape": [1, 4], "data": ROW}]}, 400,
     "inputs.0.datatype: Field required"),
    ("a number as id", infer_body(tensor(ROW, [1, 4]), id=42), 400, "id:"),
    ("no data", {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32"}]}, 400,
     "no `data`"),
    ("binary data", {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 16}}]}, 400,
     "binary tensor data is not supported"),
    ("unknown output", infer_body(tensor(ROW, [1, 4]), outputs=[{"name": "output0"}]), 400,
     "unknown output 'output0'"),
    ("not JSON", "{not json", 400, "not valid JSON"),
    ("a JSON list", [1, 2], 400, "the body: Input should be an object"),
    ("too many rows", infer_body(tensor([ROW] * 1001, [1001, 4])), 413, "MAX_BATCH_ROWS"),
]


@pytest.mark.parametrize(("case", "body", "status", "names"), BAD_TENSORS,
                         ids=[case for case, *_ in BAD_TENSORS])
def test_a_bad_tensor_is_a_protocol_error_naming_it(
    predictor: Client, case: str, body: object, status: int, names: str
) -> None:
    resp = post_body(predictor, INFER, body)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert list(error) == ["error"], error  # the protocol's error object
    assert names in error["error"]


def test_the_body_limit_answers_in_the_protocol_shape(predictor: Client) -> None:
    big = b"x" * 200_000  # MAX_BODY_BYTES is 100000 here
    sized = predictor.post(INFER, content=big, headers={"content-type": "application/json"})
    chunked = predictor.post(INFER, content=iter([big[:60_000], big[60_000:]]))
    for resp in (sized, chunked):
        assert resp.status_code == 413
        assert list(resp.json()) == ["error"]
        assert "MAX_BODY_BYTES" in resp.json()["error"]
    # /predict keeps the scaffold's own error shape
    assert predictor.post("/predict", content=big).json()["error"] == "payload_too_large"


def test_infer_and_predict_are_counted_apart(predictor: Client) -> None:
    predictor.post(INFER, json=INFER_EXAMPLE)
    metrics = predictor.get("/metrics").text
    assert ('http_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"}'
            in metrics)


# -- while the model loads, and injected faults ---------------------------------------------------


def test_not_ready_until_the_model_is_loaded_then_faults_as_predict(
    iris_model: Path, tmp_path: Path
) -> None:
    env = {"MODEL_PATH": str(iris_model), "LOAD_DELAY_MS": "1500", "FAIL_MODE": "first_n:1"}
    with Stack(single_predictor(env, "/health"), tmp_path) as stack, Client(stack.url()) as c:
        assert c.get("/v2/health/live").status_code == 200
        for resp in (c.get("/v2/health/ready"), c.get("/v2/models/iris_lr"),
                     c.get("/v2/models/iris_lr/ready"), c.post(INFER, json=INFER_EXAMPLE)):
            assert resp.status_code == 503, resp.text
            assert "no model loaded yet" in resp.json()["error"]
        c.wait_ready("/v2/health/ready", timeout=15)
        assert c.get("/ready").status_code == 200  # the same readiness as /ready
        failed = c.post(INFER, json=INFER_EXAMPLE)  # FAIL_MODE's first call
        assert failed.status_code == 500
        assert failed.json() == {"error": "injected failure (first_n, call 1)"}
        assert c.post(INFER, json=INFER_EXAMPLE).status_code == 200


# -- the official client --------------------------------------------------------------------------


def test_the_triton_http_client(stack: Stack) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=stack.url().removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("iris_lr")
        assert client.is_model_ready("iris_lr", VERSION)
        assert not client.is_model_ready("iris_rf")
        assert client.get_server_metadata()["name"] == "patternkit"
        meta = client.get_model_metadata("iris_lr")
        assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]

        X = np.asarray(ROWS, dtype=np.float32)
        given = httpclient.InferInput("X", list(X.shape), "FP32")
        given.set_data_from_numpy(X, binary_data=False)
        asked = [httpclient.InferRequestedOutput(n, binary_data=False)
                 for n in ("label", "probabilities")]
        result = client.infer("iris_lr", [given], outputs=asked, request_id="7")
        assert result.get_response()["id"] == "7"
        assert result.as_numpy("label").tolist() == LABELS
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (3, 3) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

        # no outputs named: the client asks for binary outputs, the server answers JSON
        plain = client.infer("iris_lr", [given], model_version=VERSION)
        assert plain.as_numpy("label").tolist() == LABELS

        # the errors reach the client as the server's message and status
        wrong = httpclient.InferInput("X", [1, 3], "FP32")
        wrong.set_data_from_numpy(X[:1, :3], binary_data=False)
        with pytest.raises(InferenceServerException, match=r"does not match") as bad:
            client.infer("iris_lr", [wrong])
        assert bad.value.status() == "400"
        binary = httpclient.InferInput("X", list(X.shape), "FP32")
        binary.set_data_from_numpy(X)  # the client's default: the binary extension
        with pytest.raises(InferenceServerException, match="binary_data=False"):
            client.infer("iris_lr", [binary])
        with pytest.raises(InferenceServerException, match="unknown model") as unknown:
            client.get_model_metadata("iris_rf")
        assert unknown.value.status() == "404"
    finally:
        client.close()
