"""The edge client of S13: the code on the device, which predicts with its own copy of the model.

`EdgeClient` downloads the latest model from the distribution service, checks its sha256
against the manifest before loading it, keeps each verified version on disk (one folder per
version) and predicts locally with onnxruntime. `refresh()`, or a background thread every
`refresh_interval_s`, switches to a newer version without a restart; a download that fails its
check is refused while the version in use keeps serving, and with the service unreachable the
client goes on predicting from its cache. It also runs as a CLI:
`python -m serving_patterns.edge_prediction.edge_client --url URL predict 5.1 3.5 1.4 0.2`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from patternkit.models import MANIFEST_FILE, MODEL_FILE, OnnxModel, as_rows

log = logging.getLogger("edge_prediction.edge_client")
log.addHandler(logging.NullHandler())  # a library: the app (or the CLI) decides what is shown

VERSION_RE = re.compile(r"^\d{1,6}\.\d{1,6}\.\d{1,6}$")
CURRENT_FILE = "CURRENT"
DEVICE_FILE = "device_id"
DEFAULT_CACHE = Path.home() / ".cache" / "ml-system-patterns" / "edge_prediction"


class EdgeError(RuntimeError):
    """No usable model: nothing verified in the cache, and no server could predict instead."""


class Refused(Exception):
    """A downloaded version failed its checks; it is not used."""


@dataclass(frozen=True)
class RefreshResult:
    """What one check for a newer version found.

    `status` is `updated` (switched to `latest`), `current` (already on it), `offline` (no
    usable answer from the service; the cached model keeps serving) or `refused` (the new
    version failed its checks; the previous one keeps serving).
    """

    status: str
    version: str | None
    latest: str | None = None
    detail: str = ""
    downloaded_bytes: int = 0


@dataclass(frozen=True)
class EdgePrediction:
    labels: list[int]
    probabilities: list[list[float]]
    classes: list[str]
    version: str | None
    source: str  # "edge" (the local model) or "server" (the fallback predictor)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Usage:
    """Counts the device may report: never the inputs themselves."""

    predictions: int = 0
    fallbacks: int = 0
    class_counts: Counter[str] = field(default_factory=Counter)


class EdgeClient:
    """A device's model: downloaded, verified, cached on disk, swapped in place on update."""

    def __init__(
        self,
        base_url: str,
        cache_dir: str | Path,
        *,
        fallback_url: str | None = None,
        timeout_s: float = 5.0,
        max_model_bytes: int = 50_000_000,
        keep_versions: int = 3,
        refresh_interval_s: float | None = None,
        report_usage: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.fallback_url = fallback_url.rstrip("/") if fallback_url else None
        self.max_model_bytes = max_model_bytes
        self.keep_versions = max(1, keep_versions)
        self.report_usage = report_usage
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self.device_id = self._device_id()
        self.usage = Usage()
        self.refused: dict[str, str] = {}  # version -> why it is not used
        self.last_refresh: RefreshResult | None = None
        self._model: OnnxModel | None = None
        self._latest_etag: str | None = None
        self._lock = threading.Lock()  # one refresh at a time
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_cached()
        if refresh_interval_s:
            self.start_background(refresh_interval_s)

    # -- what the device runs ---------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """The model version in use (None until one is downloaded or found in the cache)."""
        model = self._model
        return model.version if model is not None else None

    @property
    def sha256(self) -> str | None:
        model = self._model
        return str(model.manifest["sha256"]) if model is not None else None

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "cached_versions": self.cached_versions(),
            "cache_dir": str(self.cache_dir),
            "device_id": self.device_id,
            "last_refresh": asdict(self.last_refresh) if self.last_refresh else None,
            "refused": dict(self.refused),
            "predictions": self.usage.predictions,
            "fallbacks": self.usage.fallbacks,
        }

    def predict(self, rows: Any) -> EdgePrediction:
        """Predict locally; with no usable model, ask the fallback predictor if there is one."""
        model = self._model
        if model is None:
            self.refresh()
            model = self._model
        if model is None:
            return self._predict_on_server(as_rows(rows, None))
        X = as_rows(rows, model.n_features)
        out = model.predict(X)
        labels = [int(v) for v in out.labels]
        names = [str(c) for c in model.manifest.get("classes", [])]
        classes = [names[v] if 0 <= v < len(names) else str(v) for v in labels]
        with self._count_lock:
            self.usage.predictions += len(labels)
            self.usage.class_counts.update(classes)
        return EdgePrediction(labels, out.probabilities.tolist(), classes, model.version, "edge")

    def _predict_on_server(self, X: np.ndarray) -> EdgePrediction:
        why = self.last_refresh.detail if self.last_refresh else "no model cached"
        if self.fallback_url is None:
            raise EdgeError(f"no usable model on this device ({why}) and no fallback predictor")
        url = f"{self.fallback_url}/predict"
        try:
            resp = self.http.post(url, json={"data": X.tolist()})
        except httpx.HTTPError as exc:
            raise EdgeError(
                f"no usable model on this device ({why}), and the fallback predictor {url} "
                f"is unreachable: {type(exc).__name__}"
            ) from None
        if resp.status_code != 200:
            raise EdgeError(f"no usable model on this device ({why}), and the fallback "
                            f"predictor {url} answered {resp.status_code}: {resp.text[:200]}")
        body = resp.json()
        labels = [int(v) for v in body["prediction"]]
        names = self._server_classes()
        with self._count_lock:
            self.usage.fallbacks += len(labels)
        return EdgePrediction(labels, body["probabilities"],
                              [names[v] if 0 <= v < len(names) else str(v) for v in labels],
                              str(body.get("version")), "server")

    def _server_classes(self) -> list[str]:
        """The fallback predictor's class names (its `/metadata`), or none if it has none."""
        try:
            resp = self.http.get(f"{self.fallback_url}/metadata")
            model = (resp.json().get("model") or {}) if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return []
        return [str(c) for c in model.get("classes", [])]

    # -- the cache ----------------------------------------------------------------------------

    def cached_versions(self) -> list[str]:
        names = [p.name for p in self.cache_dir.iterdir()
                 if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(names, key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True)

    def _device_id(self) -> str:
        path = self.cache_dir / DEVICE_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            device = f"edge-{uuid.uuid4().hex[:12]}"
            _write_atomic(path, device)
            return device

    def _load_cached(self) -> None:
        """Start from the version used last time (else the newest cached one that verifies)."""
        try:
            current = (self.cache_dir / CURRENT_FILE).read_text().strip()
        except FileNotFoundError:
            current = ""
        order = [current] if current in self.cached_versions() else []
        order += [v for v in self.cached_versions() if v != current]
        for version in order:
            try:
                self._model = OnnxModel(self.cache_dir / version)
            except Exception as exc:  # a damaged cache entry: drop it, download it again
                log.warning("cached version %s is unusable, removing it: %s", version, exc)
                self.refused[version] = f"cached copy failed its check: {exc}"
                shutil.rmtree(self.cache_dir / version, ignore_errors=True)
                continue
            log.info("using cached model %s from %s", version, self.cache_dir)
            return

    def _prune(self) -> None:
        """Keep the version in use and the newest others, up to `keep_versions` in all."""
        others = [v for v in self.cached_versions() if v != self.version]
        keep = {self.version, *others[: self.keep_versions - 1]}
        for version in self.cached_versions():
            if version not in keep:
                shutil.rmtree(self.cache_dir / version, ignore_errors=True)

    # -- updates ------------------------------------------------------------------------------

    def refresh(self) -> RefreshResult:
        """Ask for the latest version; download, verify and switch to it if it is new."""
        with self._lock:
            result = self._refresh()
            self.last_refresh = result
        if result.status != "offline" and self.report_usage:
            self.report()
        return result

    def _refresh(self) -> RefreshResult:
        headers = {"if-none-match": self._latest_etag} if self._latest_etag else {}
        try:
            resp = self.http.get("/models/latest", headers=headers)
        except httpx.HTTPError as exc:
            return RefreshResult("offline", self.version,
                                 detail=f"{self.base_url} unreachable: {type(exc).__name__}")
        if resp.status_code == 304 and self._model is not None:
            return RefreshResult("current", self.version, self.version)
        if resp.status_code != 200:
            return RefreshResult("offline", self.version, detail=(
                f"{self.base_url}/models/latest answered {resp.status_code}: {resp.text[:200]}"))
        latest = _json_object(resp)
        if latest is None:
            return RefreshResult("offline", self.version,
                                 detail=f"{self.base_url}/models/latest sent no JSON object")
        version = str(latest.get("version", ""))
        if version == self.version and latest.get("sha256") == self.sha256:
            self._latest_etag = resp.headers.get("etag")
            return RefreshResult("current", self.version, version)
        try:
            model, size = self._fetch(latest)
        except Refused as exc:
            self.refused[version] = str(exc)
            log.warning("refused version %s, staying on %s: %s", version, self.version, exc)
            return RefreshResult("refused", self.version, version, str(exc))
        except httpx.HTTPError as exc:
            return RefreshResult("offline", self.version, version,
                                 f"download of {version} failed: {type(exc).__name__}")
        previous = self.version
        self._model = model  # predictions in flight finish on the old one
        _write_atomic(self.cache_dir / CURRENT_FILE, version)
        self._latest_etag = resp.headers.get("etag")
        self.refused.pop(version, None)
        self._prune()
        log.info("switched model %s -> %s", previous, version)
        return RefreshResult("updated", version, version,
                             f"from {previous}" if previous else "first download", size)

    def _fetch(self, latest: dict[str, Any]) -> tuple[OnnxModel, int]:
        """The verified model of `latest`: from the cache if it is there, else downloaded."""
        version = str(latest.get("version", ""))
        if not VERSION_RE.match(version):
            raise Refused(f"the service offers a malformed version {version!r}")
        resp = self.http.get(f"/models/{version}")
        if resp.status_code != 200:
            raise httpx.HTTPStatusError(f"manifest answered {resp.status_code}",
                                        request=resp.request, response=resp)
        manifest = _json_object(resp)
        if manifest is None:
            raise Refused(f"the manifest of {version} is not a JSON object")
        expected = manifest.get("sha256")
        if manifest.get("version") != version or not expected or expected != latest.get("sha256"):
            raise Refused(f"manifest of {version} does not match what /models/latest announced")
        target = self.cache_dir / version
        if target.is_dir():  # downloaded before (e.g. a rollback to an older version)
            try:
                cached = OnnxModel(target)
                if cached.manifest.get("sha256") == expected:
                    return cached, 0
                log.warning("cached %s is not the published one; downloading again", version)
            except Exception as exc:  # damaged: download it again
                log.warning("cached %s failed its check (%s); downloading again", version, exc)
            shutil.rmtree(target, ignore_errors=True)
        size = int(latest.get("size") or 0)
        if size > self.max_model_bytes:
            raise Refused(f"model of {size} bytes exceeds this device's limit of "
                          f"{self.max_model_bytes} bytes")
        partial = self.cache_dir / f".download-{version}-{uuid.uuid4().hex[:8]}"
        url = str(latest.get("url") or f"/models/{version}/{MODEL_FILE}")
        partial.mkdir()
        try:
            got, digest = self._download(url, partial / MODEL_FILE)
            if digest != expected:
                raise Refused(f"sha256 mismatch: the manifest says {expected}, "
                              f"the downloaded file ({got} bytes) is {digest}")
            (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            partial.rename(target)  # a version folder is complete or absent
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        try:
            return OnnxModel(target), got  # checks the file against the manifest once more
        except Exception as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise Refused(f"verified, but onnxruntime cannot load it: {exc}") from None

    def _download(self, url: str, dest: Path) -> tuple[int, str]:
        """Stream `url` into `dest`, hashing as it goes; stop past the size limit."""
        digest = hashlib.sha256()
        got = 0
        with self.http.stream("GET", url) as resp, dest.open("wb") as out:
            if resp.status_code != 200:
                raise httpx.HTTPStatusError(f"download answered {resp.status_code}",
                                            request=resp.request, response=resp)
            for chunk in resp.iter_bytes(1 << 16):
                got += len(chunk)
                if got > self.max_model_bytes:
                    raise Refused(f"download exceeds this device's limit of "
                                  f"{self.max_model_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        return got, digest.hexdigest()

    def report(self) -> bool:
        """Send counts (never inputs) to the service; False if it could not be sent."""
        if self.version is None:
            return False
        with self._count_lock:
            body = {"device_id": self.device_id, "version": self.version,
                    "predictions": self.usage.predictions, "fallbacks": self.usage.fallbacks,
                    "class_counts": dict(self.usage.class_counts)}
        try:
            return self.http.post("/telemetry", json=body).status_code == 202
        except httpx.HTTPError:
            return False

    # -- background checks --------------------------------------------------------------------

    def start_background(self, interval_s: float) -> None:
        """Check for a newer version every `interval_s` seconds until `close()`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="edge-refresh", daemon=True
        )
        self._thread.start()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
            except Exception:  # keep checking whatever happened this time
                log.exception("background refresh failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.http.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_object(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving_patterns.edge_prediction.edge_client",
        description="Predict on this machine with the model of a distribution service.",
    )
    parser.add_argument("--url", default=os.environ.get("EDGE_DISTRIBUTION_URL",
                                                        "http://127.0.0.1:8000"),
                        help="the distribution service (EDGE_DISTRIBUTION_URL)")
    parser.add_argument("--cache-dir", default=os.environ.get("EDGE_CACHE_DIR", DEFAULT_CACHE),
                        help="where verified versions are kept (EDGE_CACHE_DIR)")
    parser.add_argument("--fallback-url", default=os.environ.get("EDGE_FALLBACK_URL"),
                        help="a server predictor for when no model is usable")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="check for an update, then predict one row")
    predict.add_argument("features", nargs="+", type=float)
    sub.add_parser("refresh", help="check for an update and print the outcome")
    sub.add_parser("status", help="what is cached and in use (no network)")
    watch = sub.add_parser("watch", help="check for updates every --interval seconds")
    watch.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    with EdgeClient(args.url, args.cache_dir, fallback_url=args.fallback_url) as client:
        try:
            if args.command == "status":
                out: dict[str, Any] = client.status()
            elif args.command == "refresh":
                out = asdict(client.refresh())
            elif args.command == "watch":
                while True:
                    result = client.refresh()
                    if result.status != "current":
                        print(json.dumps(asdict(result)), flush=True)
                    time.sleep(args.interval)
            else:
                result = client.refresh()
                prediction = client.predict([args.features])
                out = {**prediction.to_json(), "refresh": result.status}
        except (EdgeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
