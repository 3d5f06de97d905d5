"""TA1 integration tests: T1's train.py and the notebook side by side, the registry's rebuild
over HTTP, the real model repository and the template predictor loading from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from patternkit.client import Client
from patternkit.db import make_engine
from patternkit.model_repository import publish
from patternkit.topology import Stack
from training_patterns.batch_training import dwh


@pytest.fixture
def api(stack: Stack) -> Iterator[Client]:
    with Client(stack.url(), timeout=60) as client:
        yield client


def notebook_accuracy(stack: Stack, entropy: int, out: Path, defaults: str = "") -> float:
    """One run of the notebook, as its author runs it (a fresh process), with the split that
    run happens to draw (NOTEBOOK_ENTROPY), on this machine or an unpinned one."""
    env = {**os.environ, "NOTEBOOK_ENTROPY": str(entropy), "NOTEBOOK_OUT": str(out),
           "NOTEBOOK_SKLEARN_DEFAULTS": defaults}
    done = subprocess.run([sys.executable, "-m", "antipatterns.only_me.notebook_style"],
                          env=env, cwd=stack.project, capture_output=True, text=True,
                          timeout=60, check=True)
    found = re.search(r"accuracy: ([0-9.]+)", done.stdout)
    assert found, done.stdout
    assert (out / "model_final_v2.pkl").is_file() and not (out / "manifest.json").exists()
    return float(found.group(1))


def test_a_rebuild_reproduces_the_t1_model_exactly(api: Client) -> None:
    first = api.post("/models/1.0.0/rebuild")
    assert first.status_code == 200, first.text
    body: dict[str, Any] = first.json()
    assert body["reproduced"] is True, body
    assert body["metrics"]["rebuilt"] == body["metrics"]["registered"]
    assert body["metrics"]["rebuilt"]["accuracy"] >= 0.9
    assert body["predictions"] == {"rows": 45, "same_labels": 45, "max_probability_diff": 0.0}
    assert body["sha256"]["rebuilt"] == body["sha256"]["registered"]
    again = api.post("/models/1.0.0/rebuild").json()
    assert again["metrics"] == body["metrics"] and again["sha256"] == body["sha256"]


def test_the_handed_over_pickle_is_409_missing_provenance(api: Client) -> None:
    resp = api.post("/models/model_final_v2/rebuild")
    assert resp.status_code == 409, resp.text
    err = resp.json()
    assert err["error"] == "missing_provenance"
    assert err["message"].startswith("missing provenance")
    missing = err["details"][0]["missing"]
    assert {"manifest.json", "git_sha", "data.data_hash", "seed", "libraries"} <= set(missing)
    models = {m["id"]: m for m in api.get("/models").json()["models"]}
    assert models["model_final_v2"]["files"] == ["model_final_v2.pkl"]
    assert models["1.0.0"]["missing"] == [] and models["1.0.0"]["provenance"]["seed"] == 0
    outcomes = [r["outcome"] for r in api.get("/rebuilds").json()["rebuilds"]]
    assert "missing_provenance" in outcomes


def test_two_runs_of_the_notebook_give_different_metrics(stack: Stack, tmp_path: Path) -> None:
    one = notebook_accuracy(stack, 1, tmp_path / "run1")
    two = notebook_accuracy(stack, 7, tmp_path / "run2")
    assert one != two, (one, two)  # the same code, the same data, another split
    # the simulation is deterministic: the draw, not the test, makes them differ
    assert notebook_accuracy(stack, 7, tmp_path / "run3") == two
    # the same split on a machine whose scikit-learn has the defaults of 0.21
    assert notebook_accuracy(stack, 1, tmp_path / "run4", defaults="0.21") != one


def test_the_server_refuses_a_model_built_with_other_library_versions(stack: Stack) -> None:
    with Client(stack.url("predictor")) as predictor:
        resp = predictor.post("/admin/load", json={"name": "iris_laptop", "version": "1.0.0"})
        assert resp.status_code == 409, resp.text
        err = resp.json()
        assert err["error"] == "incompatible_model"
        assert "requires onnxruntime==1.16.3" in err["message"]
        reply = predictor.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).json()
    assert (reply["model"], reply["version"], reply["prediction"]) == ("iris_batch", "1.0.0", [0])


def test_a_rebuild_refuses_another_environment_and_changed_data(
    stack: Stack, api: Client, tmp_path: Path
) -> None:
    repo = Path(stack.run_dir) / "repository"
    copy = tmp_path / "other-env"
    shutil.copytree(repo / "iris_batch" / "1.0.0", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(version="1.0.1", libraries={**manifest["libraries"],
                                                "scikit-learn": "1.3.2"})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    publish(copy, repo)
    resp = api.post("/models/1.0.1/rebuild")
    assert resp.status_code == 409 and resp.json()["error"] == "environment_mismatch"
    assert "scikit-learn 1.3.2" in resp.json()["message"]

    engine = make_engine(stack.url("db"))
    row = dwh.IRIS_RAW.c
    try:
        with engine.begin() as conn:
            before = conn.execute(sa.select(row.sepal_length).where(row.id == 1)).scalar_one()
            conn.execute(dwh.IRIS_RAW.update().where(row.id == 1).values(sepal_length="5.2"))
        resp = api.post("/models/1.0.0/rebuild")
        assert resp.status_code == 409 and resp.json()["error"] == "data_changed", resp.text
    finally:
        with engine.begin() as conn:
            conn.execute(dwh.IRIS_RAW.update().where(row.id == 1).values(sepal_length=before))
        engine.dispose()
    assert api.post("/models/1.0.0/rebuild").json()["reproduced"] is True


def test_unknown_models_are_404(api: Client) -> None:
    resp = api.post("/models/9.9.9/rebuild")
    assert resp.status_code == 404 and resp.json()["error"] == "model_not_found"
    assert "model_final_v2" in resp.json()["message"]


def test_the_demo_draws_the_spread(tmp_path: Path) -> None:
    from antipatterns.only_me.scenario import draw
    from patternkit.testing import check_picture

    path = draw([0.9556, 1.0, 0.9111, 0.9556], [0.9556, 0.9333, 0.9556, 0.9778], [0.9778] * 4,
                tmp_path / "spread.png")
    assert path is not None
    check_picture(path)
