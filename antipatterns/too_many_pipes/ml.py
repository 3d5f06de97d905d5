"""The training steps both TA3 pipelines share: what a step does to its folder of files.

A table (`Table`: feature names, rows, labels) is gathered to `X.npy`/`y.npy`; prep splits it
(seeded, stratified) and standardises it with its scale (`stats.json`: mean and std, from the
training rows unless it is handed another step's); train fits a logistic regression
(`model.pkl`); evaluate scores it on the held-out rows (`metrics.json`); build exports scaler
+ model to ONNX (`patternkit.models.write_artifact`) and publishes the next version to the
model repository folder. The pipelines differ only in how they wire these and read data.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Table:
    """Rows read from a store: numeric features and a label per row."""

    features: list[str]
    X: np.ndarray
    labels: list[str]


def gather(table: Table, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(set(table.labels))
    np.save(out / "X.npy", table.X.astype(np.float32))
    np.save(out / "y.npy", np.asarray([classes.index(c) for c in table.labels]))
    (out / "schema.json").write_text(json.dumps({"features": table.features,
                                                 "classes": classes}))
    return {"rows": len(table.labels)}


def prep(src: Path, out: Path, stats: dict[str, list[float]] | None = None) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    X, y = np.load(src / "X.npy"), np.load(src / "y.npy")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0,
                                                        stratify=y)
    if stats is None:
        stats = {"mean": X_train.mean(axis=0).tolist(),
                 "std": (X_train.std(axis=0) + 1e-9).tolist()}
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    if mean.shape != (X.shape[1],):
        raise ValueError(f"the scale has {mean.shape[0]} features, the rows {X.shape[1]}")
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("X_train", (X_train - mean) / std), ("X_test", (X_test - mean) / std),
                      ("y_train", y_train), ("y_test", y_test)):
        np.save(out / f"{name}.npy", arr.astype(np.float32) if name[0] == "X" else arr)
    (out / "stats.json").write_text(json.dumps(stats))
    (out / "schema.json").write_text((src / "schema.json").read_text())
    return {"n_train": len(y_train)}


def train(src: Path, out: Path, C: float = 1.0) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=1000, random_state=0)
    model.fit(np.load(src / "X_train.npy"), np.load(src / "y_train.npy"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pkl").write_bytes(pickle.dumps(model))
    return {"C": C}


def evaluate(model_dir: Path, data: Path, out: Path) -> dict[str, Any]:
    model = pickle.loads((model_dir / "model.pkl").read_bytes())  # our own file, just written
    X, y = np.load(data / "X_test.npy"), np.load(data / "y_test.npy")
    metrics = {"accuracy": round(float(np.mean(model.predict(X) == y)), 4), "n_test": len(y)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def build(name: str, model_dir: Path, data: Path, metrics_dir: Path, out: Path,
          repo: Path) -> dict[str, Any]:
    """Scaler (prep's scale) + model as one ONNX graph, published as the next version."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from patternkit.model_repository import ModelStore, publish
    from patternkit.models import write_artifact

    stats = json.loads((data / "stats.json").read_text())
    schema = json.loads((data / "schema.json").read_text())
    scaler = StandardScaler()
    scaler.mean_ = np.asarray(stats["mean"])
    scaler.scale_ = np.asarray(stats["std"])
    scaler.var_ = scaler.scale_ ** 2
    scaler.n_features_in_ = len(stats["mean"])
    model = pickle.loads((model_dir / "model.pkl").read_bytes())
    versions = ModelStore(repo / name, name=name).versions()  # newest first
    version = f"1.0.{int(versions[0].split('.')[-1]) + 1}" if versions else "1.0.0"
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    write_artifact(Pipeline([("scaler", scaler), ("clf", model)]), out, name=name,
                   version=version, features=schema["features"], classes=schema["classes"],
                   metrics=metrics)
    publish(out, repo)
    return {"model": name, "version": version}
