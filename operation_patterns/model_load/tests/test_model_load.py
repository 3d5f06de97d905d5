"""O2 integration tests: the real repository and generic predictors, over HTTP.

The repository spreads every download over 1 s (DOWNLOAD_DELAY_MS), so a load is visible:
tests that need a predictor with other settings start an extra process of the same code
(`extra_instance`) beside the shared stack, and tests that swap versions swap back.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from patternkit.client import IRIS_ROWS, Client, Traffic, wait_until
from patternkit.loader import RepoClient, RepositoryUnavailable, compatibility_problems
from patternkit.models import MANIFEST_FILE, MODEL_FILE
from patternkit.testing import BAD_PREDICT_BODIES, extra_instance, post_body
from patternkit.topology import Stack

ROW = IRIS_ROWS[0][0]
ORT = {"ai.onnx": 28, "ai.onnx.ml": 5}


def repo_dir(stack: Stack) -> Path:
    return Path(stack.proc("repository").env["REPO_DIR"])


def predict(client: Client) -> httpx.Response:
    return client.post("/predict", json={"data": [ROW]})


def downloads(stack: Stack, name: str, version: str) -> int:
    with Client(stack.url("repository")) as repo:
        return int(repo.stats()["downloads"].get(name, {}).get(version, 0))


@pytest.fixture
def repository(stack: Stack) -> Iterator[Client]:
    with Client(stack.url("repository")) as client:
        yield client


@pytest.fixture
def predictor(entry: Client) -> Iterator[Client]:
    """The shared iris predictor, checked to serve 1.0.0 again after the test."""
    yield entry
    assert entry.get("/metadata").json()["model_version"] == "1.0.0"


def answer(client: Client, path: str) -> httpx.Response | None:
    """The reply to GET `path`, or None while the process does not listen yet."""
    try:
        return client.get(path)
    except httpx.HTTPError:
        return None


def retrying(client: Client) -> str | None:
    """/ready's message while the start-up load waits to try again."""
    resp = answer(client, "/ready")
    message: str = resp.json().get("message", "") if resp is not None else ""
    return message if "retrying in" in message else None


def served(client: Client) -> tuple[str, str]:
    meta = client.get("/metadata").json()
    return meta["model"]["name"], meta["model_version"]


def published_copy(stack: Stack, version: str, tamper: bool = False) -> Path:
    """iris_lr 1.1.0 republished as `version` (its manifest says so); `tamper` flips a byte
    of the model file after the manifest was written, as a corrupted or forged upload."""
    root = repo_dir(stack) / "iris_lr"
    staging = root / f".staging-{version}"
    shutil.copytree(root / "1.1.0", staging)
    manifest = json.loads((staging / MANIFEST_FILE).read_text())
    (staging / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": version}))
    if tamper:
        data = bytearray((staging / MODEL_FILE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (staging / MODEL_FILE).write_bytes(bytes(data))
    staging.rename(root / version)
    return root / version


# -- start-up --------------------------------------------------------------------------------


def test_right_after_start_ready_and_predict_are_503_until_the_model_is_loaded(
    stack: Stack, entry: Client
) -> None:
    """A second process of the same code, its env naming 1.1.0: live at once, ready only once
    its model is downloaded and verified, then serving another version than the first."""
    env = {"MODEL_VERSION": "1.1.0"}
    with extra_instance(stack, "predictor", env) as extra, Client(extra.url, retries=0) as client:
        health = wait_until(lambda: answer(client, "/health"), 30, 0.02,
                            "the new process answering /health")
        ready, early = client.get("/ready"), predict(client)
        assert health.status_code == 200  # liveness: the process is up
        assert ready.status_code == 503, ready.text  # readiness: no model yet
        assert "loading iris_lr 1.1.0 from the model repository" in ready.json()["message"]
        assert early.status_code == 503
        assert early.json()["error"] == "not_ready"
        assert "has no model loaded: loading iris_lr 1.1.0" in early.json()["message"]
        client.wait_ready(timeout=30)
        later = predict(client)
        assert later.status_code == 200, later.text
        assert later.headers["x-model-version"] == "1.1.0"
        assert later.json()["prediction"] == [0]
        load = client.get("/metadata").json()["load"]
        other_sha = client.get("/metadata").json()["model"]["sha256"]
    assert load["state"] == "loaded"
    assert load["last_load"]["download_ms"] >= 900  # the repository's DOWNLOAD_DELAY_MS
    # the shared predictor, the same code with MODEL_VERSION=1.0.0, serves its own version
    assert predict(entry).headers["x-model-version"] == "1.0.0"
    assert entry.get("/metadata").json()["model"]["sha256"] != other_sha


def test_the_same_code_with_other_env_serves_another_model(stack: Stack, entry: Client) -> None:
    specs = stack.topology.services
    app = "patternkit.predictor:create_app"
    assert specs["predictor"].app == specs["wine_predictor"].app == app
    with Client(stack.url("wine_predictor")) as wine:
        assert served(wine) == ("wine_lr", "1.0.0")
        assert wine.get("/metadata").json()["n_features"] == 13
        wine_row = wine.post("/predict", json={"data": [[13.0] * 13]})
        assert wine_row.status_code == 200 and wine_row.headers["x-model-version"] == "1.0.0"
        assert wine_row.json()["model"] == "wine_lr"
        narrow = wine.post("/predict", json={"data": [ROW]})
        assert narrow.status_code == 422 and "expected 13 features" in narrow.json()["message"]
    assert served(entry) == ("iris_lr", "1.0.0")


def test_an_incompatible_manifest_keeps_the_server_unready_with_a_clear_error(
    stack: Stack,
) -> None:
    before = downloads(stack, "iris_lr", "2.0.0")
    says = ["refused iris_lr 2.0.0", "it requires onnxruntime>=9.0; this server has onnxruntime",
            "it needs opset 99 of ai.onnx; onnxruntime"]
    with extra_instance(stack, "predictor", {"MODEL_VERSION": "2.0.0"}) as extra, \
            Client(extra.url) as client:
        def refused() -> dict[str, Any] | None:
            meta = answer(client, "/metadata")
            load = meta.json()["load"] if meta is not None else {}
            return load if load.get("state") == "refused" else None

        load = wait_until(refused, 30, what="the load refused")
        ready, refusal = client.get("/ready"), predict(client)
        assert client.get("/health").status_code == 200  # alive: not restarted in a loop
        assert ready.status_code == 503 and refusal.status_code == 503
        for text in says:
            assert text in ready.json()["message"]
            assert text in refusal.json()["message"]
            assert text in load["error"]["message"]
            assert text in extra.log()
        assert load["error"]["error"] == "incompatible_model"
        assert client.stats()["loads"] == {"loaded": 0, "refused": 1, "failed": 0}
        assert downloads(stack, "iris_lr", "2.0.0") == before  # refused before a byte was sent
        # another input schema than its clients send (EXPECTED_FEATURES): refused too
        wine = client.post("/admin/load", json={"name": "wine_lr", "version": "1.0.0"})
        assert wine.status_code == 409 and "nothing is served" in wine.json()["message"]
        schema = ("refused wine_lr 1.0.0: it takes 13 input features; this server's clients "
                  "send 4 (EXPECTED_FEATURES)")
        assert schema in wine.json()["message"]
        assert schema in client.get("/ready").json()["message"]
        # a compatible version makes it ready; nothing was retried meanwhile
        fixed = client.post("/admin/load", json={"version": "1.0.0"})
        assert fixed.status_code == 200, fixed.text
        assert client.get("/ready").status_code == 200
        load = client.get("/metadata").json()["load"]
        assert load["attempts"] == 3 and load["state"] == "loaded"


def test_a_version_not_published_yet_is_retried_until_it_is(stack: Stack) -> None:
    target = repo_dir(stack) / "iris_lr" / "1.3.0"
    try:
        with extra_instance(stack, "predictor", {"MODEL_VERSION": "1.3.0"}) as extra, \
                Client(extra.url) as client:
            message = wait_until(lambda: retrying(client), 30,
                                 what="the predictor waiting for 1.3.0")
            assert "the model repository has no iris_lr 1.3.0" in message
            assert "not published (published: 2.0.0, 1.1.0, 1.0.0)" in message
            published_copy(stack, "1.3.0")  # registered later, e.g. by a training run
            client.wait_ready(timeout=30)
            assert predict(client).headers["x-model-version"] == "1.3.0"
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_an_unreachable_repository_is_named_in_the_error() -> None:
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    client = RepoClient(dead, timeout_s=2, max_bytes=1000)

    async def ask() -> None:
        try:
            await client.manifest("iris_lr", "1.0.0")
        finally:
            await client.aclose()

    with pytest.raises(RepositoryUnavailable) as caught:
        asyncio.run(ask())
    assert str(caught.value) == (f"the model repository at {dead} is unreachable (connection "
                                 f"refused) for {dead}/models/iris_lr/1.0.0")
    assert caught.value.retry


# -- swapping ---------------------------------------------------------------------------------


def test_a_swap_under_traffic_fails_no_request_and_never_goes_back(
    stack: Stack, predictor: Client
) -> None:
    with Traffic(f"{stack.url()}/predict", {"data": [ROW]}, senders=4) as traffic:
        traffic.wait_for(5)
        asked = time.monotonic()
        swap = predictor.post("/admin/load", json={"version": "1.1.0"})
        done = time.monotonic()
        traffic.wait_for(5, since=done)
    assert swap.status_code == 200, swap.text
    body = swap.json()
    assert (body["previous"], body["version"], body["status"]) == ("1.0.0", "1.1.0", "loaded")
    sent = traffic.sent()
    old = [s for s in sent if s.version == "1.0.0"]
    new = [s for s in sent if s.version == "1.1.0"]
    print(f"\nsent {len(sent)} requests through the swap: {len(traffic.failures())} failed, "
          f"{len(old)} answered by 1.0.0, {len(new)} by 1.1.0")
    assert traffic.failures() == []
    assert len(old) + len(new) == len(sent)
    assert all(s.version == s.body_version for s in sent)  # the header is the model that ran
    assert all(s.version == "1.0.0" for s in sent if s.ended < asked)
    assert all(s.version == "1.1.0" for s in sent if s.started > done)
    for replies in traffic.by_sender().values():  # each caller: old, old, ..., new, new
        versions = [s.version for s in replies]
        first_new = versions.index("1.1.0")
        assert set(versions[first_new:]) == {"1.1.0"}, versions
    load = predictor.get("/metadata").json()["load"]
    assert load["swaps"][-1]["from"] == "1.0.0" and load["swaps"][-1]["to"] == "1.1.0"
    # the way back (a rollback) is the same call
    back = predictor.post("/admin/load", json={"version": "1.0.0"})
    assert back.status_code == 200 and back.json()["previous"] == "1.1.0"
    assert predict(predictor).headers["x-model-version"] == "1.0.0"


def test_a_second_load_while_one_runs_is_refused(stack: Stack, predictor: Client) -> None:
    import threading

    first: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: first.append(
        predictor.post("/admin/load", json={"version": "1.1.0"})))
    worker.start()
    try:
        wait_until(lambda: predictor.get("/metadata").json()["load"]["loading"], 10,
                   what="the first load to start")
        second = predictor.post("/admin/load", json={"version": "1.0.0"})
        assert second.status_code == 409, second.text
        assert second.json()["error"] == "load_in_progress"
        assert "a load of iris_lr 1.1.0 is in progress" in second.json()["message"]
        assert predict(predictor).headers["x-model-version"] == "1.0.0"  # still serving
    finally:
        worker.join(timeout=30)
    assert first and first[0].status_code == 200
    assert predictor.post("/admin/load", json={"version": "1.0.0"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "error", "says"),
    [
        ({"version": "2.0.0"}, 409, "incompatible_model",
         "it needs opset 99 of ai.onnx; onnxruntime"),
        ({"name": "wine_lr", "version": "1.0.0"}, 409, "incompatible_model",
         "it takes 13 input features; this server's clients send 4"),
        ({"version": "9.9.9"}, 404, "model_not_found",
         "model iris_lr version 9.9.9 is not published"),
        ({"version": "v1"}, 422, "validation_error", "body.version"),
        ({"version": "1.1.0", "extra": 1}, 422, "validation_error", "body.extra"),
    ],
    ids=["newer-runtime", "other-interface", "unknown-version", "bad-version", "extra-field"],
)
def test_a_refused_swap_names_why_and_the_old_model_keeps_serving(
    stack: Stack, predictor: Client, body: dict[str, Any], status: int, error: str, says: str
) -> None:
    before = downloads(stack, body.get("name", "iris_lr"), body["version"])
    resp = predictor.post("/admin/load", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error
    assert says in resp.json()["message"]
    if status != 422:
        assert "still serving iris_lr 1.0.0" in resp.json()["message"]
    assert downloads(stack, body.get("name", "iris_lr"), body["version"]) == before
    assert predictor.get("/ready").status_code == 200
    assert predict(predictor).headers["x-model-version"] == "1.0.0"


def test_a_download_that_fails_its_sha256_is_refused(stack: Stack, predictor: Client) -> None:
    folder = published_copy(stack, "1.2.0", tamper=True)
    try:
        resp = predictor.post("/admin/load", json={"version": "1.2.0"})
        assert resp.status_code == 502, resp.text
        message = resp.json()["message"]
        assert resp.json()["error"] == "checksum_mismatch"
        assert "sha256 mismatch for iris_lr 1.2.0: its manifest says" in message
        assert "refused, nothing of it is loaded; still serving iris_lr 1.0.0" in message
        assert downloads(stack, "iris_lr", "1.2.0") == 1  # it was downloaded, then refused
        assert predict(predictor).headers["x-model-version"] == "1.0.0"
        load = predictor.get("/metadata").json()["load"]
        assert load["error"]["error"] == "checksum_mismatch"
        assert predictor.stats()["loads"]["refused"] >= 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_restart_with_a_new_model_version_changes_the_served_version(
    stack: Stack, predictor: Client
) -> None:
    try:
        stack.restart("predictor", env={"MODEL_VERSION": "1.1.0"})
        resp = predict(predictor)
        assert resp.headers["x-model-version"] == "1.1.0"
        assert predictor.get("/metadata").json()["load"]["wanted"]["version"] == "1.1.0"
    finally:
        stack.restart("predictor", env={"MODEL_VERSION": "1.0.0"})


# -- the repository and the contract ------------------------------------------------------------


def test_the_repository_serves_manifests_with_requires_and_streams_files_with_etags(
    repository: Client,
) -> None:
    listing = repository.get("/models").json()["models"]
    assert {m["name"]: m["latest"] for m in listing} == {"iris_lr": "2.0.0", "wine_lr": "1.0.0"}
    manifest = repository.get("/models/iris_lr/1.0.0").json()
    assert manifest["requires"]["onnxruntime"] == ">=1.18"
    assert manifest["requires"]["opset"]["ai.onnx"] == 17
    assert manifest["url"] == "/models/iris_lr/1.0.0/model.onnx"
    assert repository.get("/models/iris_lr/latest").json()["version"] == "2.0.0"
    head = repository.http.head(manifest["url"])
    assert head.status_code == 200 and head.headers["etag"] == f'"{manifest["sha256"]}"'
    assert int(head.headers["content-length"]) == manifest["size"]
    again = repository.get(manifest["url"], headers={"if-none-match": head.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    ("path", "status", "error", "says"),
    [
        ("/models/nope", 404, "model_not_found", "no model named 'nope' in the repository"),
        ("/models/Iris", 422, "validation_error", "model name 'Iris' is not lower-case"),
        ("/models/iris_lr/9.9.9", 404, "model_not_found", "published: 2.0.0, 1.1.0, 1.0.0"),
        ("/models/iris_lr/v1/model.onnx", 422, "validation_error", "'v1' is not of the form"),
        ("/models/iris_lr/latest/model.onnx", 422, "validation_error", "'latest' is not of"),
    ],
)
def test_the_repository_answers_unknown_paths_with_json_errors(
    repository: Client, path: str, status: int, error: str, says: str
) -> None:
    resp = repository.get(path)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error and says in resp.json()["message"]


@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_gets_a_4xx_naming_the_problem(
    predictor: Client, body: object, status: int, names: str
) -> None:
    resp = post_body(predictor, "/predict", body)
    assert resp.status_code == status, resp.text
    assert names in resp.json()["message"]


def manifest(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "requires": {"onnxruntime": ">=1.18", "opset": {"ai.onnx": 17, "ai.onnx.ml": 1}},
        "input_schema": {"n_features": 4, "features": ["a", "b", "c", "d"], "dtype": "float32"},
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "kwargs", "says"),
    [
        ({}, {}, None),
        ({"requires": {"onnxruntime": ">=1.33", "opset": {"ai.onnx": 17}}}, {},
         "it requires onnxruntime>=1.33; this server has onnxruntime 1.32.0"),
        ({"requires": {"onnxruntime": "~=1.17.0", "opset": {}}}, {},
         "it requires onnxruntime~=1.17.0"),
        ({"requires": {"onnxruntime": "one", "opset": {}}}, {}, "is not a version specifier"),
        ({"requires": {"onnxruntime": ">=1", "opset": {"ai.onnx": 29}}}, {},
         "it needs opset 29 of ai.onnx; onnxruntime 1.32.0 implements up to 28"),
        ({"requires": {"onnxruntime": ">=1", "opset": {"com.example": 1}}}, {},
         "the domain com.example, which onnxruntime 1.32.0 does not implement"),
        ({"requires": None}, {}, "declares no `requires`"),
        ({"input_schema": {"n_features": 4, "dtype": "float64"}}, {}, "float64 inputs"),
        ({}, {"expected_features": 5}, "takes 4 input features; this server's clients send 5"),
        ({}, {"serving": {"n_features": 4, "features": ["a", "b", "c", "e"]}},
         "the model it would replace 4 features (a, b, c, e): a swap must keep"),
    ],
)
def test_the_compatibility_check_names_each_problem(
    changes: dict[str, Any], kwargs: dict[str, Any], says: str | None
) -> None:
    problems = compatibility_problems(manifest(**changes), runtime="1.32.0", opsets=ORT, **kwargs)
    if says is None:
        assert problems == []
    else:
        assert len(problems) == 1 and says in problems[0], problems
