"""The trainer of O3: registers a dataset and a model version with the registry, trains on the
dataset version's stored rows, records the evaluation run and writes the artifact, whose
manifest carries the full version (`name X.Y.Z-DATA.SPLIT`) that the predictor reports.

The topology runs it once: `iris_clf` on the January batch of the DWH, as `0.0.1-DATA.SPLIT`,
aliased `champion`. The scenario and the tests call `train_version` for the later steps (a
hyper-parameter change, an interface change, a new dataset, a promotion). The train and test
rows are fetched from the registry and checked against the sha256 it stored, so a model is
trained on exactly the rows its version names.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

from operation_patterns.data_model_versioning.tables import DWH_IRIS, FEATURES
from patternkit.client import Client
from patternkit.models import sha256_file, write_artifact

JANUARY = (f"SELECT id, {', '.join(FEATURES)}, species, label FROM {DWH_IRIS.name} "
           "WHERE collected_on < '2024-02-01'")
EVERYTHING = f"SELECT id, {', '.join(FEATURES)}, species, label FROM {DWH_IRIS.name}"
LABEL = "label"
ALGORITHMS = ("logistic_regression", "random_forest")


class RegistryError(RuntimeError):
    """The registry refused a call: its status and JSON error."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"registry answered {status}: {body}")
        self.status = status
        self.body = body


def call(client: Client, method: str, path: str, body: object = None) -> dict[str, Any]:
    resp = client.request(method, path, json=body) if body is not None else client.request(
        method, path)
    if resp.status_code >= 400:
        raise RegistryError(resp.status_code, resp.json())
    found: dict[str, Any] = resp.json()
    return found


def code_version() -> str:
    """The training code's version: this module's sha256 (a commit in a real repository)."""
    return f"sha256:{sha256_file(Path(__file__))[:12]}"


def interface(features: list[str], n_classes: int = 3) -> dict[str, Any]:
    return {"inputs": [{"name": f, "dtype": "float32"} for f in features],
            "outputs": [{"name": "label", "dtype": "int64"},
                        {"name": "probabilities", "dtype": "float32", "shape": [-1, n_classes]}]}


@dataclass
class Plan:
    """What one training run registers: model, data, split, interface and logic."""

    name: str = "iris_clf"
    query: str = JANUARY
    split: dict[str, Any] = field(default_factory=lambda: {"test_fraction": 0.3, "seed": 0})
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    algorithm: str = "logistic_regression"
    params: dict[str, Any] = field(default_factory=lambda: {"C": 1.0, "max_iter": 500})
    promote: bool = False
    alias: str | None = None


def estimator(algorithm: str, params: dict[str, Any]) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    model = (LogisticRegression(random_state=0, **params) if algorithm == "logistic_regression"
             else RandomForestClassifier(random_state=0, **params))
    return Pipeline([("scaler", StandardScaler()), ("clf", model)])


def fetch(client: Client, dataset: dict[str, Any], part: str) -> dict[str, Any]:
    got = call(client, "GET", f"/datasets/{dataset['version']}/{part}")
    if got["sha256"] != dataset["sha256"][part]:
        raise RuntimeError(f"dataset {dataset['version']} {part}: sha256 {got['sha256']} is not "
                           f"the registered {dataset['sha256'][part]}")
    return got


def as_xy(part: dict[str, Any], features: list[str]) -> tuple[Any, Any]:
    import numpy as np

    at = [part["columns"].index(f) for f in features]
    label = part["columns"].index(LABEL)
    X = np.asarray([[row[i] for i in at] for row in part["rows"]], dtype=np.float32)
    y = np.asarray([row[label] for row in part["rows"]], dtype=np.int64)
    return X, y


def class_names(part: dict[str, Any]) -> list[str]:
    cols = part["columns"]
    if "species" not in cols:
        return sorted({str(r[cols.index(LABEL)]) for r in part["rows"]})
    names = {r[cols.index(LABEL)]: r[cols.index("species")] for r in part["rows"]}
    return [str(names[k]) for k in sorted(names)]


def train_version(registry_url: str, out: str | Path, plan: Plan) -> dict[str, Any]:
    """Register `plan`'s dataset and model version, train and evaluate it, write the artifact
    to `out`; returns what happened (versions, run, metrics, the artifact's manifest)."""
    from sklearn.metrics import accuracy_score

    with Client(registry_url, timeout=60) as registry:
        dataset = call(registry, "POST", "/datasets", {"query": plan.query, "split": plan.split})
        library = f"scikit-learn=={pkg_version('scikit-learn')}"
        registered = call(registry, "POST", "/models", {
            "name": plan.name, "interface": interface(plan.features), "algorithm": plan.algorithm,
            "library": library, "params": plan.params, "code": code_version(),
            "dataset": dataset["version"]})
        train, test = fetch(registry, dataset, "train"), fetch(registry, dataset, "test")
        X_train, y_train = as_xy(train, plan.features)
        X_test, y_test = as_xy(test, plan.features)
        pipeline = estimator(plan.algorithm, plan.params).fit(X_train, y_train)
        accuracy = round(float(accuracy_score(y_test, pipeline.predict(X_test))), 4)
        served = registered
        if plan.promote and not registered["released"]:  # an identical build may be released
            served = call(registry, "POST",
                          f"/models/{plan.name}/versions/{registered['version']}/promote")
        manifest = write_artifact(
            pipeline, out, name=plan.name, version=served["version"], features=plan.features,
            classes=class_names(train),
            metrics={"accuracy": accuracy, "n_train": len(y_train), "n_test": len(y_test)},
            extra={"full_version": served["full_version"], "registry": {
                "url": registry_url, "released": served["released"],
                "trained_as": registered["version"],
                "dataset": {k: dataset[k] for k in ("version", "query", "split_settings",
                                                    "tables", "rows", "sha256")},
                "interface": registered["interface"], "logic": registered["logic"]}},
        )
        run = call(registry, "POST", f"/models/{plan.name}/versions/{registered['version']}/runs",
                   {"metrics": {"accuracy": accuracy}, "params": plan.params,
                    "artifact_sha256": manifest["sha256"]})
        alias = None
        if plan.alias:
            alias = call(registry, "PUT", f"/models/{plan.name}/aliases/{plan.alias}",
                         {"version": served["version"]})
    return {"dataset": dataset, "registered": registered, "served": served, "run": run,
            "accuracy": accuracy, "alias": alias, "manifest": manifest, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operation_patterns.data_model_versioning."
                                     "trainer", description=__doc__)
    parser.add_argument("--registry", required=True, help="the registry's URL")
    parser.add_argument("--out", type=Path, required=True, help="where the artifact goes")
    parser.add_argument("--name", default="iris_clf")
    parser.add_argument("--query", default=JANUARY, help="the dataset query over the DWH")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0, help="the split's seed")
    parser.add_argument("--features", default=",".join(FEATURES))
    parser.add_argument("--algorithm", default="logistic_regression", choices=ALGORITHMS)
    parser.add_argument("--params", default='{"C": 1.0, "max_iter": 500}', type=json.loads)
    parser.add_argument("--promote", action="store_true", help="release the trained version")
    parser.add_argument("--alias", default=None, help="point this alias at the version")
    args = parser.parse_args(argv)
    plan = Plan(name=args.name, query=args.query,
                split={"test_fraction": args.test_fraction, "seed": args.seed},
                features=args.features.split(","), algorithm=args.algorithm, params=args.params,
                promote=args.promote, alias=args.alias)
    try:
        done = train_version(args.registry, args.out, plan)
    except RegistryError as exc:
        print(f"refused: {exc}", file=sys.stderr, flush=True)
        return 1
    ds = done["dataset"]
    print(f"dataset {ds['version']}: {ds['rows']['train']} train / {ds['rows']['test']} test rows "
          f"({'new' if ds['created'] else 'existing'}), train sha256 {ds['sha256']['train'][:12]}",
          flush=True)
    print(f"trained {done['served']['full_version']} ({done['registered']['changed']}): accuracy "
          f"{done['accuracy']}, run {done['run']['run']}"
          + (f", alias {plan.alias}" if plan.alias else "") + f" -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
