"""The one-shot trainer of QA1: two models judged offline on the same held-out set, and the report.

The offline table is the iris data plus a column `label_echo` that a careless backfill joined in
from the outcome table: it holds the class (+1, and a little noise) of the row, known only after
the fact. At request time nobody knows it, so the serving side sends 0 ("unknown") there.
Model A (`iris_measured`) reads only the four measured features (a ColumnTransformer drops the
fifth). Model B (`iris_echo`) lets automatic feature selection keep the one most predictive
column (`SelectKBest(f_classif, k=1)`): on the offline table that is the leak. On the held-out
30% B is perfect and A is not, so offline B ranks first; online, where the leak is 0, B answers
class 0 for everyone. Both models take 5-column rows, so the A/B proxy sends them the same body.
Writes `<out>/a`, `<out>/b` (model.onnx + manifest) and `<out>/offline_report.json`:
`python -m antipatterns.offline_only.trainer --out {run_dir}/models`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from patternkit.models import data_hash, load_dataset, write_artifact

SEED = 42
LEAK = "label_echo"
UNKNOWN = 0.0  # what the serving side sends for the leaked column: it is not known yet
MODELS = {"a": ("iris_measured", "the four measured features"),
          "b": ("iris_echo", f"the best column of five by F-score: the leaked {LEAK}")}
REPORT_FILE = "offline_report.json"


def offline_table() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """X with the leaked column (class + 1), y, feature names, class names."""
    X, y, features, classes = load_dataset("iris")
    noise = np.random.default_rng(SEED).normal(0.0, 0.05, len(y))
    leaked = np.c_[X, y + 1 + noise].astype(np.float32)
    return leaked, y, [*features, LEAK], classes


def pipelines() -> dict[str, Any]:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    measured = ColumnTransformer([("measured", "passthrough", [0, 1, 2, 3])])
    return {
        "a": Pipeline([("measured", measured), ("scaler", StandardScaler()),
                       ("clf", LogisticRegression(max_iter=1000, random_state=SEED))]),
        "b": Pipeline([("select", SelectKBest(f_classif, k=1)), ("scaler", StandardScaler()),
                       ("clf", LogisticRegression(max_iter=1000, random_state=SEED))]),
    }


def train(out: Path) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    X, y, features, classes = offline_table()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=SEED, stratify=y)
    models: dict[str, Any] = {}
    for variant, pipeline in pipelines().items():
        name, reads = MODELS[variant]
        pipeline.fit(X_train, y_train)
        accuracy = float(accuracy_score(y_test, pipeline.predict(X_test)))
        online = X_test.copy()
        online[:, -1] = UNKNOWN  # the same rows as serving sees them
        serving = float(accuracy_score(y_test, pipeline.predict(online)))
        write_artifact(pipeline, out / variant, name=name, version="1.0.0", features=features,
                       classes=classes,
                       metrics={"accuracy": round(accuracy, 4), "n_train": len(y_train),
                                "n_test": len(y_test)},
                       extra={"dataset": "iris + label_echo", "reads": reads, "seed": SEED,
                              "data_hash": data_hash(X, y)})
        models[variant] = {"model": name, "reads": reads, "accuracy": round(accuracy, 4),
                           "accuracy_as_served": round(serving, 4)}
    ranking = sorted(models, key=lambda v: -models[v]["accuracy"])
    report = {"held_out_rows": len(y_test), "metric": "accuracy", "models": models,
              "ranking": ranking}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m antipatterns.offline_only.trainer",
                                     description=__doc__)
    parser.add_argument("--out", required=True, help="directory that gets a/, b/ and the report")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = train(Path(args.out))
    for variant, found in report["models"].items():
        print(f"{variant}: {found['model']} ({found['reads']}) held-out accuracy "
              f"{found['accuracy']}", flush=True)
    print(f"offline ranking: {' > '.join(report['ranking'])} "
          f"({time.perf_counter() - started:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
