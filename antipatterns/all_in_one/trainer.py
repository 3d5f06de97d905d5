"""The one-shot trainer of SA2: every model artifact both sides of the comparison serve.

It trains model A (iris_lr), model B (iris_rf) in version 1.0.0 and in the 2.0.0 that the
rollout switches to, and model C (wine_lr), each into `<out>/<key>` with its manifest. One
process trains all four (each through the model cache of `patternkit.trainer`, so a boot
after the first copies them), so sklearn is imported once per boot at most:
`python -m antipatterns.all_in_one.trainer --out {run_dir}/models`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from patternkit.trainer import train

# key -> (model variant, version, seed); the key is the directory under --out
ARTIFACTS: dict[str, tuple[str, str, int]] = {
    "a": ("iris_lr", "1.0.0", 42),
    "b": ("iris_rf", "1.0.0", 42),
    "b-v2": ("iris_rf", "2.0.0", 7),
    "c": ("wine_lr", "1.0.0", 42),
}


def model_dir(run_dir: str | Path, key: str) -> Path:
    """Where the trainer of a stack with this run directory wrote the artifact `key`."""
    if key not in ARTIFACTS:
        raise KeyError(f"no artifact {key!r}; known: {', '.join(ARTIFACTS)}")
    return Path(run_dir) / "models" / key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m antipatterns.all_in_one.trainer", description=__doc__
    )
    parser.add_argument("--out", required=True, help="directory that receives one folder per model")
    args = parser.parse_args(argv)
    for key, (variant, version, seed) in ARTIFACTS.items():
        started = time.perf_counter()
        manifest, hit = train(variant, Path(args.out) / key, version=version, seed=seed)
        print(
            f"{key}: {variant} v{version} {'copied from the model cache' if hit else 'trained'}"
            f" in {time.perf_counter() - started:.1f}s "
            f"accuracy={manifest['metrics']['accuracy']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
