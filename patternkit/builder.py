"""The builder: the step after training that packs each model with its server into a bundle.

`python -m patternkit.builder build --registry DIR --image iris MODEL_DIR...` writes
`DIR/iris-<model version>.zip` for each trained artifact (`patternkit.bundle`: reproducible,
immutable), `unpack` extracts one into a fresh folder after checking every file, and `list`
shows what the registry holds. O1's stack runs `build` once as a one-shot; the Dockerfile's
`model-in-image` target runs `build` and `unpack` while it builds the image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from patternkit.bundle import (
    BundleError,
    build_bundle,
    find_bundle,
    pinned_requirements,
    sha256_file,
    unpack_bundle,
    versions,
)


def cmd_build(args: argparse.Namespace) -> int:
    requirements = pinned_requirements()  # once for every bundle of this build
    for model in args.models:
        started = time.perf_counter()
        built = build_bundle(model, args.registry, args.image, requirements)
        how = "built" if built.created else "unchanged (an identical bundle is there)"
        print(f"{built.path.name}: {how} in {time.perf_counter() - started:.1f}s, "
              f"{built.size} bytes, sha256 {built.sha256}", flush=True)
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    bundle = find_bundle(args.registry, args.image, args.version)
    info = unpack_bundle(bundle, args.into)
    print(f"{bundle.name} (sha256 {sha256_file(bundle)}) -> {args.into}: "
          f"{len(info['files'])} files checked, model {info['model']['name']} "
          f"{info['model']['version']}", flush=True)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for version in versions(args.registry, args.image):
        path = find_bundle(args.registry, args.image, version)
        print(f"{path.name}  {path.stat().st_size} bytes  sha256 {sha256_file(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patternkit.builder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="bundle trained models (model.onnx + manifest.json)")
    build.add_argument("models", nargs="+", type=Path, help="trained model folders")
    unpack = sub.add_parser("unpack", help="check a bundle and extract it into a new folder")
    unpack.add_argument("--version", default="latest", help="X.Y.Z, or latest")
    unpack.add_argument("--into", type=Path, required=True, help="a folder that does not exist")
    listing = sub.add_parser("list", help="the bundles of an image in the registry")
    for command, func in ((build, cmd_build), (unpack, cmd_unpack), (listing, cmd_list)):
        command.add_argument("--registry", type=Path, required=True, help="the bundle folder")
        command.add_argument("--image", default="iris", help="the bundles' name")
        command.set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
