"""TA3 integration tests: the tangled and the clean pipeline over the same three real stores
(a SQLite file, a CSV file, the web API service), observed through the API's reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from antipatterns.too_many_pipes import clean, codepaths, tangled
from patternkit.client import Client
from patternkit.topology import Stack


@pytest.fixture
def api(stack: Stack) -> Iterator[Client]:
    with Client(stack.url(), timeout=60) as client:
        yield client


def run(api: Client, pipeline: str, experiment: bool = False) -> dict[str, Any]:
    resp = api.post("/runs", json={"pipeline": pipeline, "experiment": experiment})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_with_every_store_up_both_pipelines_build_three_models(stack: Stack,
                                                               api: Client) -> None:
    for pipeline in ("tangled", "clean"):
        report = run(api, pipeline)
        assert report["state"] == "succeeded", report["failed_steps"]
        assert report["steps_executed"] == 15
        assert report["jobs"] == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    repo = Path(stack.run_dir) / "repository"
    for name in ("pipes_a", "pipes_b", "pipes_c"):
        assert sorted(p.name for p in (repo / name).iterdir()) == ["1.0.0", "1.0.1"]
        assert (repo / name / "1.0.1" / "model.onnx").is_file()


def test_a_cycle_is_refused_before_any_step_in_clean_but_fails_partway_in_tangled(
        stack: Stack, api: Client) -> None:
    artifacts = Path(stack.run_dir) / "artifacts"
    before = set(artifacts.glob("clean-*")) if artifacts.is_dir() else set()
    refused = api.post("/runs", json={"pipeline": "clean", "experiment": True})
    assert refused.status_code == 422
    body = refused.json()
    assert body["error"] == "dag_invalid"
    assert "cycle: train_b -> train_c -> evaluate_c -> train_b" in body["message"]
    assert body["details"][0]["steps_executed"] == 0
    assert (set(artifacts.glob("clean-*")) if artifacts.is_dir() else set()) == before

    report = run(api, "tangled", experiment=True)
    assert report["state"] == "failed"
    assert 0 < report["steps_executed"] < 15  # job A and half of B ran: wasted, then it broke
    assert report["jobs"]["a"] == "succeeded"
    assert report["failed_steps"] == ["train_b", "train_c"]
    assert "c/evaluate/metrics.json" in report["steps"][7]["error"]


@pytest.mark.parametrize(("store", "tangled_fails", "clean_fails"), [
    ("webapi", 3, 1), ("sqlite", 2, 1)])
def test_one_broken_store_fails_more_jobs_tangled_than_clean(
        stack: Stack, api: Client, store: str, tangled_fails: int, clean_fails: int) -> None:
    db = Path(stack.run_dir) / "stores" / "iris.db"
    aside = db.with_suffix(".aside")
    if store == "webapi":
        stack.stop_service("webapi")
    else:
        db.rename(aside)
    try:
        messy, tidy = run(api, "tangled"), run(api, "clean")
    finally:
        if store == "webapi":
            stack.start_service("webapi")
        else:
            db.unlink(missing_ok=True)  # the tangled reader's sqlite3.connect made an empty one
            aside.rename(db)
    assert messy["broken_stores"] == tidy["broken_stores"] == [store]
    assert messy["jobs_failed"] == tangled_fails
    assert tidy["jobs_failed"] == clean_fails
    broken_job = {"webapi": "a", "sqlite": "b"}[store]
    assert [j for j, s in tidy["jobs"].items() if s == "failed"] == [broken_job]
    assert tidy["failed_steps"] == [f"gather_{broken_job}"]  # the rest of its branch skipped
    assert f"source {store}" in tidy["steps"][[s["name"] for s in tidy["steps"]].index(
        f"gather_{broken_job}")]["error"]
    # nothing in tangled's errors names the store; the walk back ends at its gather step
    assert not any(store in (s["error"] or "") for s in messy["steps"])
    assert tidy["steps_to_find"]["steps"] == 1
    assert messy["steps_to_find"]["steps"] > tidy["steps_to_find"]["steps"]
    assert messy["steps_to_find"]["root"] == tidy["steps_to_find"]["root"] == \
        f"gather_{broken_job}"


def test_three_data_access_code_paths_in_tangled_one_in_clean(api: Client) -> None:
    body = api.get("/code-paths").json()
    assert body["tangled"]["count"] == 3
    assert body["tangled"]["paths"] == ["fetch_petals_from_api", "read_sepals_from_sqlite",
                                        "read_csv_rows"]
    assert body["clean"]["count"] == 1 and body["clean"]["paths"] == ["datasource.open_source"]
    assert codepaths.data_access_paths(tangled)["count"] == 3  # the same count, from the code
    assert codepaths.data_access_paths(clean)["own"] == []


def test_bad_requests_are_named_4xx(api: Client) -> None:
    for body, named in (({"pipeline": "spaghetti"}, "pipeline"), ({}, "pipeline"),
                        ({"pipeline": "clean", "fast": True}, "fast")):
        resp = api.post("/runs", json=body)
        assert resp.status_code == 422 and named in resp.text, resp.text
