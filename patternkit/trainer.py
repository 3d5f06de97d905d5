"""The shared trainer: a one-shot process that trains a model variant and writes its artifact.

Topologies run it first (`oneshot = true`) so that predictors find `model.onnx` and its
manifest in the run directory:
`python -m patternkit.trainer --model iris_lr --out {run_dir}/models/iris_lr --version 1.0.0`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from patternkit.models import VARIANTS, train_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patternkit.trainer", description=__doc__)
    parser.add_argument("--model", default="iris_lr", choices=sorted(VARIANTS))
    parser.add_argument("--out", required=True, help="directory for model.onnx + manifest.json")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"training {args.model} v{args.version} -> {args.out}", flush=True)
    manifest = train_model(args.model, args.out, version=args.version, seed=args.seed)
    took = time.perf_counter() - started
    print(
        f"done in {took:.1f}s: {json.dumps(manifest['metrics'])} sha256={manifest['sha256'][:12]}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
