"""patternkit.models: training, ONNX export, manifest, integrity check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from patternkit.models import (
    MANIFEST_FILE,
    MODEL_FILE,
    ModelError,
    OnnxModel,
    as_rows,
    build_pipeline,
    load_dataset,
    sha256_file,
    train_model,
)


def test_manifest_describes_the_artifact(iris_model: Path) -> None:
    manifest = json.loads((iris_model / MANIFEST_FILE).read_text())
    assert manifest["name"] == "iris_lr"
    assert manifest["version"] == "1.2.3"
    assert manifest["sha256"] == sha256_file(iris_model / MODEL_FILE)
    assert manifest["input_schema"]["n_features"] == 4
    assert manifest["metrics"]["accuracy"] > 0.85
    assert len(manifest["data_hash"]) == 64
    assert {"scikit-learn", "skl2onnx", "onnxruntime", "numpy"} <= set(manifest["libraries"])
    assert manifest["classes"] == ["setosa", "versicolor", "virginica"]


def test_onnx_matches_scikit_learn(iris_model: Path) -> None:
    from sklearn.model_selection import train_test_split

    X, y, _, _ = load_dataset("iris")
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=42, stratify=y)
    reference = build_pipeline("lr", 42).fit(X_train, y_train)
    out = OnnxModel(iris_model).predict(X)
    assert out.labels.tolist() == reference.predict(X).tolist()
    np.testing.assert_allclose(out.probabilities, reference.predict_proba(X), atol=1e-5)


def test_training_is_reproducible(tmp_path: Path, iris_model: Path) -> None:
    again = train_model("iris_lr", tmp_path, version="1.2.3")
    first = json.loads((iris_model / MANIFEST_FILE).read_text())
    assert again["data_hash"] == first["data_hash"]
    assert again["metrics"] == first["metrics"]


def test_a_tampered_model_is_refused(tmp_path: Path, iris_model: Path) -> None:
    shutil.copytree(iris_model, tmp_path / "m")
    with (tmp_path / "m" / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        OnnxModel(tmp_path / "m")


def test_missing_files_are_named(tmp_path: Path, iris_model: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        OnnxModel(tmp_path)
    shutil.copy(iris_model / MODEL_FILE, tmp_path / MODEL_FILE)
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        OnnxModel(tmp_path)


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        train_model("iris_xx", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


def test_other_bundled_datasets_train(tmp_path: Path) -> None:
    manifest = train_model("wine_lr", tmp_path)
    assert manifest["input_schema"]["n_features"] == 13
    X, _, _, _ = load_dataset("wine")
    assert OnnxModel(tmp_path).predict(X[:5]).probabilities.shape == (5, 3)


@pytest.mark.parametrize(
    ("name", "classes", "rows"),
    [
        ("iris_setosa", ["not_setosa", "setosa"], 150),
        ("versicolor_vs_virginica", ["versicolor", "virginica"], 100),
    ],
)
def test_binary_variants(tmp_path: Path, name: str, classes: list[str], rows: int) -> None:
    manifest = train_model(name, tmp_path)
    assert manifest["classes"] == classes
    assert manifest["metrics"]["n_train"] + manifest["metrics"]["n_test"] == rows
    X, y, _, _ = load_dataset("iris")
    out = OnnxModel(tmp_path).predict(X)
    assert out.probabilities.shape == (150, 2)
    if name == "iris_setosa":
        assert (out.labels == (y == 0)).mean() > 0.95


@pytest.mark.parametrize(
    ("rows", "names"),
    [
        ([[1, 2, 3]], "expected rows of 4 features, got 3"),
        ([1, 2, 3, 4], "non-empty list of rows"),
        ([], "non-empty list of rows"),
        ([[1, 2, "x", 4]], "lists of numbers"),
        ([[1, 2, 3, 4], [True, False, True, False]], r"rows\.1\.0 is bool True"),
        ([[1, 2, "3.5", 4]], r"rows\.0\.2 is str '3.5'"),
        (np.array([[True, False, True, False]]), r"rows\.0\.0 is bool"),
        ([[1, 2, [3], 4]], r"rows\.0\.2 is list"),
        ([[1, 2, float("nan"), 4]], "finite"),
    ],
)
def test_as_rows_names_what_is_wrong(rows: object, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        as_rows(rows, 4)
    assert as_rows([[1, 2, 3, 4]], 4).dtype == np.float32
    assert as_rows(np.ones((2, 4), dtype=np.float64), 4).shape == (2, 4)
