"""The training code of TA2: read the iris table from the DWH, split, fit, evaluate, export.

What a training job needs and a server does not: DWH access (`DWH_URL`), pandas for the
wrangling (when it is installed; plain SQLAlchemy rows otherwise), scikit-learn for the split,
the fit and the metric, and skl2onnx for the export. It is imported at the top, as training
code is. The trainer runs it once in the training environment, which is the right place.
The fat server imports it as well, and that is the antipattern: the whole training stack,
and the DWH's address, are loaded into a process that only has to predict.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import skl2onnx  # noqa: F401  # the exporter write_artifact calls: loaded with the training stack
import sqlalchemy as sa
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from patternkit.db import create_tables, make_engine, show_url, upsert
from patternkit.models import build_pipeline, data_hash, load_dataset, write_artifact

try:  # the wrangling library, if the environment has it
    import pandas as pd
except ImportError:  # pragma: no cover - pandas is installed here
    pd = None

MODEL_NAME = "iris_lr"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
TEST_SIZE = 0.3

metadata = sa.MetaData()
iris_table = sa.Table(
    "training_code_in_serving_iris", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    *(sa.Column(name, sa.Float, nullable=False) for name in FEATURES),
    sa.Column("species", sa.Integer, nullable=False),
)


def seed_dwh(dwh_url: str) -> int:
    """Write the 150 iris rows into the DWH table (again: the same rows, by id)."""
    X, y, _, _ = load_dataset("iris")
    engine = make_engine(dwh_url)
    try:
        create_tables(engine, metadata)
        rows = [{"id": i, **dict(zip(FEATURES, map(float, x), strict=True)), "species": int(c)}
                for i, (x, c) in enumerate(zip(X, y, strict=True))]
        return upsert(engine, iris_table, rows)
    finally:
        engine.dispose()


def read_dwh(dwh_url: str) -> tuple[np.ndarray, np.ndarray]:
    """The training table as X (float32) and y, with pandas when it is installed."""
    engine = make_engine(dwh_url)
    try:
        query = sa.select(iris_table).order_by(iris_table.c.id)
        if pd is not None:
            frame = pd.read_sql(query, engine)
            return frame[FEATURES].to_numpy(np.float32), frame["species"].to_numpy(np.int64)
        with engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return (np.array([[r[f] for f in FEATURES] for r in rows], dtype=np.float32),
                np.array([r["species"] for r in rows], dtype=np.int64))
    finally:
        engine.dispose()


def train(dwh_url: str, out_dir: str | Path, version: str = "1.0.0", seed: int = 42
          ) -> dict[str, Any]:
    """Read the DWH, fit StandardScaler + LogisticRegression, evaluate it on a held-out 30%,
    and write `model.onnx` + manifest to `out_dir`. Returns what a caller wants to know."""
    started = time.perf_counter()
    X, y = read_dwh(dwh_url)
    if len(y) == 0:
        raise ValueError(f"the DWH table {iris_table.name} is empty")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=seed, stratify=y)
    pipeline = build_pipeline("lr", seed).fit(X_train, y_train)
    accuracy = round(float(accuracy_score(y_test, pipeline.predict(X_test))), 4)
    manifest = write_artifact(
        pipeline, out_dir, name=MODEL_NAME, version=version, features=FEATURES, classes=CLASSES,
        metrics={"accuracy": accuracy, "n_train": len(y_train), "n_test": len(y_test)},
        extra={"dataset": f"DWH table {iris_table.name}", "estimator": "lr", "seed": seed,
               "data_hash": data_hash(X, y)},
    )
    return {"model": MODEL_NAME, "version": version, "rows_read": len(y),
            "dwh": show_url(dwh_url), "wrangling": "pandas" if pd is not None else "sqlalchemy",
            "metrics": manifest["metrics"], "sha256": manifest["sha256"],
            "model_dir": str(out_dir), "seconds": round(time.perf_counter() - started, 2)}
