"""The model repository: versioned ONNX artifacts and the service that hands them out.

A model version is a folder `<root>/<name>/<version>/` holding `model.onnx` and its
`manifest.json`, published by renaming a complete folder into place (`publish`), so a reader
sees a version whole or not at all; `ModelStore` reads one model's versions from disk on every
call. The repository service (`create_app`) serves `GET /models`, `GET /models/{name}`, a
version's manifest (`latest` names the newest) and its file, streamed with `ETag: "<sha256>"`
and slowed by DOWNLOAD_DELAY_MS so that a server's download is visible. A model may have
aliases (`patternkit.aliases`, MLflow's): `PUT /models/{name}/aliases/{alias}` points one at a
version, a manifest asked for by alias is that version's, and
`POST /models/{name}/aliases/{alias}/rollback` moves it back to the version before. Loading servers
(patternkit.loader, O2), edge devices (S13's distribution reuses the store) and the lifecycle
patterns read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from patternkit.aliases import AliasFile, is_alias
from patternkit.models import MANIFEST_FILE, MODEL_FILE, ModelError, read_verified_manifest
from patternkit.service import ApiError, ServiceState, create_service, json_response
from patternkit.settings import ServiceSettings

log = logging.getLogger("patternkit.model_repository")

VERSION_RE = re.compile(r"^(\d{1,6})\.(\d{1,6})\.(\d{1,6})$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
LATEST = "latest"
IMMUTABLE = "public, max-age=31536000, immutable"  # a published version never changes


def version_key(version: str) -> tuple[int, int, int]:
    match = VERSION_RE.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a version like 1.0.0")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (weak tags and `*` included)."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags)


@dataclass(frozen=True)
class Published:
    """One published version: its folder, manifest, the size of its model file, and the URL
    prefix it is served under (`/models` for S13, `/models/<name>` for the repository)."""

    version: str
    folder: Path
    manifest: dict[str, Any]
    size: int
    base: str = "/models"

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def url(self) -> str:
        return f"{self.base}/{self.version}/{MODEL_FILE}"

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.manifest.get("name"),
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "url": self.url,
            "manifest_url": f"{self.base}/{self.version}",
            "created": self.manifest.get("created"),
            "metrics": self.manifest.get("metrics", {}),
        }

    def described(self) -> dict[str, Any]:
        """The manifest as served: plus the file's size and URLs."""
        return {**self.manifest, "size": self.size, "url": self.url,
                "manifest_url": f"{self.base}/{self.version}"}


class ModelStore:
    """One model's published versions (`root/<version>/`), read from disk on every call."""

    def __init__(self, root: Path, base: str = "/models", name: str | None = None) -> None:
        self.root = root
        self.base = base
        self.name = name

    def _what(self, version: str) -> str:
        return f"model {self.name} version {version}" if self.name else f"model version {version}"

    def versions(self) -> list[str]:
        """Published version names, newest first (folders named like a version only)."""
        try:
            names = [p.name for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return []
        return sorted((n for n in names if VERSION_RE.match(n)), key=version_key, reverse=True)

    def load(self, version: str) -> Published | None:
        """The version, or None while it is incomplete or unreadable (logged)."""
        folder = self.root / version
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            size = (folder / MODEL_FILE).stat().st_size
        except FileNotFoundError:
            return None  # not (completely) published
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: unreadable artifact: %s", self._what(version), exc)
            return None
        if manifest.get("version") != version or not manifest.get("sha256"):
            log.warning("skipping %s: its manifest says version %r, sha256 %r",
                        self._what(version), manifest.get("version"), manifest.get("sha256"))
            return None
        return Published(version, folder, manifest, size, self.base)

    def published(self) -> list[Published]:
        return [p for p in (self.load(v) for v in self.versions()) if p is not None]

    def latest(self) -> Published:
        for version in self.versions():
            found = self.load(version)
            if found is not None:
                return found
        what = f"of model {self.name} " if self.name else ""
        raise ApiError(404, f"no version {what}is published in {self.root} yet", "no_model")

    def aliases(self) -> AliasFile:
        return AliasFile(self.root, self.name or self.root.name)

    def resolve(self, version: str) -> Published:
        """`get`, where `latest` names the newest version and an alias the one it points at."""
        if version == LATEST:
            return self.latest()
        if VERSION_RE.match(version) is None and is_alias(version):
            return self.get(self.aliases().require(version))
        return self.get(version)

    def get(self, version: str) -> Published:
        """A published version, or a 422 (not X.Y.Z) or 404 naming the problem."""
        if VERSION_RE.match(version) is None:
            raise ApiError(
                422, f"version {version!r} is not of the form X.Y.Z (e.g. 1.0.0)",
                "validation_error", [{"loc": "path.version", "msg": "expected X.Y.Z"}],
            )
        found = self.load(version)
        if found is None:
            known = ", ".join(self.versions()) or "none"
            raise ApiError(
                404, f"{self._what(version)} is not published (published: {known})",
                "model_not_found",
            )
        return found


class ModelRepository:
    """Every model of a repository folder: `root/<name>/<version>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir()
                          if p.is_dir() and NAME_RE.match(p.name))
        except OSError:
            return []

    def store(self, name: str) -> ModelStore:
        """The store of model `name`, or a 422/404 naming the problem."""
        if NAME_RE.match(name) is None:
            raise ApiError(
                422, f"model name {name!r} is not lower-case letters, digits and _",
                "validation_error", [{"loc": "path.name", "msg": "expected e.g. iris_lr"}],
            )
        if not (self.root / name).is_dir():
            known = ", ".join(self.names()) or "none"
            raise ApiError(404, f"no model named {name!r} in the repository (models: {known})",
                           "model_not_found")
        return ModelStore(self.root / name, f"/models/{name}", name)


def publish(src: str | Path, root: str | Path, name: str | None = None,
            version: str | None = None) -> Path:
    """Publish the verified artifact in `src` as `root/<name>/<version>` (from its manifest
    unless given); the folder is copied beside its place and renamed in, so the repository
    never shows half a version. A version is immutable: publishing over it is refused."""
    _, manifest = read_verified_manifest(src)
    name = name or str(manifest["name"])
    version = version or str(manifest["version"])
    if NAME_RE.match(name) is None or VERSION_RE.match(version) is None:
        raise ModelError(f"cannot publish {name!r} {version!r}: expected a name like iris_lr "
                         "and a version like 1.0.0")
    if manifest.get("version") != version:
        raise ModelError(f"{src} holds version {manifest.get('version')}, not {version}")
    target = Path(root) / name / version
    if target.exists():
        raise ModelError(f"{name} {version} is already published in {root}; "
                         "a version never changes: publish a new one")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        for file in (MODEL_FILE, MANIFEST_FILE):
            shutil.copyfile(Path(src) / file, staging / file)
        staging.chmod(0o755)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class RepositorySettings(ServiceSettings):
    """Where the models are and how slowly their files go out."""

    service_name: str = "repository"
    repo_dir: str = Field(..., description="one folder per model, one per version inside")
    download_delay_ms: int = Field(0, ge=0, description="spread over each model download")
    download_chunk_bytes: int = Field(16_384, gt=0, description="streamed in chunks this big")


REQUESTS = ("listings", "manifests", "downloads", "not_modified")


@dataclass(frozen=True)
class Repository:
    """What the routes read from the lifespan state."""

    models: ModelRepository
    settings: RepositorySettings
    requests: Counter  # by kind (REQUESTS): /stats "requests"
    downloads: Counter  # by model and version: /stats "downloads"
    sent_bytes: Counter  # model bytes streamed: /stats "sent_bytes"


def repository(request: Request) -> Repository:
    found: Repository = request.state.repository
    return found


async def list_models(request: Request) -> Response:
    repo = repository(request)
    repo.requests.labels("listings").inc()
    models = []
    for name in repo.models.names():
        store = ModelStore(repo.models.root / name, f"/models/{name}", name)
        versions = [p.version for p in store.published()]
        models.append({"name": name, "latest": versions[0] if versions else None,
                       "versions": versions})
    return json_response({"models": models}, headers={"cache-control": "no-cache"})


async def list_versions(name: str, request: Request) -> Response:
    repo = repository(request)
    repo.requests.labels("listings").inc()
    published = repo.models.store(name).published()
    return json_response(
        {"name": name, "latest": published[0].version if published else None,
         "versions": [p.summary() for p in published]},
        headers={"cache-control": "no-cache"},
    )


async def manifest(name: str, version: str, request: Request) -> Response:
    """A version's manifest (with its `requires`), read before any byte of the model."""
    repo = repository(request)
    found = repo.models.store(name).resolve(version)
    repo.requests.labels("manifests").inc()
    cache = IMMUTABLE if VERSION_RE.match(version) else "no-cache"  # latest, an alias: move
    return json_response(found.described(), headers={"cache-control": cache})


class AliasRequest(BaseModel):
    """The version an alias is to point at."""

    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"version": "1.0.0"}]})

    version: str = Field(..., pattern=VERSION_RE.pattern, description="a published X.Y.Z")


async def list_aliases(name: str, request: Request) -> Response:
    """Every alias of the model: its version and the versions it pointed at before."""
    store = repository(request).models.store(name)
    return json_response({"name": name, "aliases": store.aliases().read()},
                         headers={"cache-control": "no-cache"})


async def get_alias(name: str, alias: str, request: Request) -> Response:
    store = repository(request).models.store(name)
    found = store.get(store.aliases().require(alias))
    return json_response({"alias": alias, **found.summary()}, headers={"cache-control": "no-cache"})


async def set_alias(name: str, alias: str, body: AliasRequest, request: Request) -> Response:
    """Point `alias` at a published version (create or move it); the answer names the version
    it pointed at before."""
    store = repository(request).models.store(name)
    store.get(body.version)  # published, or a 404 naming what is
    moved = store.aliases().set(alias, body.version)
    log.info("alias %s@%s: %s -> %s", name, alias, moved["previous"], body.version)
    return json_response(moved)


async def roll_back_alias(name: str, alias: str, request: Request) -> Response:
    """Move `alias` back to the version it pointed at before (409 when there is none)."""
    store = repository(request).models.store(name)
    moved = store.aliases().back(alias)
    store.get(moved["version"])  # still published (a version is never deleted here)
    log.warning("alias %s@%s rolled back: %s -> %s", name, alias, moved["previous"],
                moved["version"])
    return json_response(moved)


async def model_file(name: str, version: str, request: Request) -> Response:
    """The model bytes as stored, streamed; the loader hashes them as they arrive."""
    repo = repository(request)
    found = repo.models.store(name).get(version)  # X.Y.Z only: a file URL never changes
    etag = f'"{found.sha256}"'
    headers = {"etag": etag, "cache-control": IMMUTABLE}
    if etag_matches(request.headers.get("if-none-match"), etag):
        repo.requests.labels("not_modified").inc()
        return Response(status_code=304, headers=headers)
    headers["content-length"] = str(found.size)
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers,
                        media_type="application/octet-stream")
    try:
        handle = found.model_path.open("rb")  # opened now: a withdrawn version is a 404
    except FileNotFoundError:
        raise ApiError(404, f"model {name} version {version} was withdrawn",
                       "model_not_found") from None
    repo.requests.labels("downloads").inc()
    repo.downloads.labels(name, version).inc()
    cfg = repo.settings
    chunks = max(1, -(-found.size // cfg.download_chunk_bytes))
    pause = cfg.download_delay_ms / 1000 / chunks

    async def stream() -> AsyncIterator[bytes]:
        with handle:
            while chunk := await asyncio.to_thread(handle.read, cfg.download_chunk_bytes):
                if pause:
                    await asyncio.sleep(pause)
                repo.sent_bytes.inc(len(chunk))
                yield chunk

    return StreamingResponse(stream(), media_type="application/octet-stream", headers=headers)


def create_app(settings: RepositorySettings | None = None) -> FastAPI:
    """The repository app (uvicorn --factory patternkit.model_repository:create_app)."""
    cfg = settings or RepositorySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[dict[str, object]]:
        models = ModelRepository(Path(cfg.repo_dir))
        models.root.mkdir(parents=True, exist_ok=True)
        state.metadata.update(repo_dir=str(models.root),
                              download_delay_ms=cfg.download_delay_ms)
        repo = Repository(
            models, cfg,
            state.metrics.counter("model_repository_requests", "requests served, by kind",
                                  {"kind": REQUESTS}, stat="requests"),
            state.metrics.counter("model_repository_downloads", "model files sent",
                                  {"model": (), "version": ()}, stat="downloads"),
            state.metrics.counter("model_repository_sent_bytes", "model bytes streamed",
                                  stat="sent_bytes"),
        )
        log.info("serving models %s from %s", models.names() or "(none yet)", models.root)
        yield {"repository": repo}

    app = create_service(cfg, title="model repository", lifespan=lifespan)
    app.get("/models", tags=["models"])(list_models)
    app.get("/models/{name}", tags=["models"])(list_versions)
    aliases = "/models/{name}/aliases"  # before /models/{name}/{version}, which would match
    app.get(aliases, tags=["aliases"])(list_aliases)
    app.get(aliases + "/{alias}", tags=["aliases"])(get_alias)
    app.put(aliases + "/{alias}", tags=["aliases"])(set_alias)
    app.post(aliases + "/{alias}/rollback", tags=["aliases"], responses={
        409: {"description": "the alias never pointed at another version"}})(roll_back_alias)
    app.get("/models/{name}/{version}", tags=["models"])(manifest)
    file_path = f"/models/{{name}}/{{version}}/{MODEL_FILE}"
    app.get(file_path, tags=["models"], operation_id="model_file")(model_file)
    app.head(file_path, tags=["models"], operation_id="model_file_head")(model_file)
    return app
