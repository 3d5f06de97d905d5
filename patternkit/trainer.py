"""The shared trainer: a one-shot process that trains a model variant and writes its artifact.

Topologies run it first (`oneshot = true`) so that predictors find `model.onnx` and its
manifest in the run directory:
`python -m patternkit.trainer --model iris_lr --out {run_dir}/models/iris_lr --version 1.0.0`.

Artifacts go through a content-addressed cache (`patternkit.models.train_cached`): the same
variant, version and seed with the same code and library versions is trained once and copied
into every later run directory. The cache is `.runs/model-cache/` in the repository, or the
folder `PATTERNKIT_MODEL_CACHE` names; `--no-cache` (or `PATTERNKIT_MODEL_CACHE=off`) always
trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from patternkit.models import VARIANTS, train_cached, train_model

CACHE_ENV = "PATTERNKIT_MODEL_CACHE"
CACHE_OFF = frozenset({"off", "0", "no", "false"})


def default_cache_dir() -> Path | None:
    """`$PATTERNKIT_MODEL_CACHE`, or `.runs/model-cache` of the repository; None when off."""
    override = os.environ.get(CACHE_ENV)
    if override is not None and override.strip():
        return None if override.strip().lower() in CACHE_OFF else Path(override)
    here = Path(__file__).resolve().parent
    root = next((p for p in here.parents if (p / "pyproject.toml").is_file()), Path.cwd())
    return root / ".runs" / "model-cache"


def train(
    name: str, out: str | Path, *, version: str = "1.0.0", seed: int = 42,
    cache: Path | None = None, use_cache: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Train `name` into `out` through the model cache (`cache`, else the default one):
    (manifest, whether it was copied from the cache). `use_cache=False` always trains."""
    folder = (cache or default_cache_dir()) if use_cache else None
    if folder is None:
        return train_model(name, out, version=version, seed=seed), False
    return train_cached(name, out, folder, version=version, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patternkit.trainer", description=__doc__)
    parser.add_argument("--model", default="iris_lr", choices=sorted(VARIANTS))
    parser.add_argument("--out", required=True, help="directory for model.onnx + manifest.json")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"model cache folder (default: ${CACHE_ENV} or .runs/model-cache)")
    parser.add_argument("--no-cache", action="store_true", help="train even if cached")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"training {args.model} v{args.version} -> {args.out}", flush=True)
    manifest, hit = train(args.model, args.out, version=args.version, seed=args.seed,
                          cache=args.cache, use_cache=not args.no_cache)
    took = time.perf_counter() - started
    how = f"copied from the model cache {args.cache or default_cache_dir()}" if hit else "done"
    print(
        f"{how} in {took:.1f}s: {json.dumps(manifest['metrics'])} "
        f"sha256={manifest['sha256'][:12]}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
