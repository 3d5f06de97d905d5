"""The predictor of O1: deploys a bundle from the registry and runs the server inside it.

`python -m operation_patterns.model_in_image.predictor --port P` takes version BUNDLE_VERSION
of BUNDLE_IMAGE from BUNDLE_REGISTRY (a folder of `<image>-<version>.zip`, the image registry
of this stack), unpacks it into a fresh folder under DEPLOY_DIR, checking every file against
the bundle's manifest, and replaces itself (exec) with the bundle's own server: its code and
its model, nothing downloaded. A rollback is the same with the previous BUNDLE_VERSION.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from patternkit.bundle import BundleError, find_bundle, server_command, sha256_file, unpack_bundle


def deploy(registry: Path, image: str, version: str, deploy_dir: Path) -> tuple[Path, str]:
    """Unpack the bundle into a new folder of `deploy_dir` (earlier deploys there removed):
    (the folder, the bundle's sha256)."""
    bundle = find_bundle(registry, image, version)
    started = time.perf_counter()
    digest = sha256_file(bundle)
    deploy_dir.mkdir(parents=True, exist_ok=True)
    for old in deploy_dir.glob(f"{image}-*"):  # this instance's previous deploys
        shutil.rmtree(old, ignore_errors=True)
    target = deploy_dir / f"{bundle.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    info = unpack_bundle(bundle, target)
    took = (time.perf_counter() - started) * 1000
    print(f"deployed {bundle.name} ({bundle.stat().st_size} bytes, sha256 {digest[:12]}, "
          f"{len(info['files'])} files checked) into {target} in {took:.0f} ms; "
          "starting its server", flush=True)
    return target, digest


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m operation_patterns.model_in_image.predictor",
                                     description=__doc__)
    parser.add_argument("--registry", type=Path, default=env("BUNDLE_REGISTRY", "bundles"))
    parser.add_argument("--image", default=env("BUNDLE_IMAGE", "iris"))
    parser.add_argument("--version", default=env("BUNDLE_VERSION", "latest"))
    parser.add_argument("--deploy-dir", type=Path, default=env("DEPLOY_DIR", "deploy"))
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PORT", "8000")))
    args = parser.parse_args(argv)
    try:
        app_dir, digest = deploy(args.registry, args.image, args.version, args.deploy_dir)
    except BundleError as exc:
        print(f"error: cannot deploy {args.image} {args.version}: {exc}", file=sys.stderr)
        return 1
    command, updates, cwd = server_command(app_dir, args.host, args.port, digest)
    os.chdir(cwd)
    os.execve(command[0], command, {**os.environ, **updates})  # the bundle's server from here


if __name__ == "__main__":
    sys.exit(main())
