"""O1 integration tests: bundles built by the stack's builder, deployed by its predictor.

The shared stack serves bundle iris 1.1.0; tests that deploy another one, or take the model
repository away, put things back as they were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from patternkit.bundle import (
    BUNDLE_FILE,
    BundleError,
    build_bundle,
    sha256_file,
    unpack_bundle,
    versions,
    zip_bytes,
)
from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.infra import free_port
from patternkit.models import MANIFEST_FILE
from patternkit.testing import BAD_PREDICT_BODIES, extra_instance, post_body
from patternkit.topology import Stack, load_topology, repo_root

ROW = IRIS_ROWS[0][0]
FOLDER = Path(__file__).resolve().parents[1]


def registry(stack: Stack) -> Path:
    return Path(stack.proc("predictor").env["BUNDLE_REGISTRY"])


def repository(stack: Stack) -> Path:
    return Path(stack.proc("repository").env["REPO_DIR"])


def metadata(client: Client) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/metadata").json()
    return body


@pytest.fixture
def predictor(entry: Client) -> Iterator[Client]:
    """The shared predictor, checked to run bundle 1.1.0 again after the test."""
    yield entry
    assert metadata(entry)["bundle"]["version"] == "1.1.0"


def test_the_bundle_version_is_the_model_version(stack: Stack, predictor: Client) -> None:
    meta = metadata(predictor)
    bundle = meta["bundle"]
    assert bundle["version"] == meta["model_version"] == meta["model"]["version"] == "1.1.0"
    assert bundle["model_sha256"] == meta["model"]["sha256"]
    assert bundle["sha256"] == sha256_file(registry(stack) / "iris-1.1.0.zip")
    resp = predictor.post("/predict", json={"data": [ROW]})
    assert resp.status_code == 200 and resp.headers["x-model-version"] == "1.1.0"
    assert versions(registry(stack), "iris") == ["1.1.0", "1.0.0"]
    with zipfile.ZipFile(registry(stack) / "iris-1.0.0.zip") as archive:
        info = json.loads(archive.read(BUNDLE_FILE))
        manifest = json.loads(archive.read(f"model/{MANIFEST_FILE}"))
        pins = archive.read("requirements.txt").decode()
        names = archive.namelist()
    assert info["version"] == info["model"]["version"] == manifest["version"] == "1.0.0"
    assert names[0] == BUNDLE_FILE and names[1:] == sorted(names[1:])
    assert {"model/model.onnx", "requirements.txt", "server/patternkit/predictor.py"} <= set(names)
    assert re.search(r"^onnxruntime==\d", pins, re.M) and re.search(r"^fastapi==\d", pins, re.M)
    assert "scikit-learn" not in pins  # the server does not train


def test_the_server_runs_the_bundles_own_code_from_a_fresh_folder(
    stack: Stack, predictor: Client
) -> None:
    deploy_dir = Path(stack.proc("predictor").env["DEPLOY_DIR"])
    meta = metadata(predictor)
    code = Path(meta["bundle"]["server_code"])
    assert code.is_relative_to(deploy_dir) and (code / "predictor.py").is_file()
    assert Path(meta["model_path"]).is_relative_to(deploy_dir)
    deployed = re.findall(r"deployed iris-1\.1\.0\.zip \((\d+) bytes, sha256 (\w+), (\d+) files "
                          r"checked\) into (\S+) in", stack.log_tail("predictor", 200))
    assert deployed, stack.log_tail("predictor", 20)
    _, sha, files, folder = deployed[-1]
    assert Path(folder) == code.parents[1]  # <deploy dir>/<bundle>-<time>-<pid>/server/...
    assert int(files) == meta["bundle"]["files"]
    assert meta["bundle"]["sha256"].startswith(sha)


def test_it_serves_with_the_model_repository_gone_and_rollback_runs_the_previous_bundle(
    stack: Stack, predictor: Client
) -> None:
    """The repository folder moved away and its service stopped: the bundle still deploys
    (1.0.0 as a rollback, then 1.1.0 again), while a server that downloads its model at
    start (O2's way) stays unready."""
    repo = repository(stack)
    gone = repo.with_name("repository.gone")
    stack.stop_service("repository")
    repo.rename(gone)
    try:
        with extra_instance(stack, "loading_predictor") as extra, Client(extra.url) as loader:
            stack.restart("predictor", env={"BUNDLE_VERSION": "1.0.0"})  # the rollback
            old = predictor.post("/predict", json={"data": [ROW]})
            assert old.status_code == 200, old.text
            assert old.headers["x-model-version"] == "1.0.0"
            assert metadata(predictor)["bundle"]["version"] == "1.0.0"

            def retrying() -> str | None:
                try:
                    message: str = loader.get("/ready").json().get("message", "")
                except Exception:
                    return None
                return message if "retrying in" in message else None

            why = wait_until(retrying, 30, what="the loading predictor waiting")
            assert "the model repository at" in why and "is unreachable" in why
            assert loader.post("/predict", json={"data": [ROW]}).status_code == 503
        stack.restart("predictor", env={"BUNDLE_VERSION": "1.1.0"})
        assert predictor.post("/predict", json={"data": [ROW]}).headers["x-model-version"] == \
            "1.1.0"
        assert not repo.exists()
    finally:
        if gone.exists():
            gone.rename(repo)
        stack.start_service("repository")


def test_rebuilding_from_the_same_inputs_gives_the_same_bundle_hash(
    stack: Stack, tmp_path: Path
) -> None:
    model = repository(stack) / "iris_lr" / "1.1.0"
    source = tmp_path / "model"
    shutil.copytree(model, source)
    for path in source.iterdir():  # other timestamps, same bytes
        os.utime(path, (1_000_000_000, 1_000_000_000))
    first = build_bundle(source, tmp_path / "registry", "iris")
    built_by_the_stack = sha256_file(registry(stack) / "iris-1.1.0.zip")
    assert first.created and first.sha256 == built_by_the_stack
    info = unpack_bundle(first.path, tmp_path / "unpacked")
    again = build_bundle(source, tmp_path / "registry", "iris",
                         (tmp_path / "unpacked" / "requirements.txt").read_text())
    assert (again.created, again.sha256) == (False, first.sha256)
    assert info["version"] == "1.1.0"


def test_a_bundle_version_never_changes(stack: Stack, tmp_path: Path) -> None:
    """Another model under a version that has a bundle is refused; bump the version."""
    other = tmp_path / "model"
    shutil.copytree(repository(stack) / "iris_lr" / "1.1.0", other)
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    manifest["metrics"] = {**manifest["metrics"], "note": "retrained"}
    (other / MANIFEST_FILE).write_text(json.dumps(manifest))
    before = sha256_file(registry(stack) / "iris-1.1.0.zip")
    with pytest.raises(BundleError, match=r"iris-1\.1\.0\.zip already exists with other content"):
        build_bundle(other, registry(stack), "iris", requirements="")
    assert sha256_file(registry(stack) / "iris-1.1.0.zip") == before


def altered_copy(src: Path, dest: Path, change: str) -> None:
    """The bundle `src` rewritten with one change: a model byte flipped, an extra file, or
    a path that leaves the folder; bundle.json as it was."""
    with zipfile.ZipFile(src) as archive:
        info = json.loads(archive.read(BUNDLE_FILE))
        files = {n: archive.read(n) for n in archive.namelist() if n != BUNDLE_FILE}
    if change == "tampered":
        data = bytearray(files["model/model.onnx"])
        data[len(data) // 2] ^= 0xFF
        files["model/model.onnx"] = bytes(data)
    elif change == "extra":
        files["server/patternkit/backdoor.py"] = b"print('hi')\n"
    elif change == "escape":
        files["../outside.txt"] = b"x"
        info["files"]["../outside.txt"] = "0" * 64
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(zip_bytes(info, files))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("tampered", "model/model.onnx does not match its sha256 in bundle.json"),
        ("extra", "extra ['server/patternkit/backdoor.py']"),
        ("escape", "a path outside its folder: ../outside.txt"),
    ],
)
def test_an_altered_bundle_is_refused_and_nothing_is_deployed(
    stack: Stack, tmp_path: Path, change: str, says: str
) -> None:
    altered = tmp_path / "registry" / "iris-1.1.0.zip"
    altered_copy(registry(stack) / "iris-1.1.0.zip", altered, change)
    with pytest.raises(BundleError, match=re.escape(says)):
        unpack_bundle(altered, tmp_path / "app")
    assert not (tmp_path / "app").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "registry"]  # no staging left behind


def test_the_deploy_of_an_altered_bundle_exits_with_the_reason(
    stack: Stack, tmp_path: Path
) -> None:
    altered_copy(registry(stack) / "iris-1.1.0.zip", tmp_path / "registry" / "iris-1.1.0.zip",
                 "tampered")
    result = subprocess.run(
        [sys.executable, "-m", "operation_patterns.model_in_image.predictor",
         "--registry", str(tmp_path / "registry"), "--version", "1.1.0",
         "--deploy-dir", str(tmp_path / "deploy"), "--port", str(free_port())],
        cwd=repo_root(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "error: cannot deploy iris 1.1.0" in result.stderr
    assert "does not match its sha256" in result.stderr
    assert list((tmp_path / "deploy").iterdir()) == []
    missing = subprocess.run(
        [sys.executable, "-m", "operation_patterns.model_in_image.predictor",
         "--registry", str(registry(stack)), "--version", "9.9.9",
         "--deploy-dir", str(tmp_path / "deploy"), "--port", str(free_port())],
        cwd=repo_root(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode == 1
    assert "no bundle iris-9.9.9.zip in the registry" in missing.stderr
    assert "(there: 1.1.0, 1.0.0)" in missing.stderr


def test_the_dockerfile_has_the_target_compose_builds_and_keeps_the_default_image() -> None:
    dockerfile = (repo_root() / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", dockerfile, flags=re.M)
    assert ("python:3.11-slim", "project") in stages
    assert stages[-1] == ("project", "")  # the default target is the project image
    names = {alias for _, alias in stages}
    for spec in load_topology(FOLDER).rendered().values():
        if spec.image is None:
            continue
        assert spec.image.target in names
        stage = dockerfile.split(f" AS {spec.image.target}\n", 1)[1].split("\nFROM ", 1)[0]
        build_args = set(re.findall(r"^ARG (\w+)", dockerfile, flags=re.M))
        assert set(spec.image.args) <= build_args, spec.image.args
        assert "COPY --from=model-bundle" in stage and "requirements.txt" in stage
    compose = (FOLDER / "docker-compose.yml").read_text()
    assert "target: model-in-image" in compose and "command" not in compose


@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_gets_a_4xx_naming_the_problem(
    entry: Client, body: object, status: int, names: str
) -> None:
    resp = post_body(entry, "/predict", body)
    assert resp.status_code == status, resp.text
    assert names in resp.json()["message"]
