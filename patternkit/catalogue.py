"""The whole pattern catalogue, built or not, for `python -m patternkit list` and the README.

A pattern counts as built when its folder holds a topology.toml; everything else is planned.
"""

from __future__ import annotations

from pathlib import Path

# (id, folder, title)
CATALOGUE: list[tuple[str, str, str]] = [
    ("S1", "serving_patterns/web_single", "Web single"),
    ("S2", "serving_patterns/synchronous", "Synchronous"),
    ("S3", "serving_patterns/asynchronous", "Asynchronous"),
    ("S4", "serving_patterns/batch", "Batch"),
    ("S5", "serving_patterns/prep_pred", "Prep-pred"),
    ("S6", "serving_patterns/microservice_vertical", "Microservice vertical"),
    ("S7", "serving_patterns/microservice_horizontal", "Microservice horizontal"),
    ("S8", "serving_patterns/prediction_cache", "Prediction cache"),
    ("S9", "serving_patterns/data_cache", "Data cache"),
    ("S10", "serving_patterns/prediction_circuit_break", "Prediction circuit break"),
    ("S11", "serving_patterns/multiple_stage_prediction", "Multiple stage prediction"),
    ("S12", "serving_patterns/serving_template", "Serving template"),
    ("S13", "serving_patterns/edge_prediction", "Edge prediction"),
    ("SA1", "antipatterns/online_bigsize", "Online bigsize (antipattern)"),
    ("SA2", "antipatterns/all_in_one", "All-in-one (antipattern)"),
    ("Q1", "qa_patterns/shadow_ab_test", "Shadow AB test"),
    ("Q2", "qa_patterns/online_ab_test", "Online AB test"),
    ("Q3", "qa_patterns/loading_test", "Loading test"),
    ("QA1", "antipatterns/offline_only", "Offline-only (antipattern)"),
    ("T1", "training_patterns/batch_training", "Batch training"),
    ("T2", "training_patterns/pipeline_training", "Pipeline training"),
    ("T3", "training_patterns/parameter_architecture_search", "Parameter and architecture search"),
    ("TA1", "antipatterns/only_me", "Only-me (antipattern)"),
    ("TA2", "antipatterns/training_code_in_serving", "Training code in serving (antipattern)"),
    ("TA3", "antipatterns/too_many_pipes", "Too many pipes (antipattern)"),
    ("O1", "operation_patterns/model_in_image", "Model-in-image"),
    ("O2", "operation_patterns/model_load", "Model-load"),
    ("O3", "operation_patterns/data_model_versioning", "Data model versioning"),
    ("O4", "operation_patterns/prediction_log", "Prediction log"),
    ("O5", "operation_patterns/prediction_monitoring", "Prediction monitoring"),
    ("O6", "operation_patterns/parameter_based_serving", "Parameter-based serving"),
    ("O7", "operation_patterns/condition_based_serving", "Condition-based serving"),
    ("OA1", "antipatterns/no_logging", "No logging (antipattern)"),
    ("OA2", "antipatterns/nobody_knows", "Nobody knows (antipattern)"),
    ("L1", "lifecycle_patterns/train_then_serve", "Train-then-serve"),
    ("L2", "lifecycle_patterns/training_to_serving", "Training-to-serving"),
    ("LA1", "antipatterns/no_way_back", "No way back (antipattern)"),
]


# The roles a pattern's processes play: a module that a topology starts is named after its
# role (`proxy.py`), or `<what>_<role>.py` where a pattern has two of a kind
# (`fragile_predictor.py`). The same names in every pattern, so a reader knows a module by it.
ROLES: dict[str, str] = {
    "predictor": "serves a model's predictions over HTTP",
    "server": "a model server built from a configuration (serving template)",
    "proxy": "the entry in front of backends: balances, chains, fans out, caches or guards",
    "balancer": "spreads calls over the replicas of one service, call by call (round robin)",
    "router": "sends each request to the service of the model it names",
    "api": "takes work (jobs, rows) and answers with ids; serves the results",
    "orchestrator": "sends a pipeline's steps to their queues in order; retries, resumes runs",
    "webapp": "a user-facing application that calls a predictor on the request path",
    "worker": "a Celery worker running queued jobs",
    "scheduler": "starts jobs on a schedule",
    "trainer": "trains a model and exports it (ONNX), once",
    "seed": "loads the pattern's demo data, once",
    "warmup": "fills a cache before traffic arrives",
    "dwh": "the data warehouse the pattern reads features from",
    "source": "a data store a training pipeline reads (a fake web API)",
    "retrieve": "the stage that fetches stored features (prep-pred)",
    "prep": "the stage that turns raw rows into model inputs (prep-pred)",
    "pred": "the stage that runs the model on prepared inputs (prep-pred)",
    "distribution": "hands out models and their manifests to edge devices",
    "repository": "stores versioned models and serves them to the servers that load them",
    "registry": "keeps versions of datasets and models and resolves aliases to them",
    "builder": "packs a trained model with its server into an immutable bundle (an image)",
    "monolith": "every model in one process (the all-in-one antipattern)",
    "simulator": "seeded simulated users: their requests and their conversions (demos, tests)",
    "monitor": "evaluates rules over windows of the prediction log and posts alerts",
    "sink": "receives alerts (a webhook receiver) and lists them",
    "consumer": "reads a queue or stream (a consumer group) and writes what it reads to a store",
    "controller": "closes a loop: takes alerts, starts training, gates, deploys, canaries, retires",
}


def role_of(module: str) -> str | None:
    """The role a process module's name declares, or None when it declares none."""
    name = module.rsplit(".", 1)[-1]
    if name in ROLES:
        return name
    suffix = name.rsplit("_", 1)[-1]
    return suffix if "_" in name and suffix in ROLES else None


def position(folder: Path, root: Path) -> int:
    """Where a pattern folder stands in the catalogue (its order in the public catalogue)."""
    rel = folder.resolve().relative_to(root.resolve()).as_posix()
    order = [f for _, f, _ in CATALOGUE]
    return order.index(rel) if rel in order else len(order)


def rows(root: Path) -> list[dict[str, str]]:
    return [
        {
            "id": pid,
            "pattern": folder,
            "title": title,
            "status": "built" if (root / folder / "topology.toml").is_file() else "planned",
        }
        for pid, folder, title in CATALOGUE
    ]


START = "<!-- catalogue: rendered by `make render` -->"
END = "<!-- /catalogue -->"


def readme_table(root: Path) -> str:
    lines = ["| id | pattern | status |", "| --- | --- | --- |"]
    for row in rows(root):
        name = f"[{row['title']}]({row['pattern']})" if row["status"] == "built" else row["title"]
        lines.append(f"| {row['id']} | {name} | {row['status']} |")
    return "\n".join(lines)


def render_readme(text: str, root: Path) -> str:
    """The README text with the catalogue table between its markers brought up to date."""
    head, found, rest = text.partition(START)
    if not found or END not in rest:
        raise ValueError("README.md lacks the catalogue markers")
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{readme_table(root)}\n{END}{tail}"
