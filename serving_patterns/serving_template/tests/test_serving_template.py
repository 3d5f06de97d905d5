"""S12 integration tests: three real servers stamped from one template, plus drop-in configs.

The shared stack runs the iris_lr, iris_rf and wine servers behind the proxy. A second, small
stack boots the same `server:create_app` from config files written here (a new model, and a
config in the previous schema version), which is the whole claim: no code change per model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from patternkit.client import IRIS_ROWS, Client
from patternkit.infra import free_port
from patternkit.models import load_dataset, train_model
from patternkit.topology import Stack, StackError, Topology
from serving_patterns.serving_template.config import load_config

SERVERS = ("iris_lr", "iris_rf", "wine")
APP = "serving_patterns.serving_template.server:create_app"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_CLASSES = ("setosa", "versicolor", "virginica")
ENVELOPE = {"model", "version", "predictions", "served_by", "request_id", "template_version"}
ERROR = {"error", "message", "details", "request_id"}


def iris(values: list[float]) -> dict[str, float]:
    return dict(zip(IRIS_FEATURES, values, strict=True))


def wine_rows() -> list[tuple[dict[str, float], str]]:
    """Three wines of the bundled dataset, one per cultivar, named as wine.yaml names them."""
    X, y, _, classes = load_dataset("wine")
    names = [f["name"] for f in yaml.safe_load((CONFIGS / "wine.yaml").read_text())["features"]]
    return [({n: round(float(v), 4) for n, v in zip(names, X[i], strict=True)}, classes[y[i]])
            for i in (0, 59, 130)]


IRIS_CASES = [(iris(row), IRIS_CLASSES[label]) for row, label in IRIS_ROWS]
CASES = {"iris_lr": IRIS_CASES, "iris_rf": IRIS_CASES, "wine": wine_rows()}


def key_for(stack: Stack, service: str) -> str:
    """A server's API key: the env var its config names, as the topology set it."""
    env = stack.proc(service).env
    return env[load_config(env["SERVING_CONFIG"]).config.auth.api_key_env]


def authed(stack: Stack, service: str, via_proxy: bool = False) -> Client:
    base = f"{stack.url()}/models/{service}" if via_proxy else stack.url(service)
    client = Client(base)
    client.http.headers["x-api-key"] = key_for(stack, service)
    return client


def test_each_server_answers_its_own_named_features_through_the_proxy(stack: Stack) -> None:
    for name in SERVERS:
        instances = [row for row, _ in CASES[name]]
        with authed(stack, name, via_proxy=True) as client:
            resp = client.post("/predict", json={"instances": instances},
                               headers={"X-Request-ID": f"s12-{name}"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == ENVELOPE
        assert [p["label"] for p in body["predictions"]] == [label for _, label in CASES[name]]
        assert body["served_by"] == name == resp.headers["x-served-by"]
        assert body["request_id"] == f"s12-{name}" == resp.headers["x-request-id"]
        assert resp.headers["x-model-version"] == body["version"] == "1.0.0"
        for p in body["predictions"]:
            assert set(p) == {"label", "class_id", "probabilities"}
            assert abs(sum(p["probabilities"].values()) - 1) < 1e-4
    assert Client(stack.url()).get("/models").json() == {"models": sorted(SERVERS)}


def openapi(stack: Stack, name: str) -> dict[str, Any]:
    with authed(stack, name) as client:
        resp = client.get("/openapi.json")
    assert resp.status_code == 200, resp.text
    spec: dict[str, Any] = resp.json()
    return spec


def api_shape(spec: dict[str, Any]) -> tuple[set[tuple[str, str]], set[str]]:
    """(path, method) pairs and component schema names: what must not differ between servers."""
    ops = {(path, method) for path, item in spec["paths"].items() for method in item}
    return ops, set(spec["components"]["schemas"])


def test_all_servers_have_identical_openapi_paths_and_envelopes(stack: Stack) -> None:
    shapes = {name: api_shape(openapi(stack, name)) for name in SERVERS}
    assert shapes["iris_lr"] == shapes["iris_rf"] == shapes["wine"]
    ops, schemas = shapes["iris_lr"]
    assert ("/predict", "post") in ops and ("/metadata", "get") in ops
    assert {"PredictRequest", "Instance", "PredictResponse", "ErrorBody"} <= schemas
    # ...while each request schema carries its own named features, with the config's ranges
    wine = openapi(stack, "wine")["components"]["schemas"]["Instance"]
    assert len(wine["properties"]) == 13 and wine["properties"]["proline"]["maximum"] == 4000
    iris_spec = openapi(stack, "iris_lr")["components"]["schemas"]["Instance"]
    assert list(iris_spec["properties"]) == list(IRIS_FEATURES)
    assert iris_spec["properties"]["petal_width"]["unit"] == "cm"
    # the same envelopes for a prediction, a validation error and a refused key
    for name in SERVERS:
        with authed(stack, name) as client:
            ok = client.post("/predict", json={"instances": [CASES[name][0][0]]})
            bad = client.post("/predict", json={"instances": [{}]})
        refused = Client(stack.url(name)).post("/predict", json={"instances": []})
        assert (ok.status_code, bad.status_code, refused.status_code) == (200, 422, 401)
        assert set(ok.json()) == ENVELOPE
        assert set(bad.json()) == set(refused.json()) == ERROR


@pytest.mark.parametrize(
    ("server", "instance", "status", "names"),
    [
        ("iris_lr", {**iris([5.1, 3.5, 1.4, 0.2]), "petal_width": None}, 422,
         "instances.0.petal_width"),
        ("iris_lr", {k: v for k, v in iris([5.1, 3.5, 1.4, 0.2]).items() if k != "sepal_width"},
         422, "instances.0.sepal_width: Field required"),
        ("iris_rf", iris([5.1, 3.5, 99.0, 0.2]), 422,
         "instances.0.petal_length: Input should be less than or equal to 15"),
        ("iris_lr", iris([-1.0, 3.5, 1.4, 0.2]), 422,
         "instances.0.sepal_length: Input should be greater than or equal to 0"),
        ("iris_lr", {**iris([5.1, 3.5, 1.4, 0.2]), "colour": 1.0}, 422,
         "instances.0.colour: Extra inputs are not permitted"),
        ("iris_lr", {**iris([5.1, 3.5, 1.4, 0.2]), "petal_length": "long"}, 422,
         "instances.0.petal_length"),
        ("iris_lr", {**iris([5.1, 3.5, 1.4, 0.2]), "petal_width": True}, 422,
         "instances.0.petal_width: Input should be a valid number"),
        ("iris_lr", {**iris([5.1, 3.5, 1.4, 0.2]), "sepal_width": "3.5"}, 422,
         "instances.0.sepal_width: Input should be a valid number"),
        ("wine", iris([5.1, 3.5, 1.4, 0.2]), 422, "instances.0.alcohol: Field required"),
    ],
)
def test_missing_or_out_of_range_features_get_422_naming_them(
    stack: Stack, server: str, instance: dict[str, Any], status: int, names: str
) -> None:
    with authed(stack, server) as client:
        resp = client.post("/predict", json={"instances": [instance]})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == "validation_error"
    assert names in resp.json()["message"]


def test_batch_limit_comes_from_the_config(stack: Stack) -> None:
    limit = load_config(CONFIGS / "iris_lr.yaml").config.limits.max_batch_rows
    with authed(stack, "iris_lr") as client:
        assert client.post("/predict", json={"instances": [IRIS_CASES[0][0]] * limit}
                           ).status_code == 200
        resp = client.post("/predict", json={"instances": [IRIS_CASES[0][0]] * (limit + 1)})
        assert resp.status_code == 413
        assert "limits.max_batch_rows" in resp.json()["message"]
        assert client.post("/predict", json={"instances": []}).status_code == 422


def auth_failures(stack: Stack, name: str) -> dict[str, float]:
    with authed(stack, name) as client:
        text = client.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith("template_auth_failures_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


def test_a_missing_or_wrong_api_key_is_401_on_every_server(stack: Stack) -> None:
    body = {"instances": [IRIS_CASES[0][0]]}
    for name in SERVERS:
        before = auth_failures(stack, name)
        other = key_for(stack, next(s for s in SERVERS if s != name))  # another server's key
        for base in (stack.url(name), f"{stack.url()}/models/{name}"):
            client = Client(base)
            for path in ("/metadata", "/metrics", "/stats", "/openapi.json"):
                assert client.get(path).status_code == 401, (base, path)
            missing = client.post("/predict", json=body)
            wrong = client.post("/predict", json=body, headers={"X-API-Key": other})
            for resp, word in ((missing, "missing"), (wrong, "not valid")):
                assert resp.status_code == 401
                assert resp.json()["error"] == "unauthorized"
                assert word in resp.json()["message"] and "X-API-Key" in resp.json()["message"]
                assert resp.json()["request_id"] == resp.headers["x-request-id"]
                assert resp.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
            # the probes stay open: orchestrators call them without keys
            assert client.get("/health").status_code == 200
            assert client.get("/ready").status_code == 200
        after = auth_failures(stack, name)
        assert after["missing"] - before.get("missing", 0) == 10
        assert after["wrong"] - before.get("wrong", 0) == 2


def test_metadata_reports_the_template_version_and_the_config(stack: Stack) -> None:
    seen = {}
    for name in SERVERS:
        with authed(stack, name) as client:
            resp = client.get("/metadata")
        meta = resp.json()
        config = load_config(stack.proc(name).env["SERVING_CONFIG"]).config
        assert meta["config"] == config.model_dump(mode="json")
        assert meta["config"]["schema_version"] == 2 and meta["config_migrated_from"] is None
        assert meta["model"]["name"] == config.model.name
        assert key_for(stack, name) not in resp.text  # the env var's name, never the key
        seen[name] = meta["template_version"]
    assert len(set(seen.values())) == 1, seen


def test_the_proxy_names_an_unknown_model(stack: Stack) -> None:
    resp = Client(stack.url()).post("/models/resnet/predict", json={"instances": []})
    assert resp.status_code == 404
    assert "resnet" in resp.json()["message"] and "iris_lr, iris_rf, wine" in resp.json()["message"]


# -- configs dropped in at deploy time: the same code, no change ------------------------------

DROP_IN_KEY = "key-for-the-new-model"
LEGACY_KEY = "key-for-the-old-config"


def breast_cancer_config() -> dict[str, Any]:
    """A config for a model the template has never seen, written the way a user would."""
    X, _, features, classes = load_dataset("breast_cancer")
    return {
        "schema_version": 2,
        "model": {"name": "breast_cancer_lr", "version": "1.0.0"},
        "features": [
            {"name": f.replace(" ", "_"), "source": f, "min": 0.0, "max": round(3 * float(hi), 3)}
            for f, hi in zip(features, X.max(axis=0), strict=True)
        ],
        "classes": classes,
        "auth": {"api_key_env": "BREAST_CANCER_API_KEY"},
        "limits": {"max_batch_rows": 200},
    }


LEGACY_CONFIG = """\
# written for the template's previous config format (schema_version 1)
schema_version: 1
model_name: iris_lr
model_version: 1.0.0
features: [sepal_length, sepal_width, petal_length, petal_width]
labels: [setosa, versicolor, virginica]
api_key_env: LEGACY_IRIS_API_KEY
"""


def topology(services: dict[str, dict[str, Any]]) -> Topology:
    return Topology.model_validate(
        {"name": "dropped_in", "id": "X", "title": "dropped-in configs", "summary": "drop-ins",
         "category": "serving", "entry": next(iter(services)), "services": services}
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    train_model("breast_cancer_lr", out / "breast_cancer_lr")
    train_model("iris_lr", out / "iris_lr")
    return out


@pytest.fixture(scope="module")
def dropped_in(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The template's server booted from two config files written here, behind the proxy."""
    configs = tmp_path_factory.mktemp("configs")
    (configs / "breast_cancer.yaml").write_text(yaml.safe_dump(breast_cancer_config()))
    (configs / "iris_v1.yaml").write_text(LEGACY_CONFIG)
    ghost = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    services = {
        "proxy": {
            "app": "serving_patterns.serving_template.proxy:create_app",  # boots alongside
            "env": {"MODEL_URLS": "breast_cancer={breast_cancer.url},"
                                  f"legacy_iris={{legacy_iris.url}},ghost={ghost}"},
        },
        "breast_cancer": {"app": APP, "env": {
            "SERVING_CONFIG": str(configs / "breast_cancer.yaml"),
            "MODEL_PATH": str(models / "breast_cancer_lr"),
            "BREAST_CANCER_API_KEY": DROP_IN_KEY,
        }},
        "legacy_iris": {"app": APP, "env": {
            "SERVING_CONFIG": str(configs / "iris_v1.yaml"),
            "MODEL_PATH": str(models / "iris_lr"),
            "LEGACY_IRIS_API_KEY": LEGACY_KEY,
        }},
    }
    with Stack(topology(services), tmp_path_factory.mktemp("dropped_in")) as booted:
        yield booted


def test_a_dropped_in_config_serves_a_new_model_without_code_changes(
    stack: Stack, dropped_in: Stack
) -> None:
    X, y, features, classes = load_dataset("breast_cancer")
    names = [f.replace(" ", "_") for f in features]
    instances = [{n: float(v) for n, v in zip(names, row, strict=True)} for row in X[:150]]
    proxy = Client(dropped_in.url() + "/models/breast_cancer")
    proxy.http.headers["x-api-key"] = DROP_IN_KEY
    resp = proxy.post("/predict", json={"instances": instances})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == ENVELOPE and body["model"] == "breast_cancer_lr"
    labels = [p["label"] for p in body["predictions"]]
    assert set(labels) == set(classes)
    accuracy = sum(lab == classes[t] for lab, t in zip(labels, y[:150], strict=True)) / 150
    assert accuracy > 0.9
    # 30 named features, validated like the others; the same API as the shipped servers
    del instances[0]["worst_radius"]
    missing = proxy.post("/predict", json={"instances": instances[:1]})
    assert missing.status_code == 422
    assert "instances.0.worst_radius: Field required" in missing.json()["message"]
    assert Client(dropped_in.url("breast_cancer")).get("/metadata").status_code == 401
    new = Client(dropped_in.url("breast_cancer"))
    new.http.headers["x-api-key"] = DROP_IN_KEY
    spec = new.get("/openapi.json").json()
    assert len(spec["components"]["schemas"]["Instance"]["properties"]) == 30
    assert api_shape(spec) == api_shape(openapi(stack, "iris_lr"))


def test_a_config_in_the_previous_schema_version_still_loads(dropped_in: Stack) -> None:
    legacy = Client(dropped_in.url("legacy_iris"))
    legacy.http.headers["x-api-key"] = LEGACY_KEY
    meta = legacy.get("/metadata").json()
    assert meta["config_migrated_from"] == 1
    assert meta["config"]["schema_version"] == 2
    assert meta["config"]["model"] == {"name": "iris_lr", "version": "1.0.0", "description": ""}
    assert meta["config"]["features"][0] == {"name": "sepal_length", "unit": None, "min": None,
                                             "max": None, "description": "", "source": None}
    log = dropped_in.log_tail("legacy_iris", 200)
    assert "uses schema_version 1; migrated to 2 on load" in log
    resp = legacy.post("/predict", json={"instances": [row for row, _ in IRIS_CASES]})
    assert resp.status_code == 200, resp.text
    assert [p["label"] for p in resp.json()["predictions"]] == [c for _, c in IRIS_CASES]
    # named features are still required; version 1 had no ranges, so none are enforced
    short = legacy.post("/predict", json={"instances": [{"sepal_length": 5.1}]})
    assert short.status_code == 422
    assert "instances.0.sepal_width: Field required" in short.json()["message"]
    assert legacy.post("/predict", json={"instances": [iris([5.1, 3.5, 99.0, 0.2])]}
                       ).status_code == 200
    assert Client(dropped_in.url("legacy_iris")).post("/predict", json={}).status_code == 401


def test_an_unreachable_model_server_is_a_502_naming_it(dropped_in: Stack) -> None:
    resp = Client(dropped_in.url()).post("/models/ghost/predict", json={"instances": []})
    assert resp.status_code == 502
    assert resp.json()["error"] == "backend_unavailable"
    assert "model server ghost" in resp.json()["message"]


def test_a_server_refuses_a_model_its_config_does_not_describe(
    models: Path, tmp_path: Path
) -> None:
    settings = {"SERVING_CONFIG": str(CONFIGS / "wine.yaml"), "MODEL_PATH": str(models / "iris_lr"),
                "WINE_API_KEY": "k"}
    with pytest.raises(StackError) as failed, Stack(
        topology({"wine": {"app": APP, "env": settings}}), tmp_path, ready_timeout=30
    ):
        pass
    assert ("model.name is 'wine_lr', the artifact is 'iris_lr'; 13 features configured, "
            "the model takes 4") in str(failed.value)
