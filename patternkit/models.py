"""Model artifacts: train with scikit-learn, export to ONNX, serve with onnxruntime.

Training (`train_model`) is the only place that imports scikit-learn; it writes `model.onnx`
and a `manifest.json` beside it (name, version, metrics, data hash, library versions, input
schema, what a server needs to run it (`requires`: onnxruntime and the graph's opsets), sha256
of the file). Serving code loads the pair with `OnnxModel`, which verifies the
sha256 and predicts with onnxruntime alone.

`train_cached` puts a content-addressed cache in front of `train_model`: an artifact trained
once for a recipe (variant, version, seed, split, library versions and this module's code) is
copied byte for byte into every later `out_dir` that asks for the same recipe, without
importing scikit-learn; any change in the recipe trains anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("patternkit.models")

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
DATASETS = ("iris", "wine", "breast_cancer", "digits", "synthetic")
# `synthetic`: a seeded make_classification problem (2,000 rows, 8 features, 3 classes) on
# which a large forest beats logistic regression by a small, real margin (Q3, SA1)
SYNTHETIC = {"n_samples": 2000, "n_features": 8, "n_informative": 4, "n_redundant": 4,
             "n_classes": 3, "n_clusters_per_class": 1, "class_sep": 1.0, "flip_y": 0.03,
             "random_state": 0}
# The oldest onnxruntime this project supports (pyproject.toml): every artifact's manifest
# declares it in `requires`, with the opsets its graph imports, for servers that load
# models they were not built with (patternkit.loader checks both before a download).
MIN_ONNXRUNTIME = "1.18"
DEFAULT_DOMAIN = "ai.onnx"  # the ONNX domain "" by its name


@dataclass(frozen=True)
class Variant:
    """A trainable model: dataset, estimator kind, and an optional binary relabelling.

    `positive` makes a one-vs-rest binary model (class 1 = that class); `among` first keeps
    only the rows of those classes (e.g. versicolor vs virginica).
    """

    dataset: str
    kind: str
    positive: str | None = None
    among: tuple[str, ...] = ()


# Every variant is a StandardScaler + classifier pipeline.
VARIANTS: dict[str, Variant] = {
    "iris_lr": Variant("iris", "lr"),
    "iris_rf": Variant("iris", "rf"),
    "iris_heavy": Variant("iris", "heavy_rf"),
    "iris_setosa": Variant("iris", "lr", positive="setosa"),
    "iris_versicolor": Variant("iris", "lr", positive="versicolor"),
    "iris_virginica": Variant("iris", "lr", positive="virginica"),
    "versicolor_vs_virginica": Variant(
        "iris", "lr", positive="virginica", among=("versicolor", "virginica")
    ),
    "wine_lr": Variant("wine", "lr"),
    "breast_cancer_lr": Variant("breast_cancer", "lr"),
    "synthetic_lr": Variant("synthetic", "lr"),
    "synthetic_forest": Variant("synthetic", "forest"),
}


def variant_data(variant: Variant) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The variant's training data: X, y, feature names, class names (binary: [rest, positive])."""
    X, y, features, classes = load_dataset(variant.dataset)
    if variant.among:
        keep = np.isin(y, [classes.index(c) for c in variant.among])
        X, y = X[keep], y[keep]
    if variant.positive is not None:
        y = (y == classes.index(variant.positive)).astype(np.int64)
        rest = "-".join(c for c in (variant.among or classes) if c != variant.positive)
        classes = [f"not_{variant.positive}" if not variant.among else rest, variant.positive]
    return X, y, features, classes


class ModelError(RuntimeError):
    """A model artifact is missing, unreadable or does not match its manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """A dataset bundled with scikit-learn (or `synthetic`, generated from a fixed seed):
    X (float32), y, feature names, class names."""
    from sklearn import datasets

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "synthetic":
        X, y = datasets.make_classification(**SYNTHETIC)
        features = [f"x{i}" for i in range(X.shape[1])]
        classes = [f"class_{c}" for c in range(int(SYNTHETIC["n_classes"]))]
        return X.astype(np.float32), y.astype(np.int64), features, classes
    bunch = getattr(datasets, f"load_{name}")()
    features = [str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1]))]
    classes = [str(c) for c in bunch.target_names]
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64), features, classes


def data_hash(X: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(X).tobytes() + y.tobytes()).hexdigest()


def build_pipeline(kind: str, seed: int) -> Any:
    """The scikit-learn pipeline for an estimator kind (`lr`, `rf`, `heavy_rf`, `forest`: 1,000
    fully grown trees, about 10 ms of CPU for a batch of 50 synthetic rows)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    estimators: dict[str, Any] = {
        "lr": lambda: LogisticRegression(max_iter=1000, random_state=seed),
        "rf": lambda: RandomForestClassifier(n_estimators=50, max_depth=6, random_state=seed),
        "heavy_rf": lambda: RandomForestClassifier(n_estimators=300, random_state=seed),
        "forest": lambda: RandomForestClassifier(n_estimators=1000, random_state=seed),
    }
    if kind not in estimators:
        raise ValueError(f"unknown estimator kind {kind!r}; choose one of {', '.join(estimators)}")
    return Pipeline([("scaler", StandardScaler()), ("clf", estimators[kind]())])


def export_onnx(estimator: Any, n_features: int, classifier: bool = True) -> bytes:
    """Serialise a fitted estimator to ONNX (float32 in); a classifier gets plain `label` and
    `probabilities` outputs, a transformer (`classifier=False`) its transformed matrix."""
    from skl2onnx import to_onnx

    sample = np.zeros((1, n_features), dtype=np.float32)
    options = {"zipmap": False} if classifier else None
    onx = to_onnx(estimator, sample, options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    return bytes(onx.SerializeToString())


def graph_opsets(model: bytes) -> dict[str, int]:
    """The opset an ONNX graph imports per domain (`ai.onnx` for the default one)."""
    import onnx

    found: dict[str, int] = {}
    for entry in onnx.load_from_string(model).opset_import:
        domain = entry.domain or DEFAULT_DOMAIN
        found[domain] = max(found.get(domain, 0), int(entry.version))
    return dict(sorted(found.items()))


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for pkg in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy"):
        try:
            found[pkg] = pkg_version(pkg)
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            continue
    return found


def train_model(
    name: str,
    out_dir: str | Path,
    version: str = "1.0.0",
    seed: int = 42,
    test_size: float = 0.3,
) -> dict[str, Any]:
    """Train the variant `name`, write `model.onnx` + `manifest.json` to `out_dir`, return it."""
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    X, y, features, classes = variant_data(variant)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y
    )
    pipeline = build_pipeline(variant.kind, seed).fit(X_train, y_train)
    accuracy = float(accuracy_score(y_test, pipeline.predict(X_test)))
    return write_artifact(
        pipeline,
        out_dir,
        name=name,
        version=version,
        features=features,
        classes=classes,
        metrics={"accuracy": round(accuracy, 4), "n_train": len(y_train), "n_test": len(y_test)},
        extra={"dataset": variant.dataset, "estimator": variant.kind, "seed": seed,
               "data_hash": data_hash(X, y)},
    )


def write_artifact(
    estimator: Any,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    features: list[str],
    classes: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    classifier: bool = True,
) -> dict[str, Any]:
    """Export a fitted estimator to `out_dir/model.onnx` and write its manifest beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    tmp = model_path.with_suffix(".onnx.tmp")
    graph = export_onnx(estimator, len(features), classifier)
    tmp.write_bytes(graph)
    tmp.replace(model_path)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics or {},
        "input_schema": {"n_features": len(features), "features": features, "dtype": "float32"},
        "classes": classes or [],
        "libraries": library_versions(),
        # what a server needs to run it: checked before download by patternkit.loader
        "requires": {"onnxruntime": f">={MIN_ONNXRUNTIME}", "opset": graph_opsets(graph)},
        "file": MODEL_FILE,
        "sha256": sha256_file(model_path),
        **(extra or {}),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def training_recipe(
    name: str, version: str = "1.0.0", seed: int = 42, test_size: float = 0.3
) -> dict[str, Any]:
    """Everything `train_model` output depends on: the cache key is its hash."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")
    return {
        "name": name,
        "variant": asdict(VARIANTS[name]),
        "version": version,
        "seed": seed,
        "test_size": test_size,
        "libraries": library_versions(),
        "code": sha256_file(Path(__file__)),  # the training and export code itself
    }


def training_key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def copy_artifact(src: Path, out_dir: Path) -> dict[str, Any]:
    """Copy a verified artifact into `out_dir` (each file written whole, then renamed into
    place), check the copy against its manifest and return the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for file in (MODEL_FILE, MANIFEST_FILE):  # the model first: a manifest never names a
        tmp = out_dir / f".{file}.tmp"         # file that is not there yet
        shutil.copyfile(src / file, tmp)
        tmp.replace(out_dir / file)
    return read_verified_manifest(out_dir)[1]


def _cached(entry: Path) -> bool:
    try:
        read_verified_manifest(entry)
    except ModelError:
        return False
    return True


def _store(out_dir: Path, entry: Path) -> None:
    """Put a freshly trained artifact into the cache as `entry`, atomically: it is copied into
    a temporary folder beside `entry` and renamed, so a reader sees all of it or nothing. When
    another process stored the same recipe first, its (identical) entry is kept."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        copy_artifact(out_dir, staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from other users of the cache
        if entry.exists() and not _cached(entry):  # a broken entry is replaced
            shutil.rmtree(entry, ignore_errors=True)
        with suppress(OSError):  # fails when another trainer stored it meanwhile
            os.rename(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_cached(
    name: str,
    out_dir: str | Path,
    cache_dir: str | Path,
    version: str = "1.0.0",
    seed: int = 42,
    test_size: float = 0.3,
) -> tuple[dict[str, Any], bool]:
    """`train_model` through the cache in `cache_dir`: (manifest, whether it was a cache hit).

    A hit copies the cached `model.onnx` and `manifest.json` into `out_dir` unchanged (the
    copy is verified against the manifest's sha256); a miss trains, writes `out_dir` and
    stores a copy under the recipe's key. An entry that fails verification is trained again.
    """
    recipe = training_recipe(name, version, seed, test_size)
    entry = Path(cache_dir) / f"{name}-{version}-{training_key(recipe)[:24]}"
    out = Path(out_dir)
    if _cached(entry):
        try:
            return copy_artifact(entry, out), True
        except (OSError, ModelError):  # removed or replaced while we copied: train instead
            pass
    manifest = train_model(name, out, version=version, seed=seed, test_size=test_size)
    try:
        _store(out, entry)
    except OSError as exc:  # a cache we may not write (a read-only tree): the model stands
        log.warning("model cache %s not written: %s", cache_dir, exc)
    return manifest, False


NUMBER_KINDS = frozenset("iuf")  # numpy dtype kinds of real numbers (not bool "b", not str)


def is_number(value: Any) -> bool:
    """A real number: int or float (Python or numpy), but not a bool."""
    number = isinstance(value, (int, float, np.integer, np.floating))
    return number and not isinstance(value, (bool, np.bool_))


def first_non_number(rows: Any) -> tuple[str, Any] | None:
    """The position (`i.j`) and value of the first feature that is not a real number, if any.

    Only lists, tuples and arrays are looked into; other shapes are left for the array
    conversion to refuse."""
    if not isinstance(rows, (list, tuple, np.ndarray)):
        return None
    if isinstance(rows, np.ndarray) and rows.dtype.kind in NUMBER_KINDS:
        return None
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple, np.ndarray)):
            if not is_number(row):
                return f"{i}", row
            continue
        for j, value in enumerate(row):
            if not is_number(value):
                return f"{i}.{j}", value
    return None


def as_rows(rows: Any, n_features: int | None) -> np.ndarray:
    """Rows as a (n, n_features) float32 array of finite numbers, or a ValueError naming why.

    For inputs that did not come through a validated HTTP body (a queued job, a device). As
    the HTTP schema does, it refuses booleans and numeric strings, which numpy would coerce."""
    not_number = first_non_number(rows)
    if not_number is not None:
        where, value = not_number
        raise ValueError(f"rows must be lists of numbers: rows.{where} is "
                         f"{type(value).__name__} {value!r}")
    try:
        X = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rows must be lists of numbers: {exc}") from None
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"expected a non-empty list of rows, got an array of shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"expected rows of {n_features} features, got {X.shape[1]}")
    if not np.isfinite(X).all():
        raise ValueError("every feature must be a finite number")
    return X


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # (n,) int64
    probabilities: np.ndarray  # (n, n_classes) float32


class OnnxArtifact:
    """An ONNX graph plus its manifest, checked against the manifest's sha256 on load."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        model_path, self.manifest = read_verified_manifest(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.path = model_path

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def n_features(self) -> int:
        return int(self.manifest["input_schema"]["n_features"])


class OnnxModel(OnnxArtifact):
    """A classifier: `predict` gives labels and class probabilities."""

    def predict(self, X: np.ndarray) -> Prediction:
        labels, probabilities = self.session.run(None, {self.input_name: X})
        return Prediction(labels=labels, probabilities=probabilities)

    def answer(self, X: np.ndarray, served_by: str, request_id: str | None) -> dict[str, Any]:
        """The template predictor's reply for the rows `X` (a worker's job result likewise)."""
        out = self.predict(X)
        return {
            "prediction": out.labels,
            "probabilities": out.probabilities,
            "model": self.name,
            "version": self.version,
            "served_by": served_by,
            "request_id": request_id,
        }


def read_verified_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(model file, manifest) for an artifact whose file matches the manifest's sha256."""
    model_path, manifest_path = resolve_artifact(path)
    if not manifest_path.is_file():
        raise ModelError(f"no {MANIFEST_FILE} beside {model_path}")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable manifest {manifest_path}: {exc}") from exc
    actual = sha256_file(model_path)
    if actual != manifest.get("sha256"):
        raise ModelError(
            f"sha256 mismatch for {model_path}: manifest says {manifest.get('sha256')}, "
            f"file is {actual}"
        )
    return model_path, manifest


def input_schema(path: str | Path) -> dict[str, Any]:
    """The `input_schema` of an artifact's manifest (`n_features`, ...), read without the model:
    for a service that validates rows for a model another process runs (a job queue)."""
    _, manifest_path = resolve_artifact(path)
    try:
        schema: dict[str, Any] = json.loads(manifest_path.read_text())["input_schema"]
        int(schema["n_features"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"no input schema in {manifest_path}: {exc}") from exc
    return schema


def resolve_artifact(path: str | Path) -> tuple[Path, Path]:
    """(model file, manifest file) for a model directory or a path to its `.onnx` file."""
    p = Path(path)
    model_path = p / MODEL_FILE if p.is_dir() else p
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    return model_path, model_path.with_name(MANIFEST_FILE)
