"""TA3's clean pipeline: the same three jobs, declared as data and read through one interface.

`declaration(experiment)` lists every step with its kind, its job, its store (gather only)
and its upstream steps; `patternkit.dag.Dag.declare` (T2's declaration) refuses a cycle or a
missing upstream before any step runs. Each job reads only what it declares: its own store,
through `datasource.open_source(...).read()`, and its own upstream folders. A step whose
upstream failed is skipped, naming it, so a broken store fails its branch and nothing else.
The tuning experiment, declared honestly, is a cycle (train_b <- evaluate_c <- train_c <-
train_b) and is refused as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from antipatterns.too_many_pipes import ml
from antipatterns.too_many_pipes.datasource import SourceError, open_source
from antipatterns.too_many_pipes.runlog import DONE, RunLog
from patternkit.dag import Dag, Step

JOB_STORES = {"a": "webapi", "b": "sqlite", "c": "csv"}
KINDS = ("gather", "prep", "train", "evaluate", "build")


def declaration(experiment: bool = False) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for job, store in JOB_STORES.items():
        steps += [
            {"step": f"gather_{job}", "job": job, "kind": "gather", "store": store,
             "upstream": []},
            {"step": f"prep_{job}", "job": job, "kind": "prep", "upstream": [f"gather_{job}"]},
            {"step": f"train_{job}", "job": job, "kind": "train", "upstream": [f"prep_{job}"]},
            {"step": f"evaluate_{job}", "job": job, "kind": "evaluate",
             "upstream": [f"train_{job}", f"prep_{job}"]},
            {"step": f"build_{job}", "job": job, "kind": "build",
             "upstream": [f"train_{job}", f"prep_{job}", f"evaluate_{job}"]},
        ]
    if experiment:  # B tunes on C's evaluation, C warm-starts from B's model
        by_name = {s["step"]: s for s in steps}
        by_name["train_b"]["upstream"].append("evaluate_c")
        by_name["train_c"]["upstream"].append("train_b")
    return steps


def validate(steps: list[dict[str, Any]]) -> Dag:
    """The declaration as a DAG, or a DagError naming the cycle or the missing upstream."""
    return Dag.declare(Step(s["step"], tuple(s["upstream"])) for s in steps)


def run_step(spec: dict[str, Any], cfg: dict[str, Any], art: Path) -> None:
    job, kind = spec["job"], spec["kind"]
    here = art / job
    if kind == "gather":
        store = spec["store"]
        source = open_source(store, cfg["stores"][store], token=cfg["webapi_token"])
        ml.gather(source.read(), here / "gather")
    elif kind == "prep":
        ml.prep(here / "gather", here / "prep")
    elif kind == "train":
        ml.train(here / "prep", here / "train")
    elif kind == "evaluate":
        ml.evaluate(here / "train", here / "prep", here / "evaluate")
    else:
        ml.build(f"pipes_{job}", here / "train", here / "prep", here / "evaluate",
                 here / "build", Path(cfg["repo_dir"]))


def run(cfg: dict[str, Any], art: Path) -> dict[str, Any]:
    steps = declaration(cfg["experiment"])
    log = RunLog("clean")
    dag = validate(steps)  # raises before anything runs
    specs = {s["step"]: s for s in steps}
    state: dict[str, str] = {}
    for name in dag.order:
        spec = specs[name]
        bad = [u for u in dag.upstream(name) if state.get(u) != DONE]
        if bad:
            log.skipped(spec["job"], spec["kind"], f"upstream not done: {', '.join(bad)}")
            state[name] = "skipped"
            continue
        try:
            with log.step(spec["job"], spec["kind"]):
                run_step(spec, cfg, art)
                if spec["kind"] == "gather":
                    log.touch(spec["store"], True)
            state[name] = DONE
        except SourceError as exc:
            log.steps[-1].touched[exc.source] = False
            state[name] = "failed"
        except Exception:  # the step failed; its branch is skipped, the others go on
            state[name] = "failed"
    return log.report(rejected=None, declaration=json.loads(json.dumps(steps)))
