"""The one-shot trainer of Q2: model A (iris_lr, the live model) and model B (iris_rf, the
challenger), each into `<out>/<variant>` with its manifest, through the model cache of
`patternkit.trainer` (a boot after the first copies them):
`python -m qa_patterns.online_ab_test.trainer --out {run_dir}/models`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from patternkit.trainer import train

VARIANT_MODELS = {"a": "iris_lr", "b": "iris_rf"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qa_patterns.online_ab_test.trainer",
                                     description=__doc__)
    parser.add_argument("--out", required=True, help="directory that gets a/ and b/")
    args = parser.parse_args(argv)
    for variant, model in VARIANT_MODELS.items():
        started = time.perf_counter()
        manifest, hit = train(model, Path(args.out) / variant)
        how = "copied from the model cache" if hit else "trained"
        print(f"{variant}: {model} {how} in {time.perf_counter() - started:.1f}s "
              f"accuracy={manifest['metrics']['accuracy']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
