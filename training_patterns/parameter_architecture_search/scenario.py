"""Demo traffic for T3: the boot search, the model it registered and serves, an MLP
architecture search, and the two pictures Optuna draws of them.

It reads the boot search (a conditional families search) back from the API, checks the
predictor's held-out accuracy against the registry's record, runs an architecture search
(hidden layers and widths) with successive halving, then writes the optimisation history and
the parameter importances (`optuna.visualization.matplotlib`, Agg) into the run directory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from patternkit import charts
from patternkit.client import Client, wait_until
from patternkit.topology import Stack
from training_patterns.parameter_architecture_search import store
from training_patterns.parameter_architecture_search.space import split

log = logging.getLogger("search.scenario")
ARCHITECTURE = {"space": "mlp", "strategy": "tpe", "pruner": "halving", "max_trials": 10,
                "time_budget_s": 90, "seed": 1}


def summary(step: str, body: dict[str, Any]) -> dict[str, Any]:
    best, model = body["best"] or {}, body["model"] or {}
    return {
        "step": step,
        "status": body["status"],
        "stop": body["stop_reason"],
        "trials": len(body["trials"]),
        "states": body["states"],
        "workers": ",".join(body["workers"]),
        "pids": len({t["pid"] for t in body["trials"]}),
        "best_trial": best.get("number"),
        "best_params": best.get("params"),
        "cv_acc": round(best.get("value") or 0, 4),
        "test_acc": model.get("test_accuracy"),
        "took_s": body["took_s"],
    }


def finished(client: Client, search_id: str, timeout: float = 180) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/searches/{search_id}").json()
        return body if body["status"] in (store.SUCCEEDED, store.FAILED) else None

    return wait_until(check, timeout, interval=0.2, what=f"search {search_id}")


def draw(db_url: str, history_id: str, importance_id: str, out: Path) -> list[Path]:
    """Optuna's own plots of two studies, saved as PNGs under `out`."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    charts.pyplot()  # Agg, before Optuna imports pyplot
    storage = store.storage(db_url)
    saved: list[Path] = []

    def history() -> Any:
        study = optuna.load_study(study_name=store.study_name(history_id), storage=storage)
        ax = ovm.plot_optimization_history(study)
        ax.set_title("boot search (families): accuracy per trial, best so far")
        fig: Any = ax.figure
        fig.set_size_inches(9, 5)
        return fig

    def importances() -> Any:
        study = optuna.load_study(study_name=store.study_name(importance_id), storage=storage)
        ax = ovm.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        ax.set_title("MLP architecture search: parameter importances (fANOVA)", loc="left")
        fig: Any = ax.figure
        fig.set_size_inches(9, 5)
        return fig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is experimental
        for name, make in (("search_history.png", history), ("param_importances.png",
                                                              importances)):
            path = charts.picture(out / name, make)
            if path is not None:
                saved.append(path)
    return saved


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    out = out or Path(stack.run_dir)
    rows: list[dict[str, Any]] = []
    with Client(stack.url("predictor")) as predictor, Client(stack.url()) as api:
        manifest = predictor.get("/metadata").json()["model"]
        boot = api.get(f"/searches/{manifest['search_id']}").json()
        rows.append(summary("boot search (families, served)", boot))

        _, X_test, _, y_test, _, _ = split()
        reply = predictor.post("/predict", json={"data": X_test.tolist()}).json()
        served = float(np.mean(np.asarray(reply["prediction"]) == y_test))
        rows.append({"step": "predictor on the held-out rows", "model": reply["model"],
                     "version": reply["version"], "accuracy": served,
                     "recorded": boot["model"]["test_accuracy"],
                     "equal": served == boot["model"]["test_accuracy"]})

        started = api.post("/searches", json=ARCHITECTURE).json()
        arch = finished(api, started["search_id"])
        rows.append(summary("MLP architecture search", arch))
    for path in draw(stack.url("db"), boot["search_id"], arch["search_id"], out):
        rows.append({"step": "picture", "path": str(path)})
    return rows
