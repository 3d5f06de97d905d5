"""Immutable server bundles: a trained model packed with the server that runs it (O1's image).

`build_bundle` packs a verified model artifact, the server code (the `patternkit` package),
the pinned requirements of what the server imports and a `bundle.json` (the bundle's version
is the model's; every file with its sha256) into `<registry>/<image>-<version>.zip`, the same
bytes for the same inputs: fixed timestamps and permissions, entries in sorted order. A built
version is immutable: building it again from other inputs is refused. `unpack_bundle` checks
every file against `bundle.json` while it extracts into a fresh folder, and `server_command`
starts the unpacked server from its own code; that is all a deploy (or a rollback) is.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

# patternkit.models (numpy) is imported where a model is read, so that a deploy, which only
# unpacks and starts the bundle's own server, stays a light process
MODEL_FILE, MANIFEST_FILE = "model.onnx", "manifest.json"  # as patternkit.models names them
BUNDLE_FILE = "bundle.json"
REQUIREMENTS_FILE = "requirements.txt"
SERVER_DIR = "server"
MODEL_DIR = "model"
ENTRYPOINT = "patternkit.predictor:create_app"
PACKAGE = "patternkit"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold: no build time
FORMAT = 1
IMAGE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^\d{1,6}\.\d{1,6}\.\d{1,6}$")
# what the server imports to run (uvicorn picks its loop and HTTP parser when it starts; the
# docs pages are files of fastapi_offline)
SERVER_IMPORTS = ("patternkit.serve", "patternkit.predictor", "onnxruntime", "fastapi_offline",
                  "uvicorn.loops.auto", "uvicorn.protocols.http.auto", "uvicorn.lifespan.on")

# run in a fresh interpreter: the distributions the server's imports come from, with their
# own requirements (markers evaluated for this platform), pinned to the installed versions
_REQUIREMENTS_SCRIPT = r"""
import importlib, importlib.metadata as md, json, sys
from packaging.requirements import Requirement
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
owners = md.packages_distributions()
own = set(owners.get(sys.argv[1], []))
todo = sorted({d for m in list(sys.modules) for d in owners.get(m.partition(".")[0], [])} - own)
pins = {}
while todo:
    dist = md.distribution(todo.pop())
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name in pins:
        continue
    pins[name] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            try:
                todo.append(md.distribution(req.name).metadata["Name"])
            except md.PackageNotFoundError:
                pass
print(json.dumps(pins))
"""


class BundleError(RuntimeError):
    """A bundle that cannot be built, found, or trusted (a file that does not match)."""


@dataclass(frozen=True)
class Built:
    """A bundle in the registry: where, its sha256 and size, and whether this call wrote it
    (False: an identical bundle of that version was already there)."""

    path: Path
    sha256: str
    size: int
    version: str
    created: bool


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_path(registry: str | Path, image: str, version: str) -> Path:
    if IMAGE_RE.match(image) is None or VERSION_RE.match(version) is None:
        raise BundleError(f"a bundle is named <image>-<X.Y.Z>: got {image!r} {version!r}")
    return Path(registry) / f"{image}-{version}.zip"


def versions(registry: str | Path, image: str) -> list[str]:
    """The versions of `image` in the registry, newest first."""
    prefix = f"{image}-"
    found = [p.name[len(prefix):-4] for p in Path(registry).glob(f"{image}-*.zip")]
    return sorted((v for v in found if VERSION_RE.match(v)),
                  key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True)


def find_bundle(registry: str | Path, image: str, version: str) -> Path:
    """The bundle file of `version` (`latest`: the newest), or a BundleError listing what is."""
    known = versions(registry, image)
    if version == "latest":
        if not known:
            raise BundleError(f"no bundle of {image} in the registry {registry}")
        version = known[0]
    path = bundle_path(registry, image, version)
    if not path.is_file():
        raise BundleError(f"no bundle {path.name} in the registry {registry} "
                          f"(there: {', '.join(known) or 'none'})")
    return path


def server_files(package: str = PACKAGE) -> dict[str, bytes]:
    """The server's code: every module of the package, by its path in the bundle."""
    import importlib

    root = Path(importlib.import_module(package).__file__ or "").resolve().parent
    files = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = PurePosixPath(SERVER_DIR, package, *path.relative_to(root).parts)
        files[str(rel)] = path.read_bytes()
    return files


def pinned_requirements(imports: tuple[str, ...] = SERVER_IMPORTS) -> str:
    """requirements.txt: every distribution the server imports, with its dependencies, pinned
    to the versions installed here (what the bundle was built and tested with)."""
    result = subprocess.run(
        [sys.executable, "-c", _REQUIREMENTS_SCRIPT, PACKAGE, *imports],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        raise BundleError(f"cannot list the server's requirements: {result.stderr[-500:]}")
    pins: dict[str, str] = json.loads(result.stdout)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    return "# the server's imports and their dependencies, as built and tested\n" + (
        "\n".join(lines) + "\n")


def bundle_contents(model_dir: str | Path, image: str,
                    requirements: str | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(bundle.json, files by path) for a bundle of the model in `model_dir`."""
    from patternkit.models import read_verified_manifest

    model_path, manifest = read_verified_manifest(model_dir)
    version = str(manifest["version"])
    files = {
        f"{MODEL_DIR}/{MODEL_FILE}": model_path.read_bytes(),
        f"{MODEL_DIR}/{MANIFEST_FILE}": model_path.with_name(MANIFEST_FILE).read_bytes(),
        REQUIREMENTS_FILE: (requirements if requirements is not None
                            else pinned_requirements()).encode(),
        **server_files(),
    }
    info = {
        "format": FORMAT,
        "bundle": image,
        "version": version,  # the bundle's version is its model's
        "model": {"name": manifest["name"], "version": version, "sha256": manifest["sha256"],
                  "created": manifest.get("created")},
        "entrypoint": ENTRYPOINT,
        "python": ".".join(str(v) for v in sys.version_info[:2]),
        "files": {path: sha256_bytes(data) for path, data in sorted(files.items())},
    }
    return info, files


def zip_bytes(info: dict[str, Any], files: dict[str, bytes]) -> bytes:
    """The bundle as a zip, reproducibly: bundle.json first, then the files in sorted order,
    every entry with the same timestamp, permissions and compression."""
    out = io.BytesIO()
    entries = [(BUNDLE_FILE, json.dumps(info, indent=2, sort_keys=True).encode() + b"\n"),
               *sorted(files.items())]
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries:
            entry = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.create_system = 3  # unix, wherever it is built
            entry.external_attr = 0o100644 << 16
            archive.writestr(entry, data, compresslevel=9)
    return out.getvalue()


def build_bundle(
    model_dir: str | Path, registry: str | Path, image: str = "iris",
    requirements: str | None = None,
) -> Built:
    """Build `<registry>/<image>-<model version>.zip` from the model in `model_dir`.

    The same inputs give the same bytes; an identical bundle already there is left as it is
    (`created=False`), a different one of the same version is refused: a version never
    changes. The file is written beside its place and linked in, so it appears whole.
    """
    from patternkit.models import ModelError

    try:
        info, files = bundle_contents(model_dir, image, requirements)
    except ModelError as exc:
        raise BundleError(f"cannot bundle {model_dir}: {exc}") from None
    data = zip_bytes(info, files)
    digest = sha256_bytes(data)
    target = bundle_path(registry, image, info["version"])
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return _existing(target, digest, info["version"])
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o444)  # read-only: a bundle is not edited in place
        try:
            os.link(tmp, target)  # fails if another build got there first
        except FileExistsError:
            return _existing(target, digest, info["version"])
    finally:
        os.unlink(tmp)
    return Built(target, digest, len(data), info["version"], created=True)


def _existing(target: Path, digest: str, version: str) -> Built:
    found = sha256_file(target)
    if found != digest:
        raise BundleError(
            f"{target.name} already exists with other content (sha256 {found[:12]}, this build "
            f"{digest[:12]}): a bundle version is immutable; train the model as a new version")
    return Built(target, found, target.stat().st_size, version, created=False)


def read_bundle_info(archive: zipfile.ZipFile, source: str | Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads(archive.read(BUNDLE_FILE))
        files = info["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a map")
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"{source} has no readable {BUNDLE_FILE}: {exc}") from None
    return info


def unpack_bundle(bundle: str | Path, into: str | Path) -> dict[str, Any]:
    """Extract the bundle into the new folder `into`, checking every file against its
    bundle.json first (no file missing, none extra, no path leaving the folder, every sha256
    as listed); returns bundle.json. Nothing is left at `into` when a check fails."""
    target = Path(into)
    if target.exists():
        raise BundleError(f"{target} exists: a deploy unpacks into a fresh folder")
    try:
        archive = zipfile.ZipFile(bundle)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"cannot open the bundle {bundle}: {exc}") from None
    with archive:
        info = read_bundle_info(archive, bundle)
        listed: dict[str, str] = info["files"]
        names = set(archive.namelist()) - {BUNDLE_FILE}
        if names != set(listed):
            extra, missing = sorted(names - set(listed)), sorted(set(listed) - names)
            raise BundleError(f"{bundle} does not match its {BUNDLE_FILE}: extra {extra}, "
                              f"missing {missing}")
        for name in sorted(listed):
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts:
                raise BundleError(f"{bundle} holds a path outside its folder: {name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for name in sorted(listed):
                data = archive.read(name)
                if sha256_bytes(data) != listed[name]:
                    raise BundleError(f"{bundle}: {name} does not match its sha256 in "
                                      f"{BUNDLE_FILE}; the bundle was altered")
                dest = staging.joinpath(*PurePosixPath(name).parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            (staging / BUNDLE_FILE).write_bytes(archive.read(BUNDLE_FILE))
            staging.chmod(0o755)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return info


def server_command(
    app_dir: str | Path, host: str, port: int, bundle_sha256: str = "",
    python: str = sys.executable,
) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, working directory) that start the unpacked bundle's server from
    its own code: `python -m patternkit.serve` in its server folder, which comes first on
    the import path, serving the bundle's model."""
    app = Path(app_dir).resolve()
    info = json.loads((app / BUNDLE_FILE).read_text())
    server = app / SERVER_DIR
    argv = [python, "-m", "patternkit.serve", str(info["entrypoint"]),
            "--host", host, "--port", str(port)]
    env = {
        "PYTHONPATH": str(server),
        "MODEL_PATH": str(app / MODEL_DIR),
        "BUNDLE_MANIFEST": str(app / BUNDLE_FILE),
        "BUNDLE_SHA256": bundle_sha256,
        "MODEL_REPO_URL": "",  # the model is in the bundle: nothing is downloaded
    }
    return argv, env, server


def check_bundle(manifest: dict[str, Any], bundle_manifest: str | Path,
                 bundle_sha256: str = "") -> dict[str, Any]:
    """What `/metadata` shows of the bundle a server runs from, once its model is checked
    to be the bundle's (same version and sha256); a ModelError otherwise."""
    from patternkit.models import ModelError

    try:
        info: dict[str, Any] = json.loads(Path(bundle_manifest).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable bundle manifest {bundle_manifest}: {exc}") from None
    model = info.get("model", {})
    if (model.get("sha256"), model.get("version"), info.get("version")) != (
            manifest.get("sha256"), manifest.get("version"), manifest.get("version")):
        raise ModelError(
            f"the model {manifest.get('name')} {manifest.get('version')} is not the one of "
            f"bundle {info.get('bundle')} {info.get('version')} ({bundle_manifest})")
    return {
        "name": info.get("bundle"),
        "version": info.get("version"),
        "sha256": bundle_sha256 or None,
        "model_sha256": model.get("sha256"),
        "python": info.get("python"),
        "files": len(info.get("files", {})),
        "server_code": str(Path(__file__).resolve().parent),
    }
