"""T2's pipeline: its declaration (`PIPELINE`), each step's parameters and code, and the
cache key a step's output is filed under.

gather -> prep -> train -> evaluate (reads train and prep) -> build (reads train and
evaluate). Each step is a function `(inputs, params, out) -> summary`: `inputs` maps an
upstream step (or `source`, gather's DWH file) to its path, `out` is an empty folder that
becomes `artifacts/<run>/<step>/`. A step's cache key is the sha256 of its name, the hash of
its own function's source, its parameters and the digests of its inputs: change any of them
and the step runs; otherwise its output is restored from the run that made it.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patternkit.dag import Dag, Step
from patternkit.models import MANIFEST_FILE, MODEL_FILE, OnnxModel, sha256_file

PIPELINE = Dag.declare([
    Step("gather"),
    Step("prep", ("gather",)),
    Step("train", ("prep",)),
    Step("evaluate", ("train", "prep")),
    Step("build", ("train", "evaluate")),
])
STEP_NAMES = PIPELINE.order
StepName = Literal["gather", "prep", "train", "evaluate", "build"]
SOURCE = "source"  # gather's input: a table (CSV file) of the DWH


class StepFailed(RuntimeError):
    """A step refused its input or its result (not a bug): the run fails with this message."""


class GatherParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field("iris.csv", pattern=r"^[\w.-]{1,64}\.csv$",
                        description="the DWH table (a CSV file in DATA_DIR) to read")


class PrepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_size: float = Field(0.3, ge=0.1, le=0.5, description="held-out share, stratified")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="the split's seed")


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["lr", "rf"] = Field("lr", description="scaler + logistic regression, or a "
                                                        "random forest")
    seed: int = Field(42, ge=0, le=2**31 - 1)


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_accuracy: float = Field(0.8, ge=0, le=1, description="the bar build checks")


class BuildParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_name: str = Field("iris_pipeline", pattern=r"^[a-z][a-z0-9_]{0,63}$",
                            description="the name registered in the model repository")


PARAMS: dict[str, type[BaseModel]] = {
    "gather": GatherParams, "prep": PrepParams, "train": TrainParams,
    "evaluate": EvaluateParams, "build": BuildParams}


class Context:
    """What a step may need beyond its inputs: where the model repository is."""

    def __init__(self, repo_dir: Path, run_id: str) -> None:
        self.repo_dir = repo_dir
        self.run_id = run_id


def gather(inputs: dict[str, Path], params: dict[str, Any], out: Path,
           ctx: Context) -> dict[str, Any]:
    """Read the DWH table: numeric feature columns and a label column, rows with a missing
    or non-numeric value dropped and counted."""
    with inputs[SOURCE].open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows, dropped = [], 0
        for row in reader:
            try:
                values = [float(v) for v in row[:-1]]
            except ValueError:
                dropped += 1
                continue
            if len(values) != len(header) - 1 or not all(np.isfinite(values)) or not row[-1]:
                dropped += 1
                continue
            rows.append((values, row[-1]))
    if not rows:
        raise StepFailed(f"{inputs[SOURCE].name} has no usable rows ({dropped} dropped)")
    classes = sorted({label for _, label in rows})
    X = np.asarray([v for v, _ in rows], dtype=np.float32)
    y = np.asarray([classes.index(label) for _, label in rows], dtype=np.int64)
    np.save(out / "X.npy", X)
    np.save(out / "y.npy", y)
    schema = {"features": header[:-1], "classes": classes, "rows": len(rows),
              "dropped": dropped}
    (out / "schema.json").write_text(json.dumps(schema, indent=2))
    return schema


def prep(inputs: dict[str, Path], params: dict[str, Any], out: Path,
         ctx: Context) -> dict[str, Any]:
    """A stratified train/test split of the gathered rows."""
    from sklearn.model_selection import train_test_split

    src = inputs["gather"]
    X, y = np.load(src / "X.npy"), np.load(src / "y.npy")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=params["test_size"], random_state=params["seed"], stratify=y)
    for name, arr in (("X_train", X_train), ("X_test", X_test), ("y_train", y_train),
                      ("y_test", y_test)):
        np.save(out / f"{name}.npy", arr)
    shutil.copyfile(src / "schema.json", out / "schema.json")
    return {"n_train": len(y_train), "n_test": len(y_test)}


def train(inputs: dict[str, Path], params: dict[str, Any], out: Path,
          ctx: Context) -> dict[str, Any]:
    """Fit the estimator on the training split and export it to ONNX with its manifest."""
    from patternkit.models import build_pipeline, write_artifact

    src = inputs["prep"]
    schema = json.loads((src / "schema.json").read_text())
    X, y = np.load(src / "X_train.npy"), np.load(src / "y_train.npy")
    model = build_pipeline(params["kind"], params["seed"]).fit(X, y)
    manifest = write_artifact(model, out, name="candidate", version="0.0.0",
                              features=schema["features"], classes=schema["classes"],
                              extra={"estimator": params["kind"], "seed": params["seed"],
                                     "n_train": len(y)})
    manifest.pop("created")
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")  # no time in it
    return {"estimator": params["kind"], "sha256": manifest["sha256"]}


def evaluate(inputs: dict[str, Path], params: dict[str, Any], out: Path,
             ctx: Context) -> dict[str, Any]:
    """Accuracy of the exported ONNX model (what will be served) on the held-out split."""
    model = OnnxModel(inputs["train"])
    X, y = np.load(inputs["prep"] / "X_test.npy"), np.load(inputs["prep"] / "y_test.npy")
    accuracy = round(float(np.mean(model.predict(X).labels == y)), 4)
    metrics = {"accuracy": accuracy, "n_test": len(y), "min_accuracy": params["min_accuracy"],
               "passed": accuracy >= params["min_accuracy"],
               "model_sha256": str(model.manifest["sha256"])}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def build(inputs: dict[str, Path], params: dict[str, Any], out: Path,
          ctx: Context) -> dict[str, Any]:
    """Register a model that passed its evaluation: its next version in the repository."""
    from patternkit.model_repository import ModelStore, publish

    metrics = json.loads((inputs["evaluate"] / "metrics.json").read_text())
    if not metrics["passed"]:
        raise StepFailed(f"rejected: accuracy {metrics['accuracy']} < bar "
                         f"{metrics['min_accuracy']}; nothing registered")
    name = params["model_name"]
    versions = ModelStore(ctx.repo_dir / name, name=name).versions()  # newest first
    version = f"1.0.{int(versions[0].split('.')[-1]) + 1}" if versions else "1.0.0"
    shutil.copyfile(inputs["train"] / MODEL_FILE, out / MODEL_FILE)
    manifest = json.loads((inputs["train"] / MANIFEST_FILE).read_text())
    manifest.update(name=name, version=version, run_id=ctx.run_id,
                    metrics={k: metrics[k] for k in ("accuracy", "n_test")})
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    target = publish(out, ctx.repo_dir)
    registered = {"name": name, "version": version, "sha256": manifest["sha256"],
                  "accuracy": metrics["accuracy"], "path": str(target)}
    (out / "registered.json").write_text(json.dumps(registered, indent=2))
    return registered


CODE: dict[str, Callable[[dict[str, Path], dict[str, Any], Path, Context], dict[str, Any]]] = {
    "gather": gather, "prep": prep, "train": train, "evaluate": evaluate, "build": build}


def code_hash(step: str) -> str:
    """The hash of a step's own code: editing the function changes its cache key."""
    return hashlib.sha256(inspect.getsource(CODE[step]).encode()).hexdigest()


def digest(path: Path) -> str:
    """A file's sha256, or a folder's: the sha256 of its sorted (name, sha256) pairs."""
    if path.is_file():
        return sha256_file(path)
    listing = [f"{p.relative_to(path).as_posix()}:{sha256_file(p)}"
               for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()


def cache_key(step: str, params: dict[str, Any], input_digests: dict[str, str]) -> str:
    blob = json.dumps({"step": step, "code": code_hash(step), "params": params,
                       "inputs": input_digests}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
