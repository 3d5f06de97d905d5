"""The trainer of S5: fits one StandardScaler + LogisticRegression, then splits it in two.

It runs once, before the stages start. The scaler goes to `{out}/prep` (an ONNX transform)
and the classifier to `{out}/pred` (ONNX, zipmap off). Both manifests carry the same new
`train_run_id`, so the proxy can tell when the two stages come from different runs. With
`--database-url` (the topology's `{db.url}`) it also loads the 150 iris rows (ids 0-149) into
`prep_pred_features`, the table the retrieve stage reads.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from patternkit.db import create_tables, make_engine, show_url, upsert
from patternkit.models import build_pipeline, data_hash, load_dataset, write_artifact
from patternkit.transform import write_transform_artifact
from serving_patterns.prep_pred.features import FEATURE_COLUMNS, FEATURES, METADATA

TEST_SIZE = 0.3


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def train(
    out_dir: str | Path, *, version: str = "1.0.0", seed: int = 42, run_id: str | None = None
) -> dict[str, dict[str, Any]]:
    """Fit the pipeline, write `out_dir/prep` and `out_dir/pred`, return both manifests."""
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    X, y, features, classes = load_dataset("iris")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=seed, stratify=y
    )
    pipeline = build_pipeline("lr", seed).fit(X_train, y_train)
    scaler, classifier = pipeline.named_steps["scaler"], pipeline.named_steps["clf"]
    accuracy = float(accuracy_score(y_test, pipeline.predict(X_test)))
    recipe = {
        "train_run_id": run_id or new_run_id(),
        "dataset": "iris", "estimator": "lr", "seed": seed, "test_size": TEST_SIZE,
        "data_hash": data_hash(X, y),
    }
    scaled = [f"scaled {name}" for name in features]
    out = Path(out_dir)
    prep = write_transform_artifact(
        scaler, out / "prep", name="iris_scaler", version=version, features=features,
        outputs=scaled,
        extra={"stage": "prep", **recipe, "mean": scaler.mean_.tolist(),
               "scale": scaler.scale_.tolist()},
    )
    pred = write_artifact(
        classifier, out / "pred", name="iris_lr_on_scaled", version=version, features=scaled,
        classes=classes,
        metrics={"accuracy": round(accuracy, 4), "n_train": len(y_train), "n_test": len(y_test)},
        extra={"stage": "pred", **recipe},
    )
    return {"prep": prep, "pred": pred}


def load_features(url: str) -> int:
    """Upsert the iris rows into the feature table (idempotent); return how many."""
    X, _, _, _ = load_dataset("iris")
    rows = [
        {"id": i, **{c: round(float(v), 4) for c, v in zip(FEATURE_COLUMNS, x, strict=True)}}
        for i, x in enumerate(np.asarray(X))
    ]
    engine = make_engine(url)
    try:
        create_tables(engine, METADATA)
        upsert(engine, FEATURES, rows)
    finally:
        engine.dispose()
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving_patterns.prep_pred.trainer", description=__doc__
    )
    parser.add_argument("--out", required=True, help="writes prep/ and pred/ artifacts here")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--run-id", default=None, help="default: a new run-<time>-<random> id")
    parser.add_argument("--database-url", default=None,
                        help="also load the iris rows into the feature table of this database")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    manifests = train(args.out, version=args.version, seed=args.seed, run_id=args.run_id)
    pred = manifests["pred"]
    print(f"trained train_run_id={pred['train_run_id']} in {time.perf_counter() - started:.1f}s:"
          f" {json.dumps(pred['metrics'])}", flush=True)
    for stage, manifest in manifests.items():
        print(f"  {stage}: {Path(args.out) / stage} sha256={manifest['sha256'][:12]}", flush=True)
    if args.database_url is not None:
        n = load_features(args.database_url)
        print(f"loaded {n} feature rows into {FEATURES.name} ({show_url(args.database_url)})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
