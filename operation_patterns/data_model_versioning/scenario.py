"""Demo traffic for O3: the diagram's path from a first dev version to a release, step by step.

The topology's trainer made `iris_clf 0.0.1-DATA.SPLIT` on the January batch and aliased it
`champion`. The scenario then retrains with another hyper-parameter (Z), with another
interface (petal features only: Y, Z reset), on a new data query (DATA), with another split
(SPLIT), promotes the last one (X 0 -> 1), moves `champion` to the release and restarts the
predictor on its artifact, whose /metadata reports the full version. It ends with what a
dataset version guarantees (same rows, same sha256, disjoint parts), the runs kept per version
and three refusals.
"""

from __future__ import annotations

from typing import Any

from operation_patterns.data_model_versioning.trainer import EVERYTHING, Plan, train_version
from patternkit.client import Client
from patternkit.topology import Stack

PETALS = ["petal_length_cm", "petal_width_cm"]
STEPS: list[tuple[str, Plan]] = [
    ("hyper-parameter C 1.0 -> 0.1", Plan(params={"C": 0.1, "max_iter": 500})),
    ("interface: petal features only", Plan(features=PETALS, params={"C": 0.1, "max_iter": 500})),
    ("data: query all 150 flowers", Plan(query=EVERYTHING, features=PETALS,
                                         params={"C": 0.1, "max_iter": 500})),
    ("split: test_fraction 0.3 -> 0.2", Plan(query=EVERYTHING, features=PETALS,
                                             split={"test_fraction": 0.2, "seed": 0},
                                             params={"C": 0.1, "max_iter": 500})),
]


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    models = stack.run_dir / "models"
    url = stack.url("registry")
    with Client(url) as registry, Client(stack.url("predictor")) as predictor:
        champion = registry.get("/models/iris_clf/aliases/champion").json()
        meta = predictor.get("/metadata").json()
        first_ds = registry.get(f"/datasets/{champion['dataset']}").json()["rows"]
        rows.append({"step": "dev (the topology's trainer)", "changed": champion["changed"],
                     "version": champion["full_version"],
                     "dataset rows": f"{first_ds['train']} train / {first_ds['test']} test",
                     "accuracy": champion["runs"][0]["metrics"]["accuracy"],
                     "note": "alias champion; predictor /metadata: "
                             f"{meta['model']['full_version']}"})
        done: dict[str, Any] = {}
        for i, (what, plan) in enumerate(STEPS):
            done = train_version(url, models / f"step{i + 1}", plan)
            ds = done["dataset"]
            rows.append({"step": what, "changed": done["registered"]["changed"],
                         "version": done["registered"]["full_version"],
                         "dataset rows": f"{ds['rows']['train']} train / {ds['rows']['test']} test",
                         "accuracy": done["accuracy"], "note": f"run {done['run']['run']}"})
        last = STEPS[-1][1]
        release = train_version(url, models / "release", Plan(
            query=last.query, features=last.features, split=last.split, params=last.params,
            promote=True, alias="champion"))
        rows.append({"step": "promote (production)", "changed": release["served"]["changed"],
                     "version": release["served"]["full_version"],
                     "dataset rows": "the same", "accuracy": release["accuracy"],
                     "note": f"champion {release['alias']['previous']} -> "
                             f"{release['alias']['version']}"})

        stack.restart("predictor", env={"MODEL_PATH": str(models / "release")})
        meta = predictor.get("/metadata").json()
        reply = predictor.post("/predict", json={"data": [[1.4, 0.2]]})
        rows.append({"step": "predictor restarted on it", "changed": "-",
                     "version": meta["model"]["full_version"],
                     "dataset rows": meta["model"]["registry"]["dataset"]["version"],
                     "accuracy": meta["model"]["metrics"]["accuracy"],
                     "note": f"X-Model-Version {reply.headers['x-model-version']}, "
                             f"prediction {reply.json()['prediction']}"})

        version = release["dataset"]["version"]
        first, second = (registry.get(f"/datasets/{version}/train").json() for _ in range(2))
        test = registry.get(f"/datasets/{version}/test").json()
        key = first["columns"].index("id")
        overlap = {r[key] for r in first["rows"]} & {r[key] for r in test["rows"]}
        rows.append({"step": f"dataset {version} read twice", "changed": "-",
                     "version": first["table"],
                     "dataset rows": f"{first['n']} = {second['n']} rows",
                     "accuracy": "-",
                     "note": f"sha256 {first['sha256'][:12]} both times "
                             f"({'identical' if first['rows'] == second['rows'] else 'DIFFER'}); "
                             f"train & test share {len(overlap)} ids"})
        runs = registry.get(
            f"/models/iris_clf/versions/{release['registered']['version']}").json()["runs"]
        rows.append({"step": "runs kept per version", "changed": "-",
                     "version": release["registered"]["full_version"],
                     "dataset rows": "-", "accuracy": "-",
                     "note": ", ".join(f"{r['run']} accuracy {r['metrics']['accuracy']}"
                                       for r in runs)})
        for what, method, path, body in [
            ("alias to a missing version", "PUT", "/models/iris_clf/aliases/champion",
             {"version": "9.9.9-00000000.00000000"}),
            ("unknown dataset version", "GET", "/datasets/00000000.00000000", None),
            ("invalid version string", "GET", "/models/iris_clf/versions/1.1", None),
        ]:
            resp = registry.request(method, path, json=body)
            rows.append({"step": f"refused: {what}", "changed": "-",
                         "version": f"{resp.status_code} {resp.json()['error']}",
                         "dataset rows": "-", "accuracy": "-",
                         "note": resp.json()["message"][:90]})
    return rows
