"""T2 integration tests: the orchestrator, five step workers on five queues, Redis, the SQL
state, the model repository and the predictor, observed over HTTP, in Redis and in the DB.

Every test that needs steps to really run reads its own DWH table (a copy of iris.csv under
its own name: a parameter of gather, so a key no other test has made); the test that stops
the prep worker runs last and starts it again.
"""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from patternkit.client import Client, wait_until
from patternkit.db import make_engine
from patternkit.topology import Stack
from training_patterns.pipeline_training import store

STEPS = ["gather", "prep", "train", "evaluate", "build"]


@pytest.fixture
def api(stack: Stack) -> Iterator[Client]:
    with Client(stack.url()) as client:
        yield client


def table(stack: Stack) -> str:
    """A fresh DWH table: iris.csv under a new name, its rows in a new order (so its content,
    and what every step makes of it, differs from every other test's)."""
    dwh = Path(stack.run_dir) / "dwh"
    name = f"t{uuid.uuid4().hex[:8]}.csv"
    header, *rows = (dwh / "iris.csv").read_text().splitlines()
    random.Random(name).shuffle(rows)
    (dwh / name).write_text("\n".join([header, *rows]) + "\n")
    return name


def start(api: Client, **body: Any) -> dict[str, Any]:
    resp = api.post("/runs", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/runs/{resp.json()['run_id']}"
    return dict(resp.json())


def settled(api: Client, run_id: str, timeout: float = 40.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/runs/{run_id}").json()
        return body if body["state"] != store.RUNNING else None

    return wait_until(check, timeout, interval=0.05, what=f"run {run_id} settling")


def run(api: Client, **body: Any) -> dict[str, Any]:
    return settled(api, start(api, **body)["run_id"])


def steps_of(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in view["steps"]}


def test_a_run_completes_and_each_step_reports_its_own_queue_and_worker(
        stack: Stack, api: Client) -> None:
    view = run(api, params={"gather": {"source": table(stack)}})
    assert view["state"] == "succeeded", view["error"]
    assert view["executions"] == dict.fromkeys(STEPS, 1)
    assert view["cache"] == dict.fromkeys(STEPS, "run")
    seen = steps_of(view)
    for name in STEPS:
        step = seen[name]
        assert step["queue"] == name
        assert step["worker"].startswith(f"{name}@"), step["worker"]
        assert step["outputs"]["path"].endswith(f"artifacts/{view['run_id']}/{name}")
        assert step["duration_s"] is not None and step["waited_s"] is not None
    assert len({seen[n]["pid"] for n in STEPS}) == 5  # five processes
    assert seen["gather"]["outputs"]["summary"]["dropped"] == 2  # the two dirty rows
    assert view["model"]["name"] == "iris_pipeline" and view["model"]["accuracy"] >= 0.8
    repo = Path(stack.run_dir) / "repository" / "iris_pipeline" / view["model"]["version"]
    assert (repo / "model.onnx").is_file()


def test_the_predictor_serves_the_model_the_boot_run_built(stack: Stack, api: Client) -> None:
    boot = api.get("/runs", params={"limit": 200}).json()["runs"][-1]
    view = api.get(f"/runs/{boot['run_id']}").json()
    assert view["state"] == "succeeded" and view["model"]["version"] == "1.0.0"
    with Client(stack.url("predictor")) as predictor:
        model = predictor.get("/metadata").json()["model"]
        assert (model["name"], model["version"]) == ("iris_pipeline", "1.0.0")
        assert model["sha256"] == view["model"]["sha256"]
        reply = predictor.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
        assert reply.status_code == 200 and reply.json()["prediction"] == [0]


def test_an_unchanged_run_is_restored_from_the_cache(api: Client) -> None:
    boot_id = api.get("/runs", params={"limit": 200}).json()["runs"][-1]["run_id"]
    boot = steps_of(api.get(f"/runs/{boot_id}").json())
    view = run(api)  # the boot run's parameters and table
    assert view["state"] == "succeeded"
    assert view["cache"] == dict.fromkeys(STEPS, "hit")
    assert view["executions"] == dict.fromkeys(STEPS, 0)
    for name, step in steps_of(view).items():
        assert step["key"] == boot[name]["key"] and step["digest"] == boot[name]["digest"]
        assert step["reason"] == f"key filed by run {boot_id}"
    assert view["model"]["version"] == "1.0.0"  # the same model, not a new version


def test_a_failed_train_is_retried_without_redoing_gather_and_prep(
        stack: Stack, api: Client) -> None:
    view = run(api, params={"gather": {"source": table(stack)}},
               faults={"train": {"fail_times": 1}})
    assert view["state"] == "failed" and view["failed_step"] == "train"
    assert "InjectedFault" in view["error"]
    assert view["executions"] == {"gather": 1, "prep": 1, "train": 1, "evaluate": 0, "build": 0}
    before = steps_of(view)
    assert before["evaluate"]["state"] == before["build"]["state"] == "pending"

    resp = api.post(f"/runs/{view['run_id']}/retry")
    assert resp.status_code == 202, resp.text
    after = settled(api, view["run_id"])
    assert after["state"] == "succeeded" and after["retries"] == 1
    assert after["executions"] == {"gather": 1, "prep": 1, "train": 2, "evaluate": 1, "build": 1}
    steps = steps_of(after)
    for name in ("gather", "prep"):  # finished steps were not sent again
        assert steps[name]["started_ts"] == before[name]["started_ts"]

    handled = api.get(f"/runs/{view['run_id']}/executions").json()["executions"]
    assert [(e["step"], e["outcome"]) for e in handled] == [
        ("gather", "ran"), ("prep", "ran"), ("train", "failed"), ("train", "ran"),
        ("evaluate", "ran"), ("build", "ran")]
    assert {e["queue"] for e in handled if e["step"] == "train"} == {"train"}

    again = api.post(f"/runs/{view['run_id']}/retry")
    assert again.status_code == 409 and again.json()["error"] == "run_not_failed"


def test_evaluate_alone_reruns_on_the_existing_model(stack: Stack, api: Client) -> None:
    view = run(api, params={"gather": {"source": table(stack)}})
    first = steps_of(view)
    resp = api.post(f"/runs/{view['run_id']}/steps/evaluate")
    assert resp.status_code == 202, resp.text
    after = settled(api, view["run_id"])
    assert after["state"] == "succeeded"
    assert after["executions"] == {"gather": 1, "prep": 1, "train": 1, "evaluate": 2, "build": 1}
    steps = steps_of(after)
    assert steps["evaluate"]["cache"] == "run"
    assert steps["evaluate"]["reason"] == "re-run on request"
    assert steps["evaluate"]["inputs"]["train"] == first["train"]["digest"]  # the same model
    assert steps["evaluate"]["digest"] == first["evaluate"]["digest"]  # the same metrics
    for name in ("gather", "prep", "train", "build"):
        assert steps[name]["started_ts"] == first[name]["started_ts"]
    busy = api.post(f"/runs/{view['run_id']}/steps/nope")
    assert busy.status_code == 422


def test_changed_prep_params_rerun_prep_and_downstream_but_reuse_gather(
        stack: Stack, api: Client) -> None:
    source = table(stack)
    first = run(api, params={"gather": {"source": source}})
    changed = run(api, params={"gather": {"source": source}, "prep": {"test_size": 0.25}})
    assert changed["state"] == "succeeded"
    assert changed["cache"] == {"gather": "hit", "prep": "run", "train": "run",
                                "evaluate": "run", "build": "run"}
    assert changed["executions"] == {"gather": 0, "prep": 1, "train": 1, "evaluate": 1,
                                     "build": 1}
    old, new = steps_of(first), steps_of(changed)
    assert new["gather"]["digest"] == old["gather"]["digest"]
    assert new["prep"]["inputs"] == old["prep"]["inputs"] and new["prep"]["key"] != \
        old["prep"]["key"]
    assert new["train"]["inputs"]["prep"] != old["train"]["inputs"]["prep"]
    assert changed["model"]["version"] != first["model"]["version"]


def test_an_always_run_step_is_never_restored_from_the_cache(stack: Stack, api: Client) -> None:
    source = table(stack)
    first = run(api, params={"gather": {"source": source}})
    again = run(api, params={"gather": {"source": source}}, always_run=["gather"])
    assert again["state"] == "succeeded"
    steps = steps_of(again)
    assert steps["gather"]["cache"] == "run" and again["executions"]["gather"] == 1
    assert steps["gather"]["reason"] == "always-run step: never restored"
    assert steps["gather"]["key"] == steps_of(first)["gather"]["key"]  # a hit was there
    # its output came out the same, so what reads it is restored
    assert again["cache"] == {"gather": "run", "prep": "hit", "train": "hit",
                              "evaluate": "hit", "build": "hit"}


def test_an_input_edited_while_the_step_runs_is_detected_and_never_cached(
        stack: Stack, api: Client) -> None:
    source = table(stack)
    path = Path(stack.run_dir) / "dwh" / source
    started = start(api, params={"gather": {"source": source}},
                    faults={"gather": {"delay_ms": 1500}})
    run_id = started["run_id"]

    def gather_running() -> bool:  # and its input digests taken (the key it started from)
        gather = steps_of(api.get(f"/runs/{run_id}").json())["gather"]
        return gather["state"] == "running" and gather["inputs"] is not None

    wait_until(gather_running, 20, interval=0.02, what="gather running on its inputs")
    lines = path.read_text().splitlines()[:101]
    path.write_text("\n".join(lines) + "\n")  # the table loses rows mid-step
    clean = sum(1 for line in lines[1:] if ",," not in line and "n/a" not in line)
    view = settled(api, run_id)
    assert view["state"] == "failed" and view["failed_step"] == "gather"
    assert "input changed while the step ran: source" in view["error"]
    assert "not cached" in view["error"]
    engine = make_engine(stack.url("db"))
    try:
        with engine.connect() as conn:
            filed = conn.execute(sa.select(store.CACHE).where(
                store.CACHE.c.run_id == run_id)).all()
    finally:
        engine.dispose()
    assert filed == []  # nothing of this run went into the cache

    assert api.post(f"/runs/{run_id}/retry").status_code == 202
    after = settled(api, run_id)
    assert after["state"] == "succeeded"
    gathered = steps_of(after)["gather"]
    assert gathered["cache"] == "run" and after["executions"]["gather"] == 2
    assert gathered["outputs"]["summary"]["rows"] == clean  # the edited table
    assert after["cache"] == dict.fromkeys(STEPS, "run")  # a changed input: all downstream


def test_bad_requests_are_named_4xx(api: Client) -> None:
    cases: list[tuple[Any, str]] = [
        ({"params": {"gather": {"source": "missing.csv"}}}, "missing.csv"),
        ({"params": {"prep": {"test_size": 0.9}}}, "test_size"),
        ({"params": {"train": {"kind": "svm"}}}, "kind"),
        ({"faults": {"deploy": {"fail_times": 1}}}, "faults"),
        ({"always_run": ["everything"]}, "always_run"),
        ({"paramz": {}}, "paramz"),
    ]
    for body, named in cases:
        resp = api.post("/runs", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert named in resp.text, (body, resp.text)
    missing = api.get("/runs/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "run_not_found"
    assert api.post("/runs/nope/retry").status_code == 404


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training_patterns.pipeline_training.cli", "--api", stack.url(),
         *args], capture_output=True, text=True, timeout=90)


def test_the_cli_shows_the_same_progress(stack: Stack, api: Client) -> None:
    failed = cli(stack, "run", "--set", f"gather.source={table(stack)}", "--fail", "train")
    assert failed.returncode == 1, failed.stderr
    head = next(line for line in failed.stdout.splitlines() if line.startswith("run "))
    run_id = head.split()[1]
    assert "failed at train: InjectedFault" in head
    assert "train    failed on train by train@" in failed.stdout

    resumed = cli(stack, "retry", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = {line.split()[0]: line.split() for line in resumed.stdout.splitlines()[-5:]}
    view = api.get(f"/runs/{run_id}").json()
    for step in view["steps"]:  # state, cache, worker, queue, ..., executions
        shown = rows[step["step"]]
        assert shown[1:5] == [step["state"], step["cache"], step["worker"], step["queue"]]
        assert int(shown[-1]) == step["executions"]
    assert [int(rows[s][-1]) for s in STEPS] == [1, 1, 2, 1, 1]
    assert cli(stack, "show", "nope").returncode == 2


def test_with_the_prep_worker_stopped_the_run_waits_at_prep(stack: Stack, api: Client) -> None:
    broker = redis.Redis.from_url(stack.url("redis"))
    stack.stop_service("prep")
    try:
        run_id = start(api, params={"gather": {"source": table(stack)}})["run_id"]

        def at_prep() -> dict[str, Any] | None:
            view: dict[str, Any] = api.get(f"/runs/{run_id}").json()
            s = steps_of(view)
            return view if s["gather"]["state"] == "done" and s["prep"]["state"] == "queued" \
                else None

        wait_until(at_prep, 20, what="gather done, prep queued")
        ticks = api.get("/stats").json()["dispatcher_ticks"]
        wait_until(lambda: api.get("/stats").json()["dispatcher_ticks"] >= ticks + 10, 20,
                   what="ten more dispatcher passes")
        view = api.get(f"/runs/{run_id}").json()
        steps = steps_of(view)
        assert view["state"] == "running" and view["current_step"] == "prep"
        assert steps["prep"]["state"] == "queued" and steps["prep"]["worker"] is None
        assert [steps[n]["state"] for n in ("train", "evaluate", "build")] == ["pending"] * 3
        assert view["executions"] == {"gather": 1, "prep": 0, "train": 0, "evaluate": 0,
                                      "build": 0}
        assert broker.llen("prep") == 1  # the message waits in prep's queue
    finally:
        stack.start_service("prep")
        broker.close()
    view = settled(api, run_id)
    assert view["state"] == "succeeded"
    assert view["executions"] == dict.fromkeys(STEPS, 1)
    assert steps_of(view)["prep"]["worker"].startswith("prep@")
