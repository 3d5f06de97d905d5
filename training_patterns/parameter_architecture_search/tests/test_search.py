"""T3 integration tests: the real search API, two worker processes, Optuna's SQL storage and
the template predictor serving the registered best, over HTTP and the registry table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patternkit.client import Client, wait_until
from patternkit.models import sha256_file
from patternkit.topology import Stack
from training_patterns.parameter_architecture_search.space import split

DONE = ("succeeded", "failed")


@pytest.fixture
def api(stack: Stack) -> Any:
    with Client(stack.url()) as client:
        yield client


def search(api: Client, timeout: float = 150.0, **request: Any) -> dict[str, Any]:
    """Start a search and wait for it to end; returns GET /searches/{id}."""
    resp = api.post("/searches", json=request)
    assert resp.status_code == 202, resp.text
    url = resp.headers["location"]
    assert url == resp.json()["search_url"]

    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(url).json()
        return body if body["status"] in DONE else None

    return wait_until(check, timeout, interval=0.1, what=f"search {url}")


def boot_search(stack: Stack, api: Client) -> dict[str, Any]:
    """The boot search, found from the manifest the predictor serves."""
    with Client(stack.url("predictor")) as predictor:
        manifest = predictor.get("/metadata").json()["model"]
    body: dict[str, Any] = api.get(f"/searches/{manifest['search_id']}").json()
    return body


def test_trials_ran_in_two_processes_and_max_trials_is_exact(stack: Stack, api: Client) -> None:
    boot = boot_search(stack, api)
    assert boot["status"] == "succeeded" and boot["stop_reason"] == "max_trials"
    trials = boot["trials"]
    assert sum(boot["states"].get(s, 0) for s in ("COMPLETE", "PRUNED")) == 8
    assert len(trials) == 8 and boot["states"].get("FAIL", 0) == 0
    assert len({t["pid"] for t in trials}) >= 2, [t["pid"] for t in trials]
    assert set(boot["workers"]) == {"worker-1", "worker-2"}
    assert sorted(t["slot"] for t in trials) == list(range(8))


def test_a_pruner_prunes_trials_whose_fold_scores_lag(api: Client) -> None:
    # logistic regression with C down to 1e-4 underfits badly: those trials lag at fold 1
    body = search(api, space="logreg", strategy="random", pruner="halving", max_trials=9,
                  time_budget_s=120, seed=5)
    assert body["status"] == "succeeded", body["error"]
    states = body["states"]
    assert states.get("PRUNED", 0) > 0, states
    assert states.get("COMPLETE", 0) + states["PRUNED"] == 9
    for t in body["trials"]:
        steps = [int(s) for s in t["intermediate"]]
        if t["state"] == "PRUNED":
            assert 1 <= len(steps) < 3  # stopped before the last fold, at its last report
            assert t["value"] == t["intermediate"][str(steps[-1])]
        else:
            assert steps == [1, 2, 3]


def test_the_time_budget_stops_the_search_after_at_most_one_more_trial(api: Client) -> None:
    body = search(api, space="logreg", strategy="tpe", pruner="none", max_trials=500,
                  time_budget_s=3.0, seed=1)
    assert body["status"] == "succeeded" and body["stop_reason"] == "time"
    trials = body["trials"]
    assert 1 <= len(trials) < 500
    longest = max(t["duration_s"] for t in trials)
    assert all(t["claimed_at"] < body["deadline"] for t in trials)  # none taken after it
    assert max(t["completed"] for t in trials) <= body["deadline"] + longest + 0.5


def test_the_registered_model_is_the_best_trial_and_the_predictor_reproduces_its_metric(
    stack: Stack, api: Client
) -> None:
    boot = boot_search(stack, api)
    best, model = boot["best"], boot["model"]
    assert model["params"] == best["params"] and model["trial_number"] == best["number"]
    assert model["cv_accuracy"] == best["value"]
    assert best["value"] == max(t["value"] for t in boot["trials"] if t["state"] == "COMPLETE")
    served = Path(stack.run_dir) / "models/best/model.onnx"
    assert sha256_file(served) == model["sha256"]

    _, X_test, _, y_test, _, _ = split()
    with Client(stack.url("predictor")) as predictor:
        resp = predictor.post("/predict", json={"data": X_test.tolist()})
        assert resp.status_code == 200, resp.text
        reply = resp.json()
    assert reply["version"] == model["version"]
    accuracy = float(np.mean(np.asarray(reply["prediction"]) == y_test))
    assert accuracy == model["test_accuracy"] and len(y_test) == model["n_test"]


def test_the_same_seed_proposes_the_same_points_and_the_same_best(api: Client) -> None:
    request: dict[str, Any] = {"space": "logreg", "strategy": "random", "pruner": "none",
                               "max_trials": 4, "time_budget_s": 120, "seed": 3}
    first, second = search(api, **request), search(api, **request)

    def by_slot(body: dict[str, Any]) -> list[dict[str, Any]]:
        return [t["params"] for t in sorted(body["trials"], key=lambda t: t["slot"])]

    assert by_slot(first) == by_slot(second)
    assert first["best"]["params"] == second["best"]["params"]
    assert first["model"]["test_accuracy"] == second["model"]["test_accuracy"]


def test_bad_requests_are_named_errors(api: Client) -> None:
    resp = api.post("/searches", json={"space": "resnet"})
    assert resp.status_code == 422 and "space" in resp.text
    resp = api.post("/searches", json={"max_trials": 0})
    assert resp.status_code == 422 and "max_trials" in resp.text
    resp = api.get("/searches/nope")
    assert resp.status_code == 404 and resp.json()["error"] == "search_not_found"


def test_the_demo_draws_optunas_history_and_importances(
    stack: Stack, api: Client, tmp_path: Path
) -> None:
    from patternkit.testing import check_picture
    from training_patterns.parameter_architecture_search.scenario import draw

    boot_id = boot_search(stack, api)["search_id"]
    saved = draw(stack.url("db"), boot_id, boot_id, tmp_path)
    assert [p.name for p in saved] == ["search_history.png", "param_importances.png"]
    for path in saved:
        check_picture(path)


def test_a_worker_killed_mid_trial_fails_that_trial_and_the_search_still_ends(
    stack: Stack, api: Client
) -> None:
    resp = api.post("/searches", json={"space": "mlp", "strategy": "random", "max_trials": 8,
                                       "time_budget_s": 120, "seed": 11})
    assert resp.status_code == 202, resp.text
    url = resp.headers["location"]

    def frozen_mid_trial() -> dict[str, Any] | None:
        """A trial of worker-2 that is still running once worker-2 is frozen (SIGSTOP)."""
        running = [t for t in api.get(url).json()["trials"]
                   if t["state"] == "RUNNING" and t["worker"] == "worker-2"]
        if not running:
            return None
        stack.pause("worker-2")
        now = {t["number"]: t for t in api.get(url).json()["trials"]}
        if now[running[0]["number"]]["state"] == "RUNNING":
            return running[0]
        stack.resume("worker-2")  # it finished just before the freeze: wait for another
        return None

    try:
        victim = wait_until(frozen_mid_trial, 60, interval=0.05, what="a trial on worker-2")
        stack.kill("worker-2")  # dies mid-trial: no heartbeat, and its slot is never done
        body = wait_until(lambda: (b := api.get(url).json())["status"] in DONE and b, 90,
                          interval=0.2, what="the search to end without worker-2")
    finally:
        stack.start_service("worker-2")
    assert body["status"] == "succeeded", body.get("error")
    states = {t["number"]: t["state"] for t in body["trials"]}
    assert states[victim["number"]] == "FAIL"  # failed by the stale-heartbeat check
    assert len(states) == 8 and set(states.values()) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert body["model"] is not None and body["model"]["trial_number"] != victim["number"]
