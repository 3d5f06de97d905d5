"""T1's training job, step by step: gather -> validate -> train -> evaluate -> build -> register.

Each step is a function of what the step before handed it, so the worker can record which
step failed and why, and TA1 can rebuild a registered model from its manifest alone:

- `gather` reads the raw table up to its highest id (the run's snapshot, in the manifest);
- `validate` parses the text columns, refuses a row for the first reason that applies
  (`missing`, `not_a_number`, `negative`, `out_of_range`, `unknown_label`) and counts them;
- `train` fits StandardScaler + LogisticRegression on a seeded, stratified split;
- `evaluate` rejects a candidate under MIN_ACCURACY, or more than MAX_REGRESSION below the
  model registered now, measured on the same held-out rows;
- `build` exports ONNX and writes the manifest (git SHA, code and data hashes, seed, split,
  params, library versions, metrics, dropped rows) with `patternkit.models.write_artifact`,
  and checks the ONNX graph predicts what scikit-learn did;
- `register` publishes the folder into the model repository (`patternkit.model_repository`).
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import sqlalchemy as sa

from patternkit.model_repository import ModelStore, publish, version_key
from patternkit.models import OnnxModel, data_hash, write_artifact
from training_patterns.batch_training import dwh

MODEL_NAME = "iris_batch"
CLASSES = ["setosa", "versicolor", "virginica"]
StepName = Literal["gather", "validate", "train", "evaluate", "build", "register"]
STEPS: tuple[str, ...] = get_args(StepName)
REASONS = ("missing", "not_a_number", "negative", "out_of_range", "unknown_label")
MAX_CM = 30.0  # no iris part is longer: larger values are millimetres or typos
DEFAULT_PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 1000}
CODE_FILE = Path(__file__)


class StepFailed(RuntimeError):
    """A step that could not finish: the run is `failed` at `step` (re-kick it later)."""

    def __init__(self, step: str, error: str) -> None:
        super().__init__(error)
        self.step = step


class Rejected(Exception):
    """A candidate that trained but is not good enough: the run is `rejected`."""


@dataclass
class Clean:
    X: np.ndarray
    y: np.ndarray
    raw: int
    up_to_id: int
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # one refused row per reason

    @property
    def hash(self) -> str:
        return data_hash(self.X, self.y)


@dataclass
class Trained:
    estimator: Any
    X_test: np.ndarray
    y_test: np.ndarray
    metrics: dict[str, Any]


def git_sha() -> str:
    """The commit the code runs from (GIT_SHA in an image without .git), `+dirty` when the
    working tree has changes; `unknown` when neither tells."""
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    here = str(CODE_FILE.parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def code_hash() -> str:
    """The sha256 of this file: the training code a rebuild must run again."""
    return hashlib.sha256(CODE_FILE.read_bytes()).hexdigest()


def gather(engine: sa.Engine, up_to_id: int | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return dwh.read_rows(conn, up_to_id)


def parse_feature(text: str | None) -> tuple[float | None, str | None]:
    """A raw cell as centimetres, or the reason it is refused."""
    if text is None or not text.strip() or text.strip().lower() in ("nan", "null", "none"):
        return None, "missing"
    try:
        value = float(text.strip())
    except ValueError:
        return None, "not_a_number"
    if not math.isfinite(value):
        return None, "not_a_number"
    if value < 0:
        return None, "negative"
    if value == 0 or value > MAX_CM:
        return None, "out_of_range"
    return value, None


def validate(rows: list[dict[str, Any]]) -> Clean:
    """Keep the rows whose four features parse into (0, MAX_CM] and whose label is declared;
    count the others by their first problem."""
    kept_X: list[list[float]] = []
    kept_y: list[int] = []
    dropped: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for row in rows:
        values: list[float] = []
        reason: str | None = None
        for name in dwh.FEATURES:
            value, reason = parse_feature(row[name])
            if reason:
                examples.setdefault(reason, f"id {row['id']}: {name}={row[name]!r}")
                break
            assert value is not None
            values.append(value)
        if reason is None and (row[dwh.LABEL] or "").strip().lower() not in CLASSES:
            reason = "unknown_label"
            examples.setdefault(reason, f"id {row['id']}: {dwh.LABEL}={row[dwh.LABEL]!r}")
        if reason:
            dropped[reason] += 1
            continue
        kept_X.append(values)
        kept_y.append(CLASSES.index(row[dwh.LABEL].strip().lower()))
    return Clean(np.asarray(kept_X, dtype=np.float32).reshape(-1, len(dwh.FEATURES)),
                 np.asarray(kept_y, dtype=np.int64), raw=len(rows),
                 up_to_id=max((int(r["id"]) for r in rows), default=0),
                 dropped={r: dropped[r] for r in REASONS if dropped[r]}, examples=examples)


def train(clean: Clean, seed: int, params: dict[str, Any], test_size: float = 0.3) -> Trained:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if len(clean.y) < 30 or len(set(clean.y.tolist())) < len(CLASSES):
        raise StepFailed("train", f"{len(clean.y)} clean rows over {len(set(clean.y.tolist()))}"
                                  " classes: too few to train and hold out a test split")
    X_train, X_test, y_train, y_test = train_test_split(
        clean.X, clean.y, test_size=test_size, random_state=seed, stratify=clean.y)
    estimator = Pipeline([
        ("scaler", StandardScaler()),
        ("clf", LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]),
                                   random_state=seed)),
    ]).fit(X_train, y_train)
    accuracy = float(accuracy_score(y_test, estimator.predict(X_test)))
    return Trained(estimator, X_test, y_test, {
        "accuracy": round(accuracy, 4), "n_train": len(y_train), "n_test": len(y_test)})


def current_model(repo_dir: Path) -> OnnxModel | None:
    store = ModelStore(repo_dir / MODEL_NAME, name=MODEL_NAME)
    for version in store.versions():
        if store.load(version) is not None:
            return OnnxModel(repo_dir / MODEL_NAME / version)
    return None


def next_version(repo_dir: Path) -> str:
    versions = ModelStore(repo_dir / MODEL_NAME, name=MODEL_NAME).versions()
    if not versions:
        return "1.0.0"
    major, minor, patch = version_key(versions[0])
    return f"{major}.{minor}.{patch + 1}"


def evaluate(trained: Trained, repo_dir: Path, min_accuracy: float, max_regression: float
             ) -> dict[str, Any]:
    """The comparison with the registered model on this run's held-out rows; raises
    `Rejected` when the candidate is under the bar or too far below the current model."""
    accuracy = trained.metrics["accuracy"]
    current = current_model(repo_dir)
    found: dict[str, Any] = {"current_version": None, "current_accuracy": None}
    if current is not None:
        labels = current.predict(trained.X_test).labels
        found = {"current_version": current.version,
                 "current_accuracy": round(float(np.mean(labels == trained.y_test)), 4)}
    trained.metrics.update(found)
    if accuracy < min_accuracy:
        raise Rejected(f"accuracy {accuracy} is under MIN_ACCURACY {min_accuracy}")
    if found["current_accuracy"] is not None and \
            accuracy < found["current_accuracy"] - max_regression:
        raise Rejected(f"accuracy {accuracy} is more than MAX_REGRESSION {max_regression} "
                       f"below the current model {found['current_version']} "
                       f"({found['current_accuracy']}) on the same held-out rows")
    return found


def build(trained: Trained, clean: Clean, out: Path, version: str, *, seed: int,
          params: dict[str, Any], run_id: str, test_size: float = 0.3) -> dict[str, Any]:
    """Export ONNX with the full provenance manifest into `out`; the ONNX graph must predict
    what scikit-learn did on the held-out rows."""
    manifest = write_artifact(
        trained.estimator, out, name=MODEL_NAME, version=version,
        features=list(dwh.FEATURES), classes=CLASSES, metrics=trained.metrics,
        extra={"provenance": {
            "run_id": run_id, "git_sha": git_sha(), "code_sha256": code_hash(),
            "code": str(CODE_FILE.relative_to(CODE_FILE.parents[2])),
            "data": {"table": dwh.IRIS_RAW.name, "up_to_id": clean.up_to_id,
                     "raw_rows": clean.raw, "clean_rows": len(clean.y),
                     "dropped": clean.dropped, "data_hash": clean.hash},
            "seed": seed, "test_size": test_size, "params": params,
        }})
    onnx_labels = OnnxModel(out).predict(trained.X_test).labels
    sklearn_labels = trained.estimator.predict(trained.X_test)
    if not np.array_equal(onnx_labels, sklearn_labels):
        raise StepFailed("build", "the exported ONNX graph disagrees with scikit-learn on "
                                  f"{int(np.sum(onnx_labels != sklearn_labels))} test rows")
    return manifest


def register(out: Path, repo_dir: Path) -> Path:
    return publish(out, repo_dir)
