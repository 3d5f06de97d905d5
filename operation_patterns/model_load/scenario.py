"""Demo traffic for O2: a predictor restarts and loads its model, versions swap under traffic,
and incompatible or tampered models are refused while the served one keeps answering.

It restarts the predictor and watches it (live at once, ready once the model is downloaded and
verified), asks the wine predictor (the same code, other env) what it serves, swaps iris_lr
1.0.0 -> 1.1.0 while four callers keep sending requests, tries three bad versions, rolls back,
and finally restarts the predictor with MODEL_VERSION=2.0.0 to show an unready server that
says why.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from patternkit.client import IRIS_ROWS, Client, Traffic, wait_until
from patternkit.models import MANIFEST_FILE, MODEL_FILE
from patternkit.topology import Stack

ROW = IRIS_ROWS[0][0]


def short(message: str, limit: int = 110) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def status_of(client: Client, path: str, body: object = None) -> httpx.Response | None:
    try:
        if body is None:
            return client.http.get(path, timeout=2)
        return client.http.post(path, json=body, timeout=2)
    except httpx.HTTPError:
        return None


def tampered_copy(repo: Path, version: str) -> Path:
    """iris_lr 1.1.0 republished as `version` with one byte of its file flipped."""
    root = repo / "iris_lr"
    staging = root / f".staging-{version}"
    shutil.copytree(root / "1.1.0", staging)
    manifest = json.loads((staging / MANIFEST_FILE).read_text())
    (staging / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": version}))
    data = bytearray((staging / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (staging / MODEL_FILE).write_bytes(bytes(data))
    staging.rename(root / version)
    return root / version


def watch_start(stack: Stack, client: Client) -> tuple[dict[str, Any], float]:
    """Restart the predictor and record what a caller sees from its spawn on."""
    stack.stop_service("predictor")
    began = time.monotonic()
    stack.start_service("predictor", wait=False)
    health = wait_until(lambda: status_of(client, "/health"), 60, 0.02, "the predictor live")
    live_s = time.monotonic() - began
    ready = status_of(client, "/ready")
    predicted = status_of(client, "/predict", {"data": [ROW]})
    row = {"step": "restart: process up", "status": f"/health {health.status_code}",
           "version": "-",
           "outcome": f"after {live_s:.1f}s; /ready {ready.status_code if ready else '-'}, "
                      f"/predict {predicted.status_code if predicted else '-'}",
           "detail": short(ready.json()["message"]) if ready is not None else ""}
    return row, began


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    repo = Path(stack.proc("repository").env["REPO_DIR"])
    with Client(stack.url()) as predictor, Client(stack.url("repository")) as repository:
        # 1. start-up: live at once, ready when the model is in memory
        row, began = watch_start(stack, predictor)
        rows.append(row)
        predictor.wait_ready(timeout=60)
        load = predictor.get("/metadata").json()["load"]["last_load"]
        rows.append({"step": "restart: model loaded", "status": "/ready 200",
                     "version": load["version"],
                     "outcome": f"ready {time.monotonic() - began:.1f}s after the spawn",
                     "detail": f"download {load['download_ms']:.0f} ms ({load['bytes']} bytes, "
                               f"sha256 {load['sha256'][:12]} verified), load "
                               f"{load['load_ms']:.0f} ms"})

        # 2. the same code, other env
        with Client(stack.url("wine_predictor")) as wine:
            meta = wine.get("/metadata").json()
        rows.append({"step": "wine_predictor (same code)", "status": "/metadata",
                     "version": meta["model_version"],
                     "outcome": f"serves {meta['model']['name']}, {meta['n_features']} features",
                     "detail": "MODEL_NAME=wine_lr MODEL_VERSION=1.0.0"})

        # 3. a swap under traffic
        with Traffic(f"{stack.url()}/predict", {"data": [ROW]}, senders=4) as traffic:
            traffic.wait_for(5)
            swap, ms = predictor.timed("POST", "/admin/load", json={"version": "1.1.0"})
            done = time.monotonic()
            traffic.wait_for(5, since=done)
        sent = traffic.sent()
        went_back = sum(
            1 for replies in traffic.by_sender().values()
            for a, b in itertools.pairwise(replies)
            if (a.version, b.version) == ("1.1.0", "1.0.0")
        )
        counts = {v: sum(1 for s in sent if s.version == v) for v in ("1.0.0", "1.1.0")}
        rows.append({"step": "swap under traffic", "status": f"POST /admin/load {swap.status_code}",
                     "version": f"{swap.json()['previous']} -> {swap.json()['version']}",
                     "outcome": f"{len(sent)} requests, {len(traffic.failures())} failed, "
                                f"went back {went_back} times",
                     "detail": f"1.0.0 answered {counts['1.0.0']}, 1.1.0 {counts['1.1.0']}; "
                               f"the swap took {ms:.0f} ms"})

        # 4. refused versions: the old one keeps serving
        bad = tampered_copy(repo, "1.2.0")
        try:
            for what, body in [("newer runtime (2.0.0)", {"version": "2.0.0"}),
                               ("other interface (wine_lr)", {"name": "wine_lr",
                                                              "version": "1.0.0"}),
                               ("tampered file (1.2.0)", {"version": "1.2.0"})]:
                resp = predictor.post("/admin/load", json=body)
                after = predictor.post("/predict", json={"data": [ROW]})
                rows.append({"step": f"refused: {what}",
                             "status": f"{resp.status_code} {resp.json()['error']}",
                             "version": after.headers.get("x-model-version"),
                             "outcome": f"/predict still {after.status_code}",
                             "detail": short(resp.json()["message"], 150)})
        finally:
            shutil.rmtree(bad, ignore_errors=True)

        # 5. rollback: the same call with the previous version
        back = predictor.post("/admin/load", json={"version": "1.0.0"})
        rows.append({"step": "rollback", "status": f"POST /admin/load {back.status_code}",
                     "version": f"{back.json()['previous']} -> {back.json()['version']}",
                     "outcome": "served from the next request on",
                     "detail": f"download {back.json()['download_ms']:.0f} ms"})

        # 6. a start with an incompatible version: alive, unready, saying why
        stack.restart("predictor", env={"MODEL_VERSION": "2.0.0"}, wait=False)

        def refused() -> dict[str, Any] | None:
            meta = status_of(predictor, "/metadata")
            load = meta.json()["load"] if meta is not None else {}
            return load if load.get("state") == "refused" else None

        wait_until(refused, 60, what="the start-up load refused")
        ready = predictor.get("/ready")
        rows.append({"step": "start with MODEL_VERSION=2.0.0",
                     "status": f"/health {predictor.get('/health').status_code}, "
                               f"/ready {ready.status_code}",
                     "version": "-", "outcome": "stays unready (no retry, no crash loop)",
                     "detail": short(ready.json()["message"], 150)})
        stats = repository.stats()
    rows.append({"step": "repository /stats", "status": "-", "version": "-",
                 "outcome": f"{stats['requests']['downloads']} downloads, "
                            f"{stats['requests']['manifests']} manifests",
                 "detail": f"by version: {json.dumps(stats['downloads'])}"})
    return rows
