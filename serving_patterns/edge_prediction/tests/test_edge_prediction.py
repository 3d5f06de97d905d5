"""S13 integration tests: the real distribution service and predictor, the edge client, Chromium."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.models import OnnxModel, load_dataset, train_model
from patternkit.topology import Stack
from serving_patterns.edge_prediction.browser import Browser, chromium_binary, missing_vendor_files
from serving_patterns.edge_prediction.edge_client import EdgeClient, EdgeError

IRIS_X = load_dataset("iris")[0]
ROWS = [row for row, _ in IRIS_ROWS]
EXPECTED = [label for _, label in IRIS_ROWS]


def model_dir(stack: Stack) -> Path:
    return Path(stack.proc("distribution").env["MODEL_DIR"])


def publish(stack: Stack, version: str, seed: int = 7, tamper: bool = False) -> dict[str, Any]:
    """Train a version beside the published ones and rename it into place (atomic)."""
    staging = model_dir(stack) / f".staging-{version}"
    manifest = train_model("iris_lr", staging, version=version, seed=seed)
    if tamper:  # one byte changed after the manifest was written: a corrupted or forged file
        path = staging / "model.onnx"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    staging.rename(model_dir(stack) / version)
    return manifest


@pytest.fixture
def publisher(stack: Stack) -> Iterator[Callable[..., dict[str, Any]]]:
    """`publish` on the shared stack; whatever a test published is withdrawn afterwards."""
    published: list[str] = []

    def publish_version(version: str, **kwargs: Any) -> dict[str, Any]:
        published.append(version)
        return publish(stack, version, **kwargs)

    yield publish_version
    for version in published:
        shutil.rmtree(model_dir(stack) / version, ignore_errors=True)
        shutil.rmtree(model_dir(stack) / f".staging-{version}", ignore_errors=True)
    with Client(stack.url()) as entry:
        assert entry.get("/models/latest").json()["version"] == "1.0.0"


def server_predict(stack: Stack, rows: Any) -> dict[str, Any]:
    with Client(stack.url("predictor")) as predictor:
        resp = predictor.post("/predict", json={"data": np.asarray(rows).tolist()})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.fixture
def edge(stack: Stack, tmp_path: Path) -> Iterator[EdgeClient]:
    with EdgeClient(stack.url(), tmp_path / "device-cache") as client:
        yield client


def test_the_edge_client_predicts_exactly_like_the_server_for_all_iris_rows(
    stack: Stack, edge: EdgeClient, entry: Client
) -> None:
    first = edge.refresh()
    assert (first.status, first.version, first.detail) == ("updated", "1.0.0", "first download")
    served = server_predict(stack, IRIS_X)
    downloads = entry.stats()["requests"]["downloads"]
    with Client(stack.url("predictor")) as predictor:
        predictor_hits = predictor.stats()["hits"]
        local = edge.predict(IRIS_X)
        assert predictor.stats()["hits"] == predictor_hits  # predicted on the device
    assert len(local.labels) == 150
    assert local.labels == served["prediction"]
    np.testing.assert_allclose(local.probabilities, served["probabilities"], rtol=1e-6)
    assert (local.version, local.source) == ("1.0.0", "edge")
    assert local.classes[:1] == ["setosa"]
    assert entry.stats()["requests"]["downloads"] == downloads
    with Client(stack.url("predictor")) as predictor:
        assert edge.sha256 == predictor.get("/metadata").json()["model"]["sha256"]


def test_latest_and_the_manifest_describe_the_published_version(entry: Client) -> None:
    latest = entry.get("/models/latest")
    assert latest.status_code == 200, latest.text
    body = latest.json()
    assert (body["name"], body["version"]) == ("iris_lr", "1.0.0")
    assert body["url"] == "/models/1.0.0/model.onnx"
    manifest = entry.get(body["manifest_url"]).json()
    assert manifest["sha256"] == body["sha256"]
    assert manifest["classes"] == ["setosa", "versicolor", "virginica"]
    assert manifest["input_schema"]["n_features"] == 4
    model = entry.get(body["url"])
    assert len(model.content) == body["size"] == manifest["size"]
    assert hashlib.sha256(model.content).hexdigest() == body["sha256"]
    listing = entry.get("/models").json()
    assert listing["latest"] == "1.0.0"
    assert [v["version"] for v in listing["versions"]] == ["1.0.0"]


def test_the_model_file_has_its_sha256_as_etag_and_honours_if_none_match(entry: Client) -> None:
    sha = entry.get("/models/latest").json()["sha256"]
    first = entry.get("/models/1.0.0/model.onnx")
    assert first.status_code == 200
    assert first.headers["etag"] == f'"{sha}"'
    assert first.headers["content-type"] == "application/octet-stream"
    before = entry.stats()["requests"]
    again = entry.get("/models/1.0.0/model.onnx", headers={"if-none-match": f'"{sha}"'})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == f'"{sha}"'
    other = entry.get("/models/1.0.0/model.onnx", headers={"if-none-match": '"not-it"'})
    assert other.status_code == 200 and len(other.content) == len(first.content)
    after = entry.stats()["requests"]
    assert after["not_modified"] == before.get("not_modified", 0) + 1
    assert after["downloads"] == before["downloads"] + 1
    # polling for updates is a 304 too, as long as the latest version stays the same
    latest = entry.get("/models/latest")
    poll = entry.get("/models/latest", headers={"if-none-match": latest.headers["etag"]})
    assert poll.status_code == 304 and poll.content == b""


@pytest.mark.parametrize(
    ("path", "status", "error", "names"),
    [
        ("/models/9.9.9", 404, "model_not_found", "9.9.9 is not published (published: 1.0.0)"),
        ("/models/9.9.9/model.onnx", 404, "model_not_found", "9.9.9"),
        ("/models/v1/model.onnx", 422, "validation_error", "'v1' is not of the form X.Y.Z"),
        ("/static/vendor/nothing.js", 404, "not_found", "make vendor"),
    ],
)
def test_unknown_or_malformed_paths_get_json_errors(
    entry: Client, path: str, status: int, error: str, names: str
) -> None:
    resp = entry.get(path)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error
    assert names in resp.json()["message"]


def test_the_page_and_its_scripts_are_served_with_their_media_types(entry: Client) -> None:
    page = entry.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="result"' in page.text and "/static/vendor/ort.wasm.min.js" in page.text
    script = entry.get("/static/edge.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert entry.get("/static/../distribution.py").status_code == 404


def test_the_vendored_runtime_is_served_with_its_media_types(entry: Client) -> None:
    missing = missing_vendor_files()
    if missing:
        pytest.skip(f"onnxruntime-web is not vendored ({', '.join(missing)}): run `make vendor`")
    assert entry.get("/static/vendor/ort-wasm-simd-threaded.mjs").headers[
        "content-type"].startswith("text/javascript")
    assert entry.get("/static/vendor/ort-wasm-simd-threaded.wasm").headers[
        "content-type"] == "application/wasm"


def test_a_damaged_cache_is_downloaded_again_not_used(stack: Stack, tmp_path: Path) -> None:
    cache = tmp_path / "device-cache"
    with EdgeClient(stack.url(), cache) as device:
        assert device.refresh().status == "updated"
    cached = cache / "1.0.0" / "model.onnx"
    cached.write_bytes(cached.read_bytes()[:-1] + b"\x00")  # bit rot on the device
    with EdgeClient(stack.url(), cache) as device:
        assert device.version is None
        assert "failed its check" in device.refused["1.0.0"]
        again = device.refresh()
        assert (again.status, again.version) == ("updated", "1.0.0")
        assert again.downloaded_bytes == cached.stat().st_size
        assert device.predict(ROWS).labels == EXPECTED


def test_devices_report_counts_never_inputs(entry: Client, edge: EdgeClient) -> None:
    edge.refresh()
    edge.predict([*ROWS, ROWS[0]])
    edge.refresh()  # each check also reports usage
    report = entry.get("/telemetry").json()["devices"][edge.device_id]
    assert report["version"] == "1.0.0"
    assert report["predictions"] == 4
    assert report["class_counts"] == {"setosa": 2, "versicolor": 1, "virginica": 1}
    with_inputs = {"device_id": "d", "version": "1.0.0", "predictions": 1, "data": [ROWS[0]]}
    refused = entry.post("/telemetry", json=with_inputs)
    assert refused.status_code == 422
    assert refused.json()["message"].startswith("body.data")


def test_bad_rows_are_refused_on_the_device(edge: EdgeClient) -> None:
    edge.refresh()
    for rows, names in [([[5.1, 3.5, 1.4]], "expected rows of 4 features, got 3"),
                        ([[5.1, 3.5, 1.4, float("nan")]], "finite"),
                        ([["a", 3.5, 1.4, 0.2]], "rows must be lists of numbers"),
                        ([[5.1, 3.5, 1.4, True]], r"rows\.0\.3 is bool True"),
                        ([], "non-empty")]:
        with pytest.raises(ValueError, match=names):
            edge.predict(rows)


def test_the_cli_downloads_once_then_predicts_from_its_cache(stack: Stack, tmp_path: Path) -> None:
    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "serving_patterns.edge_prediction.edge_client",
             "--url", stack.url(), "--cache-dir", str(tmp_path / "cli-cache"), *args],
            capture_output=True, text=True, timeout=60, cwd=stack.project,
        )
        assert done.returncode == 0, done.stderr
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    first = cli("predict", "7.0", "3.2", "4.7", "1.4")
    assert (first["labels"], first["classes"], first["version"]) == ([1], ["versicolor"], "1.0.0")
    assert (first["source"], first["refresh"]) == ("edge", "updated")
    second = cli("predict", "6.3", "3.3", "6.0", "2.5")
    assert (second["labels"], second["refresh"]) == ([2], "current")
    assert sorted(p.name for p in (tmp_path / "cli-cache").iterdir() if p.is_dir()) == ["1.0.0"]


def test_the_browser_page_shows_the_same_class_as_the_server(stack: Stack) -> None:
    if not chromium_binary():
        pytest.skip("no chromium on PATH (apt-get install chromium, or set CHROMIUM)")
    missing = missing_vendor_files()
    if missing:
        pytest.skip(f"onnxruntime-web is not vendored ({', '.join(missing)}): run `make vendor`")
    served = server_predict(stack, ROWS)
    first = ",".join(map(str, ROWS[0]))
    with Browser() as browser, browser.open(f"{stack.url()}/?row={first}") as page:
        for i, row in enumerate(ROWS):
            shown = page.shown() if i == 0 else page.predict(row)  # then typed into the form
            assert shown["state"] == "done", shown["status"]
            assert int(shown["label"]) == served["prediction"][i] == EXPECTED[i]
            assert shown["result"] == ["setosa", "versicolor", "virginica"][EXPECTED[i]]
            np.testing.assert_allclose(shown["probabilities"], served["probabilities"][i],
                                       atol=2e-6)
            assert shown["version"] == "iris_lr 1.0.0"
            assert shown["sha256"].endswith("verified")


def test_with_the_distribution_stopped_the_client_predicts_from_its_cache(
    fresh_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = fresh_stack()
    cache = tmp_path / "device-cache"
    with EdgeClient(stack.url(), cache, timeout_s=2) as device:
        assert device.refresh().status == "updated"
        stack.kill("distribution")
        offline = device.refresh()
        assert (offline.status, offline.version) == ("offline", "1.0.0")
        assert "unreachable" in offline.detail
        assert device.predict(ROWS).labels == EXPECTED
    # the device restarts while the service is still down: it starts from its cache
    with EdgeClient(stack.url(), cache, timeout_s=2) as device:
        assert device.version == "1.0.0"
        result = device.predict(ROWS)
        assert (result.labels, result.source) == (EXPECTED, "edge")
    # a device with nothing cached falls back to the server predictor, if it has one
    fallback_url = stack.url("predictor")
    with EdgeClient(stack.url(), tmp_path / "new", fallback_url=fallback_url) as device:
        result = device.predict(ROWS)
        assert (result.labels, result.source, result.version) == (EXPECTED, "server", "1.0.0")
        assert result.classes[:1] == ["setosa"]  # named as the device names them
    with EdgeClient(stack.url(), tmp_path / "bare") as device, pytest.raises(
        EdgeError, match="no usable model on this device"
    ):
        device.predict(ROWS)


def test_a_new_version_is_picked_up_without_restarting_the_client(
    stack: Stack, publisher: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    # keep_versions=2: the version in use and one other, the one to roll back to
    with EdgeClient(stack.url(), tmp_path / "device-cache", refresh_interval_s=0.2,
                    keep_versions=2) as device:
        assert device.refresh().version == "1.0.0"
        before = device.predict(IRIS_X)
        publisher("2.0.0", seed=7)
        wait_until(lambda: device.version == "2.0.0", 20, what="the client switching to 2.0.0")
        after = device.predict(IRIS_X)
        direct = OnnxModel(model_dir(stack) / "2.0.0").predict(IRIS_X)
        assert after.version == "2.0.0"
        assert after.labels == direct.labels.tolist()
        np.testing.assert_allclose(after.probabilities, direct.probabilities, rtol=1e-6)
        assert not np.allclose(after.probabilities, before.probabilities)  # another model
        assert device.status()["cached_versions"] == ["2.0.0", "1.0.0"]
        with Client(stack.url()) as entry:
            wait_until(
                lambda: entry.get("/telemetry").json()["devices"][device.device_id]["version"]
                == "2.0.0", 10, what="telemetry showing the device on 2.0.0",
            )
            # withdrawing 2.0.0 rolls the device back, from its cache, without a download
            downloads = entry.stats()["downloads_by_version"]["1.0.0"]
            shutil.rmtree(model_dir(stack) / "2.0.0")
            wait_until(lambda: device.version == "1.0.0", 20, what="the client rolling back")
            assert device.predict(ROWS).labels == EXPECTED
            assert entry.stats()["downloads_by_version"]["1.0.0"] == downloads


def test_a_tampered_version_is_refused_and_the_previous_one_keeps_serving(
    stack: Stack, publisher: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    cache = tmp_path / "device-cache"
    with EdgeClient(stack.url(), cache) as device:
        assert device.refresh().version == "1.0.0"
        good = publisher("3.0.0", tamper=True)
        refused = device.refresh()
        assert (refused.status, refused.latest, refused.version) == ("refused", "3.0.0", "1.0.0")
        assert f"sha256 mismatch: the manifest says {good['sha256']}" in refused.detail
        assert "3.0.0" in device.refused
        result = device.predict(IRIS_X)
        assert (result.version, result.source) == ("1.0.0", "edge")
        assert result.labels == server_predict(stack, IRIS_X)["prediction"]
        assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["1.0.0"]
        # the next check tries again: once the right bytes are published, it switches
        train_model("iris_lr", tmp_path / "fixed", version="3.0.0", seed=7)
        (tmp_path / "fixed" / "model.onnx").replace(model_dir(stack) / "3.0.0" / "model.onnx")
        fixed = device.refresh()
        assert (fixed.status, fixed.version) == ("updated", "3.0.0")
        assert "3.0.0" not in device.refused
