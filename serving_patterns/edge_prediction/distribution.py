"""The model distribution service of S13: hands versioned, sha256-checked ONNX models to devices.

The model folder holds one sub-folder per published version (`<MODEL_DIR>/1.0.0/model.onnx` +
`manifest.json`, written by trainer one-shots) and is read again on every request (the model
repository's `patternkit.model_repository.ModelStore`), so a version is offered as soon as its
folder is renamed into place. `GET /models/latest` and
`GET /models/{version}` describe a version, `GET /models/{version}/model.onnx` sends the bytes
with `ETag: "<sha256>"` (304 on a matching `If-None-Match`), and devices report counts, never
their inputs, to `POST /telemetry`. It also serves the web page that runs the same model in the
browser with onnxruntime-web.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, ConfigDict, Field

from patternkit.model_repository import (
    IMMUTABLE,
    VERSION_RE,
    ModelStore,
    etag_matches,
)
from patternkit.models import MODEL_FILE
from patternkit.service import ApiError, ServiceState, create_service, json_response
from patternkit.settings import ServiceSettings

log = logging.getLogger("edge_prediction.distribution")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
}
CORS = {"access-control-allow-origin": "*", "access-control-expose-headers": "etag"}


class DistributionSettings(ServiceSettings):
    """Where the published versions and the web page live."""

    service_name: str = "distribution"
    model_dir: str = Field(..., description="one sub-folder per version: X.Y.Z/model.onnx")
    static_dir: str = Field(str(STATIC_DIR), description="the web page and vendored ORT web")


class TelemetryReport(BaseModel):
    """What a device reports: its version and counts. There is no field for inputs."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(..., min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    version: str = Field(..., pattern=VERSION_RE.pattern)
    predictions: int = Field(..., ge=0, description="predictions made on the device so far")
    class_counts: Annotated[dict[str, Annotated[int, Field(ge=0)]], Field(max_length=64)] = (
        Field(default_factory=dict)
    )
    fallbacks: int = Field(0, ge=0, description="predictions the server made instead")


REQUESTS = ("latest_checks", "latest_not_modified", "manifests", "not_modified", "downloads",
            "telemetry_reports")


@dataclass(frozen=True)
class Distribution:
    """What the routes read from the lifespan state: the model store, the page's folder, the
    devices' last reports, and the counts (declared once: /metrics and /stats)."""

    store: ModelStore
    static_root: Path
    devices: dict[str, dict[str, Any]]
    requests: PromCounter  # by kind (REQUESTS), /stats "requests"
    downloads: PromCounter  # by version, /stats "downloads_by_version"

    def count(self, kind: str) -> None:
        self.requests.labels(kind).inc()


def distribution(request: Request) -> Distribution:
    found: Distribution = request.state.distribution
    return found


async def list_models(request: Request) -> Response:
    published = distribution(request).store.published()
    return json_response(
        {"latest": published[0].version if published else None,
         "versions": [p.summary() for p in published]},
        headers={"cache-control": "no-cache", **CORS},
    )


async def latest(request: Request) -> Response:
    """The newest version; `ETag: "<version>:<sha256>"` makes polling for updates cheap."""
    dist = distribution(request)
    dist.count("latest_checks")
    found = dist.store.latest()
    etag = f'"{found.version}:{found.sha256}"'
    headers = {"etag": etag, "cache-control": "no-cache", **CORS}
    if etag_matches(request.headers.get("if-none-match"), etag):
        dist.count("latest_not_modified")
        return Response(status_code=304, headers=headers)
    return json_response(found.summary(), headers=headers)


async def manifest(version: str, request: Request) -> Response:
    dist = distribution(request)
    found = dist.store.get(version)
    dist.count("manifests")
    return json_response(
        {**found.manifest, "size": found.size, "url": found.url},
        headers={"cache-control": IMMUTABLE, **CORS},
    )


async def model_file(version: str, request: Request) -> Response:
    """The model bytes as stored; devices check them against the manifest's sha256."""
    dist = distribution(request)
    found = dist.store.get(version)
    etag = f'"{found.sha256}"'
    headers = {"etag": etag, "cache-control": IMMUTABLE, **CORS}
    if etag_matches(request.headers.get("if-none-match"), etag):
        dist.count("not_modified")
        return Response(status_code=304, headers=headers)
    try:  # small files: read whole, so a version withdrawn meanwhile is a 404, not a 500
        data = await asyncio.to_thread(found.model_path.read_bytes)
    except FileNotFoundError:
        raise ApiError(
            404, f"model version {version} was withdrawn", "model_not_found"
        ) from None
    if request.method == "GET":
        dist.count("downloads")
        dist.downloads.labels(version).inc()
    return Response(data, media_type="application/octet-stream", headers=headers)


async def telemetry(report: TelemetryReport, request: Request) -> Response:
    """A device's counts (the last report per device is kept, in memory)."""
    dist = distribution(request)
    dist.count("telemetry_reports")
    dist.devices[report.device_id] = {
        **report.model_dump(exclude={"device_id"}),
        "reported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return json_response({"accepted": True, "device_id": report.device_id}, status=202)


async def telemetry_summary(request: Request) -> Response:
    devices = distribution(request).devices
    versions = Counter(str(d["version"]) for d in devices.values())
    return json_response({"devices": devices, "versions_in_use": dict(versions)})


def static_file(root: Path, relative: str) -> Response:
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        hint = " (run `make vendor` to fetch onnxruntime-web)" if "vendor/" in relative else ""
        raise ApiError(404, f"no static file {relative!r}{hint}", "not_found")
    media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"cache-control": "no-cache"})


async def index(request: Request) -> Response:
    return static_file(distribution(request).static_root, "index.html")


async def static(relative: str, request: Request) -> Response:
    return static_file(distribution(request).static_root, relative)


def create_app(settings: DistributionSettings | None = None) -> FastAPI:
    """The distribution app (uvicorn --factory ...edge_prediction.distribution:create_app)."""
    cfg = settings or DistributionSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[dict[str, object]]:
        store = ModelStore(Path(cfg.model_dir))
        static_root = Path(cfg.static_dir).resolve()
        store.root.mkdir(parents=True, exist_ok=True)
        state.metadata.update(model_dir=str(store.root), static_dir=str(static_root))
        dist = Distribution(
            store, static_root, {},
            state.metrics.counter("edge_distribution_requests", "requests served, by kind",
                                  {"kind": REQUESTS}, stat="requests"),
            state.metrics.counter("edge_distribution_downloads", "model files sent, by version",
                                  {"version": ()}, stat="downloads_by_version"),
        )
        log.info("serving versions %s from %s", store.versions() or "(none yet)", store.root)
        yield {"distribution": dist}

    app = create_service(cfg, title="edge prediction: model distribution", lifespan=lifespan)
    app.get("/models", tags=["models"])(list_models)
    app.get("/models/latest", tags=["models"])(latest)
    app.get("/models/{version}", tags=["models"])(manifest)
    model_path = f"/models/{{version}}/{MODEL_FILE}"
    app.get(model_path, tags=["models"], operation_id="model_file")(model_file)
    app.head(model_path, tags=["models"], operation_id="model_file_head")(model_file)
    app.post("/telemetry", tags=["telemetry"], status_code=202)(telemetry)
    app.get("/telemetry", tags=["telemetry"])(telemetry_summary)
    app.get("/", tags=["page"], include_in_schema=False)(index)
    app.get("/static/{relative:path}", tags=["page"], include_in_schema=False)(static)
    return app
