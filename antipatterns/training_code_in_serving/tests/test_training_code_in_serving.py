"""TA2 integration tests: the real fat server beside the real slim server, one stack.

Both serve the same model with the same template code: the same answers to the same rows.
What differs is what the fat one carries: `/train`, the DWH's address, the training stack in
its imports, and the memory, start time and dependency closure that costs. The numbers are
printed side by side as well as asserted (as ratios between the sides, never raw times).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from antipatterns.training_code_in_serving.scenario import (
    MB,
    ROWS,
    SIDES,
    footprint,
    modules,
    predictions,
    train_status,
)
from patternkit.client import Client
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack

HAS_PANDAS = importlib.util.find_spec("pandas") is not None
START_RATIO = 0.8  # slim must start in under 80% of fat's time (measured: about 0.3)


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a measured comparison into the test output, even when pytest captures it."""

    def show(line: str) -> None:
        with capsys.disabled():
            print(f"\n[TA2] {line}", flush=True)

    return show


def served_manifest(stack: Stack) -> dict[str, object]:
    path = Path(stack.proc("slim_server").env["MODEL_PATH"]) / "manifest.json"
    found: dict[str, object] = json.loads(path.read_text())
    return found


def test_both_servers_predict_identically_on_the_same_rows(stack: Stack) -> None:
    rng = np.random.default_rng(7)  # iris-shaped rows over the ranges of the four features
    rows = [*ROWS, *np.round(rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], (47, 4)), 1).tolist()]
    answers = {}
    for side in SIDES:
        with Client(stack.url(side)) as client:
            resp = client.post("/predict", json={"data": rows})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-served-by"] == side
        body = resp.json()
        answers[side] = {k: body[k] for k in ("prediction", "probabilities", "model", "version")}
    assert answers["fat_server"] == answers["slim_server"]
    assert answers["slim_server"]["prediction"][:3] == [0, 1, 2]
    assert answers["slim_server"]["model"] == "iris_lr"
    assert len(set(answers["slim_server"]["prediction"])) == 3  # not one constant answer


def test_train_runs_on_the_fat_server_and_is_a_404_on_the_slim_one(stack: Stack) -> None:
    status, body = train_status(stack, "fat_server")
    assert status == 200, body
    assert body["rows_read"] == 150
    assert body["wrangling"] == ("pandas" if HAS_PANDAS else "sqlalchemy")
    assert body["version"] == "1.1.0"
    assert Path(body["model_dir"], "model.onnx").is_file()
    served = served_manifest(stack)
    # the same training code on the same DWH rows and seed: the served model, rebuilt
    assert body["metrics"] == served["metrics"]
    assert body["sha256"] == served["sha256"]
    with Client(stack.url("fat_server")) as fat:
        assert fat.get("/metadata").json()["last_training"]["version"] == "1.1.0"
    assert predictions(stack, "fat_server")["version"] == "1.0.0"  # trained, not swapped in

    status, body = train_status(stack, "slim_server")
    assert status == 404, body
    assert body["error"] == "not_found"


@pytest.mark.parametrize(("body", "names"), [
    ({"version": "latest"}, "body.version"),
    ({"seed": -1}, "body.seed"),
    ({"version": 1}, "body.version"),
])
def test_a_bad_train_body_is_a_422_naming_the_field(
    stack: Stack, body: object, names: str
) -> None:
    with Client(stack.url("fat_server")) as fat:
        resp = fat.post("/train", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["message"].startswith(names)


def test_only_the_fat_server_can_reach_the_dwh(stack: Stack) -> None:
    assert "DWH_URL" in stack.proc("fat_server").env
    assert "DWH_URL" not in stack.proc("slim_server").env
    with Client(stack.url("fat_server")) as fat, Client(stack.url("slim_server")) as slim:
        assert fat.get("/metadata").json()["dwh"].startswith(("sqlite:", "postgresql"))
        assert "dwh" not in slim.get("/metadata").json()


def test_the_slim_server_imports_no_training_stack(
    stack: Stack, report: Callable[[str], None]
) -> None:
    fat, slim = (modules(stack, side) for side in SIDES)
    report(f"imports: fat {len(fat['modules'])} packages (training stack: "
           f"{', '.join(fat['training_stack'])}), closure {fat['closure_bytes'] / MB:.0f} MB in "
           f"{len(fat['distributions'])} distributions; slim {len(slim['modules'])} packages, "
           f"closure {slim['closure_bytes'] / MB:.0f} MB in {len(slim['distributions'])}")
    assert "sklearn" not in slim["modules"]
    assert slim["training_stack"] == []
    assert {"onnxruntime", "numpy"} <= set(slim["modules"])
    assert {"sklearn", "skl2onnx", "sqlalchemy"} <= set(fat["modules"])
    assert {"scikit-learn", "skl2onnx"} <= set(fat["distributions"])
    assert ("pandas" in fat["modules"]) == HAS_PANDAS
    assert not {"scikit-learn", "skl2onnx", "pandas", "scipy"} & set(slim["distributions"])
    # the slim closure is the fat one minus the training stack
    assert set(slim["distributions"]) < set(fat["distributions"])
    assert slim["closure_bytes"] < fat["closure_bytes"]
    training_bytes = sum(fat["distributions"][d]["bytes"] for d in ("scikit-learn", "skl2onnx"))
    assert fat["closure_bytes"] - slim["closure_bytes"] >= training_bytes


def test_the_slim_server_uses_less_memory_and_starts_faster(
    stack: Stack, report: Callable[[str], None]
) -> None:
    measured = footprint(stack)
    fat, slim = measured["fat_server"], measured["slim_server"]
    report(f"RSS: fat {fat['rss_bytes'] / MB:.0f} MB, slim {slim['rss_bytes'] / MB:.0f} MB "
           f"({slim['rss_bytes'] / fat['rss_bytes']:.2f}); start to /ready: fat "
           f"{fat['start_s']:.2f} s {fat['starts']}, slim {slim['start_s']:.2f} s "
           f"{slim['starts']} ({slim['start_s'] / fat['start_s']:.2f})")
    assert slim["rss_bytes"] < fat["rss_bytes"]
    assert slim["start_s"] < START_RATIO * fat["start_s"]
    for side in SIDES:  # both back up and serving after the restarts
        assert predictions(stack, side)["status"] == 200


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_gets_a_4xx_naming_the_problem(
    stack: Stack, side: str, body: object, status: int, names: str
) -> None:
    with Client(stack.url(side)) as client:
        resp = post_body(client, "/predict", body)
    assert resp.status_code == status, resp.text
    assert names in resp.json()["message"]
