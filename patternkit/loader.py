"""A server that loads its model from a model repository at start-up and swaps it on request (O2).

The template predictor's opt-in mode (MODEL_REPO_URL set): `ModelLoader` asks the repository
for the manifest of MODEL_NAME and MODEL_VERSION, refuses it before any download when this
server cannot run it (`compatibility_problems`: the onnxruntime version and opsets the manifest
`requires`, the input schema its clients send), streams the file while hashing it (a sha256
other than the manifest's is refused), loads and warms it with onnxruntime, and only then
serves it. Until then `/ready` and `/predict` answer 503 with the reason (`/health`, liveness,
stays 200); a refused model stays refused, its error on `/ready`, `/metadata` and in the log,
while an unreachable repository or a version not published yet is retried with a backoff.
`POST /admin/load` swaps to another version the same way: requests keep being served by the
old model until the new one is in memory, then the switch is one assignment. MODEL_VERSION (or
a load) may name an alias (`champion`, `patternkit.aliases`) that the repository resolves;
`POST /admin/rollback` is a rollback in one call: it moves the followed alias back to the
version before (without an alias: the version served before the last swap) and swaps to it.
`create_loading_app` is that predictor (`patternkit.predictor.create_app` hands over to it).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator

from patternkit.aliases import ALIAS_RE, is_alias
from patternkit.faults import Faults
from patternkit.model_repository import LATEST, NAME_RE, VERSION_RE
from patternkit.models import DEFAULT_DOMAIN, MANIFEST_FILE, MODEL_FILE, ModelError, OnnxModel
from patternkit.oip import add_oip_routes
from patternkit.predictor import (
    ModelSlot,
    Resources,
    add_predict_route,
    prediction_log,
    registration,
)
from patternkit.proxy import error_message, failure_cause
from patternkit.service import ApiError, ServiceState, background, create_service, json_response
from patternkit.settings import PredictorSettings

log = logging.getLogger("patternkit.loader")

RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0
OUTCOMES = ("loaded", "refused", "failed")
SWAPS_KEPT = 20  # the last swaps /metadata shows
# what a served manifest adds to the stored one (patternkit.model_repository.Published)
SERVED_KEYS = frozenset({"size", "url", "manifest_url"})


class LoadFailed(Exception):
    """A model that could not be loaded: the status and error code an admin call answers,
    and whether trying again later may succeed (the repository may come back, a version may
    be published) or not (the same bytes would be refused again)."""

    status = 500
    error = "load_failed"
    retry = False
    outcome = "failed"


class RepositoryUnavailable(LoadFailed):
    status, error, retry = 503, "repository_unavailable", True


class ModelNotFound(LoadFailed):
    status, error, retry = 404, "model_not_found", True


class NoPreviousVersion(LoadFailed):
    status, error, outcome = 409, "no_previous_version", "refused"


class Incompatible(LoadFailed):
    status, error, outcome = 409, "incompatible_model", "refused"


class ChecksumMismatch(LoadFailed):
    status, error, outcome = 502, "checksum_mismatch", "refused"


class Unloadable(LoadFailed):
    status, error, outcome = 422, "unloadable_model", "refused"


def onnxruntime_version() -> str:
    try:
        return pkg_version("onnxruntime")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        return "0"


@functools.cache
def runtime_opsets() -> dict[str, int]:
    """The highest opset per domain this onnxruntime has a CPU kernel for (`ai.onnx` for the
    default domain): the runtime's side of the compatibility table, read from the runtime."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        kernels = ort_state.get_all_opkernel_def()
    except (ImportError, AttributeError):  # pragma: no cover - a private API went away
        return {}
    found: dict[str, int] = {}
    for kernel in kernels:
        if kernel.provider != "CPUExecutionProvider":
            continue
        domain = kernel.domain or DEFAULT_DOMAIN
        found[domain] = max(found.get(domain, 0), int(kernel.version_range[0]))
    return found


def schema_text(schema: dict[str, Any]) -> str:
    features = schema.get("features") or []
    names = f" ({', '.join(map(str, features))})" if features else ""
    return f"{schema.get('n_features')} features{names}"


def compatibility_problems(
    manifest: dict[str, Any],
    *,
    expected_features: int = 0,
    serving: dict[str, Any] | None = None,
    runtime: str | None = None,
    opsets: dict[str, int] | None = None,
) -> list[str]:
    """Why this server cannot serve the model of `manifest`, in words (empty: it can).

    Checked: `requires.onnxruntime` (a version specifier) against the installed onnxruntime,
    each of `requires.opset` against the opsets it implements, and the input schema: float32
    rows, `expected_features` wide when set, and the same features as the model `serving`
    (its input schema) when this load would replace one, since its clients send those.
    """
    runtime = runtime or onnxruntime_version()
    opsets = runtime_opsets() if opsets is None else opsets
    problems: list[str] = []
    requires = manifest.get("requires")
    if not isinstance(requires, dict):
        problems.append("its manifest declares no `requires` (onnxruntime, opset), so this "
                        "server cannot tell whether it can run it")
        requires = {}
    spec = requires.get("onnxruntime")
    if isinstance(requires, dict) and requires and not spec:
        problems.append("its manifest `requires` names no onnxruntime version")
    elif spec:
        try:
            ok = SpecifierSet(str(spec)).contains(Version(runtime), prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            problems.append(f"its `requires.onnxruntime` {spec!r} is not a version specifier")
        else:
            if not ok:
                problems.append(f"it requires onnxruntime{spec}; this server has onnxruntime "
                                f"{runtime}")
    needed = requires.get("opset") or {}
    if not isinstance(needed, dict):
        problems.append(f"its `requires.opset` {needed!r} is not a map of domain to version")
        needed = {}
    for domain, version in sorted(needed.items()):
        top = opsets.get(domain)
        if not isinstance(version, int):
            problems.append(f"its `requires.opset` for {domain} is {version!r}, not a number")
        elif top is None and opsets:
            problems.append(f"it needs opset {version} of the domain {domain}, which "
                            f"onnxruntime {runtime} does not implement")
        elif top is not None and version > top:
            problems.append(f"it needs opset {version} of {domain}; onnxruntime {runtime} "
                            f"implements up to {top}")
    schema = manifest.get("input_schema")
    if not isinstance(schema, dict) or not isinstance(schema.get("n_features"), int):
        problems.append("its manifest has no input schema (`input_schema.n_features`)")
        return problems
    if schema.get("dtype", "float32") != "float32":
        problems.append(f"it takes {schema['dtype']} inputs; this server sends float32")
    width = schema["n_features"]
    if expected_features and width != expected_features:
        problems.append(f"it takes {width} input features; this server's clients send "
                        f"{expected_features} (EXPECTED_FEATURES)")
    elif serving is not None and (
        width != serving.get("n_features")
        or (schema.get("features") or None) != (serving.get("features") or None)
    ):
        problems.append(f"it takes {schema_text(schema)}, the model it would replace "
                        f"{schema_text(serving)}: a swap must keep the clients' interface")
    return problems


@dataclass(frozen=True)
class Download:
    folder: Path
    size: int
    seconds: float


class RepoClient:
    """Reads manifests and streams model files from a model repository (aiohttp)."""

    def __init__(self, base_url: str, timeout_s: float, max_bytes: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # a stalled transfer is bounded per read, not by a total: big models take long
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(self.timeout_s, 2.0),
                                            sock_read=self.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _unreachable(self, url: str, exc: BaseException) -> RepositoryUnavailable:
        cause = failure_cause(exc) if isinstance(exc, aiohttp.ClientError) else (
            f"no answer within {self.timeout_s:g} s")
        return RepositoryUnavailable(f"the model repository at {self.base_url} is unreachable "
                                     f"({cause}) for {url}")

    async def manifest(self, name: str, version: str) -> dict[str, Any]:
        """The manifest the repository serves for `name` `version` (`latest` resolved)."""
        url = f"{self.base_url}/models/{name}/{version}"
        try:
            async with self.session.get(url) as resp:
                status, body = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(url, exc) from None
        if status == 404:
            raise ModelNotFound(f"the model repository has no {name} {version}: "
                                f"{error_message(body)}")
        if status != 200:
            raise RepositoryUnavailable(f"the model repository answered {status} for {url}: "
                                        f"{error_message(body)}")
        try:
            manifest = orjson.loads(body)
        except orjson.JSONDecodeError:
            manifest = None
        if not isinstance(manifest, dict) or not manifest.get("sha256"):
            raise RepositoryUnavailable(f"the model repository sent no manifest for {url}")
        pinned = VERSION_RE.match(version) is not None  # not `latest`, not an alias
        if manifest.get("name") != name or (pinned and manifest.get("version") != version):
            raise Incompatible(f"asked for {name} {version}, the repository sent the manifest "
                               f"of {manifest.get('name')} {manifest.get('version')}")
        return manifest

    async def alias_back(self, name: str, alias: str) -> dict[str, Any]:
        """Move `alias` of `name` back to the version it pointed at before (the repository's
        `POST .../aliases/{alias}/rollback`): its answer, or a LoadFailed naming why not."""
        url = f"{self.base_url}/models/{name}/aliases/{alias}/rollback"
        try:
            async with self.session.post(url) as resp:
                status, body = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(url, exc) from None
        if status == 409:
            raise NoPreviousVersion(error_message(body))
        if status == 404:
            raise ModelNotFound(f"the model repository has no alias {alias} of {name}: "
                                f"{error_message(body)}")
        if status != 200:
            raise RepositoryUnavailable(f"the model repository answered {status} for {url}: "
                                        f"{error_message(body)}")
        moved: dict[str, Any] = orjson.loads(body)
        return moved

    async def download(self, manifest: dict[str, Any], root: Path) -> Download:
        """Stream the model file into `root/<name>/<version>/`, hashing every chunk as it
        arrives; the folder appears (renamed into place) only when the bytes match the
        manifest's sha256, with the manifest beside them."""
        name, version = str(manifest["name"]), str(manifest["version"])
        expected = str(manifest["sha256"])
        size = manifest.get("size")
        if isinstance(size, int) and size > self.max_bytes:
            raise Incompatible(f"{name} {version} is {size} bytes, over this server's limit "
                               f"of {self.max_bytes} (MAX_MODEL_BYTES)")
        url = self.base_url + str(manifest.get("url") or f"/models/{name}/{version}/{MODEL_FILE}")
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".download-{name}-{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        started = time.perf_counter()
        digest, got = hashlib.sha256(), 0
        try:
            try:
                async with self.session.get(url) as resp:
                    if resp.status != 200:
                        body = await resp.read()
                        kind = ModelNotFound if resp.status == 404 else RepositoryUnavailable
                        raise kind(f"the model repository answered {resp.status} for {url}: "
                                   f"{error_message(body)}")
                    with (staging / MODEL_FILE).open("wb") as out:
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            got += len(chunk)
                            if got > self.max_bytes:
                                raise Incompatible(
                                    f"{name} {version} is over this server's limit of "
                                    f"{self.max_bytes} bytes (MAX_MODEL_BYTES)")
                            digest.update(chunk)
                            out.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._unreachable(url, exc) from None
            actual = digest.hexdigest()
            if actual != expected:
                raise ChecksumMismatch(
                    f"sha256 mismatch for {name} {version}: its manifest says {expected}, the "
                    f"{got} bytes downloaded hash to {actual}; refused, nothing of it is loaded")
            stored = {k: v for k, v in manifest.items() if k not in SERVED_KEYS}
            (staging / MANIFEST_FILE).write_bytes(orjson.dumps(stored, option=orjson.OPT_INDENT_2))
            target = root / name / version
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)  # an earlier download of the same one
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Download(target, got, time.perf_counter() - started)


class LoadRequest(BaseModel):
    """Which version to serve next (and, optionally, another model of the same interface)."""

    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"version": "1.1.0"}]})

    version: str = Field(..., pattern=rf"{VERSION_RE.pattern}|^{LATEST}$|{ALIAS_RE.pattern}",
                         description="X.Y.Z, `latest`, or an alias such as `champion`")
    name: str | None = Field(None, pattern=NAME_RE.pattern,
                             description="the model (default: the one being served)")

    @field_validator("version")
    @classmethod
    def _not_reserved(cls, version: str) -> str:
        if VERSION_RE.match(version) is None and version != LATEST and not is_alias(version):
            raise ValueError(f"{version!r} is a reserved name, not a version or an alias")
        return version


LOAD_EXAMPLE: dict[str, Any] = {
    "status": "loaded", "model": "iris_lr", "version": "1.1.0", "previous": "1.0.0",
    "bytes": 623, "download_ms": 1503.2, "load_ms": 12.4, "sha256": "4f1c...",
}


class ModelLoader:
    """Loads the model the settings name at start-up (retrying what may pass later) and swaps
    to another on request; its status is `/metadata`'s `load`."""

    def __init__(
        self,
        cfg: PredictorSettings,
        state: ServiceState,
        slot: ModelSlot,
        on_load: Callable[[ServiceState, OnnxModel], object] | None = None,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.slot = slot
        self.on_load = on_load
        self.client = RepoClient(cfg.model_repo_url, cfg.repo_timeout_s, cfg.max_model_bytes)
        self._own_dir = not cfg.model_download_dir
        self.root = Path(cfg.model_download_dir or tempfile.mkdtemp(prefix="model-download-"))
        self.lock = asyncio.Lock()
        self.status: dict[str, Any] = {
            "state": "starting", "repository": cfg.model_repo_url,
            "wanted": {"model": cfg.model_name, "version": cfg.model_version},
            "alias": cfg.model_version if is_alias(cfg.model_version) else None,
            "serving": None, "loading": None, "error": None, "attempts": 0,
            "last_load": None, "swaps": [],
        }
        state.metadata.update(load=self.status, max_batch_rows=cfg.max_batch_rows)
        self.loads = state.metrics.counter(
            "model_loads", "model loads, by outcome (loaded, refused, failed)",
            {"outcome": OUTCOMES}, stat="loads")
        self.downloaded = state.metrics.counter(
            "model_download_bytes", "model bytes downloaded and verified", stat="download_bytes")

    def _unready(self, reason: str) -> None:
        if self.slot.model is None:
            self.state.unready_reason = reason

    async def fetch(self, name: str, version: str) -> tuple[OnnxModel, dict[str, Any]]:
        """Manifest, compatibility, streamed and verified download, load and a warm-up."""
        self.status["attempts"] += 1
        manifest = await self.client.manifest(name, version)
        serving = self.slot.model
        found = f"{name} {manifest['version']}"
        problems = compatibility_problems(
            manifest, expected_features=self.cfg.expected_features,
            serving=serving.manifest.get("input_schema") if serving is not None else None,
        )
        if problems:
            raise Incompatible(f"refused {found}: " + "; ".join(problems))
        got = await self.client.download(manifest, self.root)
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(OnnxModel, got.folder)
            warm = np.zeros((1, model.n_features), dtype=np.float32)
            await asyncio.to_thread(model.predict, warm)  # the first call pays for set-up
            if self.on_load is not None:
                self.on_load(self.state, model)
        except (ModelError, OSError, RuntimeError, ValueError) as exc:
            shutil.rmtree(got.folder, ignore_errors=True)
            raise Unloadable(f"refused {found}: it cannot be loaded: {exc}") from None
        info = {"model": model.name, "version": model.version, "sha256": model.manifest["sha256"],
                "bytes": got.size, "download_ms": round(got.seconds * 1000, 1),
                "load_ms": round((time.perf_counter() - started) * 1000, 1)}
        return model, info

    def install(self, model: OnnxModel, info: dict[str, Any]) -> str | None:
        """Serve `model` from the next request on; requests in flight finish on the old one."""
        old = self.slot.model
        previous = old.version if old is not None else None
        self.slot.model = model  # one assignment: each request sees one model or the other
        self.state.model_version = model.version
        self.state.metadata.update(model=model.manifest, model_path=str(model.path),
                                   n_features=model.n_features)
        self.state.ready = True
        self.state.unready_reason = None
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.status.update(state="loaded", error=None,
                           serving={"model": model.name, "version": model.version},
                           last_load={**info, "at": now})
        if previous is not None:
            swaps = self.status["swaps"]
            swaps.append({"from": previous, "to": model.version, "at": now})
            del swaps[:-SWAPS_KEPT]
        self.loads.labels("loaded").inc()
        self.downloaded.inc(info["bytes"])
        if old is not None and old.path.parent != model.path.parent:
            shutil.rmtree(old.path.parent, ignore_errors=True)  # it is in memory; its file
        return previous                                        # is not needed any more

    def failed(self, exc: LoadFailed, what: str) -> None:
        self.loads.labels(exc.outcome).inc()
        self.status["error"] = {"error": exc.error, "message": str(exc), "model": what}

    async def startup(self) -> None:
        """The start-up load (a background task): retried while the repository is away or
        the version is not published, given up on a refusal; an admin load may win."""
        name, version = self.cfg.model_name, self.cfg.model_version
        what = f"{name} {version}"
        delay = RETRY_FIRST_S
        while True:
            async with self.lock:
                if self.slot.model is not None:
                    return
                self.status.update(state="loading", loading=what)
                self._unready(f"loading {what} from the model repository {self.cfg.model_repo_url}")
                try:
                    model, info = await self.fetch(name, version)
                except LoadFailed as exc:
                    self.failed(exc, what)
                    if not exc.retry:
                        self.status.update(state="refused", loading=None)
                        self._unready(str(exc))
                        log.error("cannot serve %s, staying unready: %s", what, exc)
                        return
                    self.status.update(state="waiting", loading=None)
                    self._unready(f"{exc}; retrying in {delay:g} s")
                    log.warning("cannot load %s yet, retrying in %g s: %s", what, delay, exc)
                else:
                    self.status["loading"] = None
                    self.install(model, info)
                    log.info("loaded %s %s (sha256 %s, %d bytes) in %.0f ms + %.0f ms",
                             model.name, model.version, info["sha256"][:12], info["bytes"],
                             info["download_ms"], info["load_ms"])
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def swap(self, name: str, version: str) -> dict[str, Any]:
        """Load `name` `version` while the current model keeps serving, then switch."""
        if self.lock.locked():
            raise ApiError(409, f"a load of {self.status['loading']} is in progress; ask again "
                           "when it is done", "load_in_progress")
        what = f"{name} {version}"
        async with self.lock:
            self.status["loading"] = what
            try:
                model, info = await self.fetch(name, version)
            except LoadFailed as exc:
                self.failed(exc, what)
                current = self.slot.model
                keeps = (f"still serving {current.name} {current.version}" if current
                         else "nothing is served")
                self._unready(str(exc))
                log.error("refused to swap to %s, %s: %s", what, keeps, exc)
                raise ApiError(exc.status, f"{exc}; {keeps}", exc.error) from None
            finally:
                self.status["loading"] = None
            previous = self.install(model, info)
        log.info("swapped %s -> %s %s (%.0f ms download, %.0f ms load)", previous or "nothing",
                 model.name, model.version, info["download_ms"], info["load_ms"])
        return {"status": "loaded", "previous": previous, **info}

    async def rollback(self) -> dict[str, Any]:
        """One call back to the previous version: the followed alias moved back in the
        repository (so a restart loads that version too), then a swap to it; without an alias,
        a swap to the version served before the last swap. A 409 `no_previous_version` when
        there is none; the served model stays until the previous one is in memory."""
        if self.lock.locked():
            raise ApiError(409, f"a load of {self.status['loading']} is in progress; ask again "
                           "when it is done", "load_in_progress")
        served = self.slot.model
        name = served.name if served is not None else self.cfg.model_name
        alias: str | None = self.status["alias"]
        if alias is not None:
            try:
                moved = await self.client.alias_back(name, alias)
            except LoadFailed as exc:
                self.failed(exc, f"{name}@{alias}")
                raise ApiError(exc.status, f"cannot roll {name}@{alias} back: {exc}",
                               exc.error) from None
            target = str(moved["version"])
            log.warning("rolling back: %s@%s moved %s -> %s", name, alias, moved["previous"],
                        target)
        elif self.status["swaps"]:
            target = str(self.status["swaps"][-1]["from"])
        else:
            raise ApiError(409, f"{name} has not been swapped since this server started and "
                           "follows no alias: there is no previous version to go back to",
                           "no_previous_version")
        return {**await self.swap(name, target), "status": "rolled_back", "alias": alias}

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)


def loader_of(request: Request) -> ModelLoader:
    found: ModelLoader = request.state.loader
    return found


def add_admin_routes(app: FastAPI) -> None:
    """`POST /admin/load` (swap to a version) and `GET /admin/load` (the loader's status)."""

    async def load_model(body: LoadRequest, request: Request) -> Response:
        """Download, verify and load another version, then serve it; the old one answers
        until then. Refused versions leave the served model as it was."""
        found = loader_of(request)
        served = found.slot.model
        name = body.name or (served.name if served is not None else found.cfg.model_name)
        return json_response(await found.swap(name, body.version))

    async def roll_back(request: Request) -> Response:
        """Back to the previous version in one call: the followed alias (MODEL_VERSION, e.g.
        `champion`) moved back in the repository, then a swap with zero failed requests."""
        return json_response(await loader_of(request).rollback())

    async def load_status(request: Request) -> Response:
        return json_response(loader_of(request).status)

    errors: dict[int | str, dict[str, Any]] = {code: {"description": text} for code, text in (
        (404, "the repository has no such model or version"),
        (409, "incompatible with this server, or another load is in progress"),
        (422, "a bad body, or a model that cannot be loaded"),
        (502, "the downloaded bytes do not match the manifest's sha256"),
        (503, "the model repository is unreachable"),
    )}
    app.post("/admin/load", tags=["admin"], responses={
        200: {"description": "loaded and now served",
              "content": {"application/json": {"example": LOAD_EXAMPLE}}}, **errors,
    })(load_model)
    app.post("/admin/rollback", tags=["admin"], responses={
        200: {"description": "the previous version is served",
              "content": {"application/json": {"example": {
                  **LOAD_EXAMPLE, "status": "rolled_back", "alias": "champion",
                  "version": "1.0.0", "previous": "1.1.0"}}}},
        409: {"description": "no previous version, or another load is in progress"},
        503: errors[503]})(roll_back)
    app.get("/admin/load", tags=["admin"])(load_status)


class LoaderResources(Resources):
    loader: ModelLoader


def create_loading_app(
    cfg: PredictorSettings,
    faults: Faults,
    on_load: Callable[[ServiceState, OnnxModel], object] | None = None,
) -> FastAPI:
    """The predictor in its model-load mode: the model named by MODEL_NAME and MODEL_VERSION
    is downloaded from MODEL_REPO_URL in the background; `/admin/load` swaps it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[LoaderResources]:
        slot = ModelSlot()
        loader = ModelLoader(cfg, state, slot, on_load)
        try:
            async with background(loader.startup()), prediction_log(cfg, state) as plog, \
                    registration(cfg, state):
                yield {"model": slot, "loader": loader, "plog": plog}
        finally:
            await loader.aclose()

    app = create_service(
        cfg, title=f"{cfg.service_name} (predictor, model from a repository)",
        lifespan=lifespan, auto_ready=False,
    )
    add_predict_route(app, faults, cfg.max_batch_rows, log=bool(cfg.prediction_log_url))
    add_oip_routes(app, faults, cfg.max_batch_rows)
    add_admin_routes(app)
    return app
