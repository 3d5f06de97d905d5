"""S5 integration tests: real retrieve, prep, pred and proxy processes, over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patternkit.client import Client
from patternkit.models import build_pipeline, load_dataset
from patternkit.topology import Stack
from serving_patterns.prep_pred.trainer import train

SETOSA_ID, VERSICOLOR_ID, VIRGINICA_ID = 0, 50, 100


def reference_pipeline(models: Path) -> Any:
    """The in-process scikit-learn pipeline, refitted from the manifest's recipe."""
    from sklearn.model_selection import train_test_split

    manifest = json.loads((models / "pred" / "manifest.json").read_text())
    X, y, _, _ = load_dataset("iris")
    X_train, _, y_train, _ = train_test_split(
        X, y, test_size=manifest["test_size"], random_state=manifest["seed"], stratify=y
    )
    return build_pipeline(manifest["estimator"], manifest["seed"]).fit(X_train, y_train)


def hits(stack: Stack, service: str) -> int:
    with Client(stack.url(service)) as client:
        return int(client.stats()["hits"])


@pytest.fixture
def proxy(stack: Stack) -> Iterator[Client]:
    with Client(stack.url()) as client:
        yield client


def test_all_150_rows_match_the_in_process_pipeline(stack: Stack, proxy: Client) -> None:
    X, _, _, _ = load_dataset("iris")
    offline = reference_pipeline(stack.run_dir / "models")
    by_ids = proxy.post("/predict", json={"ids": list(range(150))})
    by_data = proxy.post("/predict", json={"data": X.tolist()})
    for resp in (by_ids, by_data):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["prediction"] == offline.predict(X).tolist()
        np.testing.assert_allclose(body["probabilities"], offline.predict_proba(X), atol=1e-5)
        assert body["model"] == "iris_lr_on_scaled"


def test_raw_features_sent_straight_to_pred_give_different_outputs(
    stack: Stack, proxy: Client
) -> None:
    X, y, _, _ = load_dataset("iris")
    chained = proxy.post("/predict", json={"data": X.tolist()}).json()
    with Client(stack.url("pred")) as pred:
        skipped = pred.post("/predict", json={"data": X.tolist()})
    # pred accepts raw rows (they are valid numbers) and answers wrongly: the split is real
    assert skipped.status_code == 200, skipped.text
    raw = skipped.json()
    assert np.abs(np.array(raw["probabilities"]) - chained["probabilities"]).max() > 0.5
    wrong_raw = int((np.array(raw["prediction"]) != y).sum())
    wrong_chained = int((np.array(chained["prediction"]) != y).sum())
    assert wrong_raw >= 30 > wrong_chained, (wrong_raw, wrong_chained)
    # prep's output fed to pred by hand is exactly what the proxy answers
    with Client(stack.url("prep")) as prep, Client(stack.url("pred")) as pred:
        scaled = prep.post("/transform", json={"data": X.tolist()}).json()["data"]
        by_hand = pred.post("/predict", json={"data": scaled}).json()
    assert by_hand["probabilities"] == chained["probabilities"]


def test_the_reply_names_the_stages_that_ran_and_their_timings(
    stack: Stack, proxy: Client
) -> None:
    retrieve_hits = hits(stack, "retrieve")
    resp = proxy.post("/predict", json={"ids": [VIRGINICA_ID, SETOSA_ID, VIRGINICA_ID]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["prediction"] == [2, 0, 2]  # in the order asked, repeats allowed
    assert body["ids"] == [VIRGINICA_ID, SETOSA_ID, VIRGINICA_ID]
    assert [s["stage"] for s in body["stages"]] == ["retrieve", "prep", "pred"]
    assert [s["served_by"] for s in body["stages"]] == ["retrieve", "prep", "pred"]
    assert all(s["status"] == 200 and s["ms"] > 0 for s in body["stages"])
    assert body["total_ms"] >= sum(s["ms"] for s in body["stages"]) - 0.1
    assert resp.headers["x-stages"] == "retrieve,prep,pred"
    timing = resp.headers["server-timing"]
    assert [part.split(";")[0].strip() for part in timing.split(",")] == [
        "retrieve", "prep", "pred"
    ]
    assert resp.headers["x-served-by"] == "proxy"
    assert resp.headers["x-model-version"] == "1.0.0"
    assert hits(stack, "retrieve") == retrieve_hits + 1

    # raw features skip the retrieve stage
    raw = proxy.post("/predict", json={"data": [[7.0, 3.2, 4.7, 1.4]]})
    assert raw.status_code == 200, raw.text
    assert raw.json()["prediction"] == [1]
    assert [s["stage"] for s in raw.json()["stages"]] == ["prep", "pred"]
    assert raw.headers["x-stages"] == "prep,pred"
    assert hits(stack, "retrieve") == retrieve_hits + 1

    stats = proxy.stats()
    assert stats["stages"]["retrieve"]["calls"] >= 1
    assert stats["stages"]["pred"]["calls"] >= 2
    metrics = proxy.get("/metrics").text
    for stage in ("retrieve", "prep", "pred"):
        assert f'prep_pred_stage_duration_seconds_count{{stage="{stage}"}}' in metrics


def test_every_stage_reports_the_same_train_run_id(stack: Stack, proxy: Client) -> None:
    models = stack.run_dir / "models"
    run_id = json.loads((models / "prep" / "manifest.json").read_text())["train_run_id"]
    assert json.loads((models / "pred" / "manifest.json").read_text())["train_run_id"] == run_id
    with Client(stack.url("prep")) as prep, Client(stack.url("pred")) as pred:
        assert prep.get("/metadata").json()["train_run_id"] == run_id
        assert pred.get("/metadata").json()["train_run_id"] == run_id
        row = {"data": [[5.1, 3.5, 1.4, 0.2]]}
        assert prep.post("/transform", json=row).headers["x-train-run-id"] == run_id
        assert pred.post("/predict", json=row).headers["x-train-run-id"] == run_id
    resp = proxy.post("/predict", json={"ids": [VERSICOLOR_ID]})
    assert resp.headers["x-train-run-id"] == resp.json()["train_run_id"] == run_id
    assert proxy.stats()["train_run_ids"] == {"prep": run_id, "pred": run_id}


def test_an_unknown_id_is_a_404_naming_it(stack: Stack, proxy: Client) -> None:
    prep_hits = hits(stack, "prep")
    resp = proxy.post("/predict", json={"ids": [3, 150, 9999]})
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"] == "unknown_ids"
    assert "150, 9999" in resp.json()["message"]
    assert resp.headers["x-failed-stage"] == "retrieve"
    assert hits(stack, "prep") == prep_hits  # the chain stopped at retrieve


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"ids": [0], "data": [[5.1, 3.5, 1.4, 0.2]]}, 422, "either `ids`"),
        ({}, 422, "either `ids`"),
        ({"ids": []}, 422, "body.ids"),
        ({"ids": ["a"]}, 422, "body.ids.0"),
        ({"ids": [-1]}, 422, "body.ids.0"),
        ({"ids": [1.5]}, 422, "body.ids.0"),
        ({"ids": [True]}, 422, "body.ids.0"),
        ({"ids": [0, 2**63]}, 422, "body.ids.1"),  # beyond int64: no table holds it
        ({"ids": [2**64 + 1]}, 422, "body.ids.0"),  # beyond 64 bits: orjson cannot send it
        ({"ids": [10**30]}, 422, "body.ids.0"),
        ({"data": [[5.1, 3.5, 1.4, 0.2]], "rows": 1}, 422, "body.rows"),
        ({"data": [[5.1, 3.5, 1.4]]}, 422, "prep: body.data.0: expected 4 features"),
        ('{"data": [[NaN, 3.5, 1.4, 0.2]]}', 422, "finite"),
        ({"data": [[True, False, True, False]]}, 422, "body.data.0.0"),
        ({"data": [[5.1, 3.5, "1.4", 0.2]]}, 422, "body.data.0.2"),
        ("{not json", 422, "JSON"),
        ({"ids": list(range(1001))}, 413, "MAX_BATCH_ROWS"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_never_reaches_pred(
    stack: Stack, proxy: Client, body: object, status: int, names: str
) -> None:
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    pred_hits = hits(stack, "pred")
    resp = proxy.post("/predict", headers={"content-type": "application/json"}, **kwargs)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert set(error) == {"error", "message", "details", "request_id"}
    assert names in error["message"]
    assert hits(stack, "pred") == pred_hits


@pytest.mark.parametrize(
    ("ids", "names"),
    [([2**63], "body.ids.0"), ([1, 2**64], "body.ids.1"), ([10**30], "body.ids.0"),
     ([False], "body.ids.0")],
)
def test_retrieve_refuses_ids_no_table_can_hold(stack: Stack, ids: list[int], names: str) -> None:
    with Client(stack.url("retrieve")) as retrieve:
        resp = retrieve.post("/features", json={"ids": ids})
        assert resp.status_code == 422, resp.text
        error = resp.json()
        assert set(error) == {"error", "message", "details", "request_id"}
        assert error["message"].startswith(names + ": "), error
        largest = retrieve.post("/features", json={"ids": [2**63 - 1]})
        assert (largest.status_code, largest.json()["error"]) == (404, "unknown_ids")


def test_stages_from_different_training_runs_get_409(
    fresh_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    second = train(tmp_path / "second", seed=7)
    second_id = second["pred"]["train_run_id"]
    stack = fresh_stack()
    with Client(stack.url("prep")) as prep:
        first_id = prep.get("/metadata").json()["train_run_id"]
    assert first_id != second_id

    stack.restart("pred", env={"MODEL_PATH": str(tmp_path / "second" / "pred")})
    with Client(stack.url()) as proxy, Client(stack.url("pred")) as pred:
        assert pred.get("/metadata").json()["train_run_id"] == second_id
        for body in ({"ids": [SETOSA_ID]}, {"data": [[5.1, 3.5, 1.4, 0.2]]}):
            resp = proxy.post("/predict", json=body)
            assert resp.status_code == 409, resp.text
            error = resp.json()
            assert error["error"] == "train_run_mismatch"
            assert first_id in error["message"] and second_id in error["message"]
            assert error["details"][-1]["train_run_ids"] == {"prep": first_id, "pred": second_id}
            assert "prediction" not in error
        assert proxy.stats()["train_run_mismatches"] == 2

        # prep from the same second run: the pair agrees again
        stack.restart("prep", env={"MODEL_PATH": str(tmp_path / "second" / "prep")})
        resp = proxy.post("/predict", json={"ids": [SETOSA_ID]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["train_run_id"] == second_id
        assert resp.json()["prediction"] == [0]


def test_a_stage_that_is_down_or_slow_is_named_in_a_503_or_504(
    fresh_stack: Callable[..., Stack],
) -> None:
    stack = fresh_stack(env={
        "retrieve": {"DELAY_MS": "1500"},  # slower than the proxy waits
        "prep": {"DELAY_MS": "500"},
        "proxy": {"STAGE_TIMEOUT_MS": "1000"},
    })
    raw = {"data": [[5.1, 3.5, 1.4, 0.2]]}
    with Client(stack.url()) as proxy:
        # the slow stage is the one whose time shows
        resp = proxy.post("/predict", json=raw)
        assert resp.status_code == 200, resp.text
        ms = {s["stage"]: s["ms"] for s in resp.json()["stages"]}
        assert ms["prep"] >= 500
        assert ms["prep"] == max(ms.values()), ms

        # a stage slower than STAGE_TIMEOUT_MS: a 504 naming it, at about the timeout
        resp, waited_ms = proxy.timed("POST", "/predict", json={"ids": [SETOSA_ID]})
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"] == "stage_timeout"
        assert "stage retrieve did not answer within 1000 ms" in resp.json()["message"]
        assert resp.headers["x-failed-stage"] == "retrieve"
        assert 1000 <= waited_ms < 1500 + 1000, waited_ms

        # prep down: a 503 naming prep; the stages after it are never called
        stack.kill("prep")
        pred_hits = hits(stack, "pred")
        resp = proxy.post("/predict", json=raw)
        assert resp.status_code == 503, resp.text
        error = resp.json()
        assert error["error"] == "stage_unavailable"
        assert error["message"].startswith("stage prep is unavailable")
        assert resp.headers["x-failed-stage"] == "prep"
        assert error["details"] == [
            {"stage": "prep", "status": "unreachable", "ms": error["details"][0]["ms"]}
        ]
        assert proxy.stats()["stages"]["prep"]["failures"] == 1
        assert hits(stack, "pred") == pred_hits
        # the other stages keep serving on their own
        with Client(stack.url("pred")) as pred:
            assert pred.post("/predict", json={"data": [[0.0, 0.0, 0.0, 0.0]]}).status_code == 200
