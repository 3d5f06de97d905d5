"""The trainer of O2: trains the model versions the demo serves and publishes them to the model
repository folder, once.

`iris_lr` 1.0.0 and 1.1.0 (retrained with another seed), `wine_lr` 1.0.0 (another model for the
same server code), and `iris_lr` 2.0.0, which stands for a model exported by a newer toolchain:
the same kind of graph, its manifest declaring `requires` that no onnxruntime here meets, so a
server refuses it before downloading a byte. Each version is trained through the shared model
cache, then renamed into `<repo>/<name>/<version>/` whole (`patternkit.model_repository.publish`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from patternkit.model_repository import publish
from patternkit.models import MANIFEST_FILE
from patternkit.trainer import train

# (model, version, seed, what a newer toolchain would declare instead of this one's `requires`)
NEWER_TOOLCHAIN = {"onnxruntime": ">=9.0", "opset": {"ai.onnx": 99, "ai.onnx.ml": 9}}
VERSIONS: list[tuple[str, str, int, dict[str, object] | None]] = [
    ("iris_lr", "1.0.0", 42, None),
    ("iris_lr", "1.1.0", 7, None),
    ("wine_lr", "1.0.0", 42, None),
    ("iris_lr", "2.0.0", 11, NEWER_TOOLCHAIN),
]


def publish_version(repo: Path, name: str, version: str, seed: int,
                    requires: dict[str, object] | None = None) -> str:
    """Train `name` `version` and publish it (unless it is there already); what happened."""
    if (repo / name / version).is_dir():
        return "already published"
    with tempfile.TemporaryDirectory(prefix=f".train-{name}-{version}-", dir=repo) as tmp:
        out = Path(tmp) / "artifact"
        manifest, hit = train(name, out, version=version, seed=seed)
        if requires is not None:  # the manifest only: the file and its sha256 are untouched
            manifest["requires"] = requires
            (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        publish(out, repo, name, version)
    how = "copied from the model cache" if hit else "trained"
    return f"{how}, sha256 {manifest['sha256'][:12]}, requires {json.dumps(manifest['requires'])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operation_patterns.model_load.trainer",
                                     description=__doc__)
    parser.add_argument("--repo", type=Path, required=True, help="the model repository folder")
    args = parser.parse_args(argv)
    args.repo.mkdir(parents=True, exist_ok=True)
    for name, version, seed, requires in VERSIONS:
        print(f"{name} {version}: {publish_version(args.repo, name, version, seed, requires)}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
