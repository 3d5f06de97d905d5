"""Demo traffic for O1: the bundles the build step made, a start from a bundle against a start
that downloads its model (O2), the model repository taken away, and a rollback.

It lists the registry, shows that the deployed server's bundle version is its model's, times
three starts of each kind (process spawned to /ready 200), rebuilds a bundle from the same
inputs (the same hash) and tries to overwrite a version (refused), then stops the repository
and moves its folder away: the bundle still deploys, its previous version too (the rollback),
while the downloading server stays unready.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from patternkit.bundle import BUNDLE_FILE, BundleError, build_bundle, sha256_file, versions
from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.models import MANIFEST_FILE
from patternkit.topology import Stack

ROW = IRIS_ROWS[0][0]
ROUNDS = 3


def ready_after_start(stack: Stack, name: str) -> float:
    """Seconds from spawning `name` (stopped first) to its /ready answering 200."""
    stack.stop_service(name)
    began = time.monotonic()
    stack.start_service(name, wait=False)
    url = stack.url(name) + "/ready"

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 120, 0.01, f"{name} ready")
    return time.monotonic() - began


def unpacked_bytes(bundle: Path) -> int:
    with zipfile.ZipFile(bundle) as archive:
        return sum(i.file_size for i in archive.infolist())


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    registry = Path(stack.proc("predictor").env["BUNDLE_REGISTRY"])
    repo = Path(stack.proc("repository").env["REPO_DIR"])
    for version in versions(registry, "iris"):
        path = registry / f"iris-{version}.zip"
        with zipfile.ZipFile(path) as archive:
            info = json.loads(archive.read(BUNDLE_FILE))
        rows.append({"step": f"registry: {path.name}", "version": info["version"],
                     "outcome": f"model {info['model']['name']} {info['model']['version']}, "
                                f"{len(info['files'])} files",
                     "detail": f"{path.stat().st_size} bytes ({unpacked_bytes(path)} unpacked), "
                               f"sha256 {sha256_file(path)[:12]}"})

    with Client(stack.url()) as predictor:
        meta = predictor.get("/metadata").json()
        rows.append({"step": "deployed predictor /metadata", "version": meta["model_version"],
                     "outcome": f"bundle {meta['bundle']['name']} {meta['bundle']['version']} "
                                f"== model {meta['model']['version']}",
                     "detail": f"code from {Path(meta['bundle']['server_code']).parents[1].name}"})

        # start times: a bundle (unpack + start) against a download at start (O2)
        bundle_s: list[float] = []
        loading_s: list[float] = []
        for _ in range(ROUNDS):
            bundle_s.append(ready_after_start(stack, "predictor"))
            loading_s.append(ready_after_start(stack, "loading_predictor"))
        unpack = re.findall(r"files checked\) into \S+ in (\d+) ms",
                            stack.log_tail("predictor", 400))
        with Client(stack.url("loading_predictor")) as loading:
            last = loading.get("/metadata").json()["load"]["last_load"]
        bundle = registry / "iris-1.1.0.zip"
        rows.append({"step": "start from the bundle", "version": "1.1.0",
                     "outcome": f"ready in {statistics.median(bundle_s):.2f}s (median of "
                                f"{ROUNDS}: {', '.join(f'{s:.2f}' for s in bundle_s)})",
                     "detail": f"unpacks {bundle.stat().st_size} bytes ({unpack[-1]} ms), "
                               "downloads nothing"})
        rows.append({"step": "start, download at start (O2)", "version": "1.1.0",
                     "outcome": f"ready in {statistics.median(loading_s):.2f}s (median of "
                                f"{ROUNDS}: {', '.join(f'{s:.2f}' for s in loading_s)})",
                     "detail": f"downloads {last['bytes']} bytes ({last['download_ms']:.0f} ms, "
                               "repository on this machine, no delay)"})

        # the build is reproducible, and a version is immutable
        with tempfile.TemporaryDirectory() as tmp:
            again = build_bundle(repo / "iris_lr" / "1.1.0", Path(tmp), "iris")
        same = again.sha256 == sha256_file(bundle)
        rows.append({"step": "rebuild 1.1.0 from the same inputs", "version": "1.1.0",
                     "outcome": "the same sha256" if same else "a different sha256",
                     "detail": f"sha256 {again.sha256[:12]}"})
        other = Path(tempfile.mkdtemp()) / "model"
        other.mkdir()
        for name in ("model.onnx", MANIFEST_FILE):
            (other / name).write_bytes((repo / "iris_lr" / "1.1.0" / name).read_bytes())
        manifest = json.loads((other / MANIFEST_FILE).read_text())
        (other / MANIFEST_FILE).write_text(json.dumps({**manifest, "seed": 99}))
        try:
            build_bundle(other, registry, "iris", requirements="")
            refused = "built (should not happen)"
        except BundleError as exc:
            refused = str(exc)
        rows.append({"step": "build other inputs as 1.1.0", "version": "1.1.0",
                     "outcome": "refused", "detail": refused[:110]})

        # the model repository gone: bundles still deploy, the downloading server does not
        stack.stop_service("repository")
        repo.rename(repo.with_name("repository.gone"))
        restart_s = ready_after_start(stack, "predictor")
        resp = predictor.post("/predict", json={"data": [ROW]})
        rows.append({"step": "repository gone: restart predictor",
                     "version": resp.headers.get("x-model-version"),
                     "outcome": f"ready in {restart_s:.2f}s, /predict {resp.status_code}",
                     "detail": "the model is in the bundle"})
        stack.restart("predictor", env={"BUNDLE_VERSION": "1.0.0"})
        resp = predictor.post("/predict", json={"data": [ROW]})
        rows.append({"step": "rollback: BUNDLE_VERSION=1.0.0",
                     "version": resp.headers.get("x-model-version"),
                     "outcome": f"/predict {resp.status_code}, bundle "
                                f"{predictor.get('/metadata').json()['bundle']['version']}",
                     "detail": "make ctl restart predictor SET=\"BUNDLE_VERSION=1.0.0\""})
        stack.restart("loading_predictor", wait=False)
        with Client(stack.url("loading_predictor")) as loading:
            def retrying() -> str | None:
                try:
                    message: str = loading.http.get("/ready", timeout=1).json()["message"]
                except (httpx.HTTPError, ValueError, KeyError):
                    return None
                return message if "retrying in" in message else None

            why = wait_until(retrying, 60, what="the loading predictor waiting")
        rows.append({"step": "repository gone: restart loading_predictor", "version": "-",
                     "outcome": "/ready 503, stays unready", "detail": why[:110]})
    return rows
