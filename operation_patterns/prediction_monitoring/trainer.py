"""The trainer of O5: trains the model and saves the training distribution beside it, once.

`synthetic_lr` (8 continuous features, 3 classes, 1,400 training rows) through the shared
model cache, then `reference.json` in the same folder: the training rows of the same split
(`train_model`'s: 30% held out, stratified, the same seed) and their class shares, which the
monitor's drift rules compare each window against. Iris has 105 training rows: too few for a
10-bin PSI, whose expected value from sampling alone is about (bins - 1) / n_train = 0.09
there, the warning threshold itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sklearn.model_selection import train_test_split

from patternkit.models import VARIANTS, variant_data
from patternkit.monitor import save_reference
from patternkit.trainer import train

TEST_SIZE = 0.3  # patternkit.models.train_model's split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operation_patterns.prediction_monitoring"
                                          ".trainer", description=__doc__)
    parser.add_argument("--model", default="synthetic_lr", choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, required=True, help="the model folder")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    manifest, hit = train(args.model, args.out, seed=args.seed)
    X, y, features, classes = variant_data(VARIANTS[args.model])
    X_train, _, y_train, _ = train_test_split(X, y, test_size=TEST_SIZE, random_state=args.seed,
                                              stratify=y)
    ref = save_reference(args.out, X_train, y_train, features, classes)
    how = "copied from the model cache" if hit else "trained"
    print(f"{args.model} {manifest['version']}: {how}, accuracy "
          f"{manifest['metrics']['accuracy']}; training distribution of {len(X_train)} rows "
          f"x {len(features)} features -> {ref}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
