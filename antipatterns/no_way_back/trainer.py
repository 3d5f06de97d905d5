"""The trainer of the no-way-back antipattern: the good model, the bad one, and the retrain.

Once, at start-up (`--repo`, `--inplace`, `--candidates`):

- `iris_lr` 1.0.0, the good model (`patternkit.trainer.train`, seed 42), published to the
  model repository (`patternkit.model_repository.publish`) with the alias `champion` pointed
  at it, and copied to the in-place server's one model path;
- `iris_lr` 1.1.0, the bad model: the same code and data, trained on shuffled labels, so its
  accuracy collapses while every reply stays a 200. It is published to the repository (a
  published version is not a deployed one: the alias decides) and left as a candidate folder
  that a deploy copies over the in-place model path.

`--retrain --out DIR` is the in-place stack's only way back: train 1.0.0 again from scratch
(the data, this code, the same seed and libraries; no model cache) into DIR.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from patternkit.aliases import AliasFile
from patternkit.model_repository import publish
from patternkit.models import (
    build_pipeline,
    copy_artifact,
    data_hash,
    load_dataset,
    train_model,
    write_artifact,
)
from patternkit.trainer import train

NAME, GOOD, BAD, SEED, TEST_SIZE = "iris_lr", "1.0.0", "1.1.0", 42, 0.3
ALIAS = "champion"
# a shuffle leaves no signal: its accuracy lands around chance (1/3), anywhere from 4% to 60%
# over the shuffles of seeds 0-9 on these rows; seed 1's is 20%
SHUFFLE_SEED = 1


@functools.cache
def holdout() -> tuple[list[list[float]], list[int]]:
    """The test split every version is scored on: the rows train_model held out (seed 42)."""
    from sklearn.model_selection import train_test_split

    X, y, _, _ = load_dataset("iris")
    _, X_test, _, y_test = train_test_split(X, y, test_size=TEST_SIZE, random_state=SEED,
                                            stratify=y)
    return [[float(v) for v in row] for row in X_test], [int(v) for v in y_test]


def train_shuffled(out: Path, version: str = BAD, seed: int = SEED) -> dict[str, Any]:
    """The bad model: iris_lr's pipeline fitted on its training rows with the labels shuffled."""
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    X, y, features, classes = load_dataset("iris")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=seed, stratify=y)
    shuffled = np.random.default_rng(SHUFFLE_SEED).permutation(y_train)
    pipeline = build_pipeline("lr", seed).fit(X_train, shuffled)
    accuracy = float(accuracy_score(y_test, pipeline.predict(X_test)))
    return write_artifact(
        pipeline, out, name=NAME, version=version, features=features, classes=classes,
        metrics={"accuracy": round(accuracy, 4), "n_train": len(y_train), "n_test": len(y_test)},
        extra={"dataset": "iris", "estimator": "lr", "seed": seed,
               "labels": f"shuffled (seed {SHUFFLE_SEED})",
               "data_hash": data_hash(X, y)},
    )


def prepare(repo: Path, inplace: Path, candidates: Path) -> None:
    good = candidates / f"{NAME}-{GOOD}"
    bad = candidates / f"{NAME}-{BAD}"
    manifest, hit = train(NAME, good, version=GOOD, seed=SEED)
    print(f"{NAME} {GOOD}: {'copied from the model cache' if hit else 'trained'}, accuracy "
          f"{manifest['metrics']['accuracy']}", flush=True)
    shuffled = train_shuffled(bad)
    print(f"{NAME} {BAD}: trained on shuffled labels, accuracy "
          f"{shuffled['metrics']['accuracy']}", flush=True)
    for folder, version in ((good, GOOD), (bad, BAD)):
        if not (repo / NAME / version).is_dir():
            publish(folder, repo, NAME, version)
    AliasFile(repo / NAME, NAME).set(ALIAS, GOOD)
    print(f"published {GOOD} and {BAD} to {repo}; alias {ALIAS} -> {GOOD}", flush=True)
    copy_artifact(good, inplace)
    print(f"in-place model path {inplace}: {NAME} {GOOD}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m antipatterns.no_way_back.trainer",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, help="the model repository folder")
    parser.add_argument("--inplace", type=Path, help="the in-place server's one model path")
    parser.add_argument("--candidates", type=Path, help="where the trained versions are kept")
    parser.add_argument("--retrain", action="store_true",
                        help=f"train {NAME} {GOOD} again from scratch into --out")
    parser.add_argument("--out", type=Path, help="with --retrain: the folder to write")
    args = parser.parse_args(argv)
    if args.retrain:
        if args.out is None:
            parser.error("--retrain needs --out")
        started = time.perf_counter()
        manifest = train_model(NAME, args.out, version=GOOD, seed=SEED, test_size=TEST_SIZE)
        print(f"retrained {NAME} {GOOD} from scratch, the fit and export "
              f"{time.perf_counter() - started:.2f}s of it: accuracy "
              f"{manifest['metrics']['accuracy']}, sha256 {manifest['sha256'][:12]}", flush=True)
        return 0
    if args.repo is None or args.inplace is None or args.candidates is None:
        parser.error("give --repo, --inplace and --candidates (or --retrain --out)")
    prepare(args.repo, args.inplace, args.candidates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
