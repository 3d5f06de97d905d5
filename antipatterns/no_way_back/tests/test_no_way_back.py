"""LA1 integration tests: one bad model deployed on both stacks, and the way back from it.

The incident runs once per stack (`incident`, the demo's own code): scored on the held-out
iris rows, the bad 1.1.0 (shuffled labels) deployed on both, the fix rolled back with one
call under traffic, the in-place server refused the same call and recovered by a retrain from
scratch. The tests read what it measured; the last ones ask the stack itself.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from antipatterns.no_way_back.scenario import Incident, incident
from antipatterns.no_way_back.trainer import ALIAS, BAD, GOOD, NAME
from patternkit.client import Client
from patternkit.models import MANIFEST_FILE, MODEL_FILE
from patternkit.testing import BAD_PREDICT_BODIES, extra_instance, post_body
from patternkit.topology import Stack

ROW = [6.3, 2.5, 4.9, 1.5]
RATIO = 5  # the rollback must be at least this many times faster than the retrain
_INCIDENTS: dict[int, Incident] = {}


@pytest.fixture
def found(stack: Stack) -> Incident:
    if id(stack) not in _INCIDENTS:
        _INCIDENTS[id(stack)] = incident(stack)
    return _INCIDENTS[id(stack)]


def test_the_bad_model_collapses_accuracy_while_every_reply_is_200(found: Incident) -> None:
    for stack in ("versioned", "in-place"):
        assert found.deploys[stack] == 200 and found.bad_statuses[stack] == 200
        assert found.versions[stack] == {"before": GOOD, "bad": BAD, "after": GOOD}
        before, bad = found.accuracy[stack]["before"], found.accuracy[stack]["bad"]
        print(f"{stack}: accuracy {before:.1%} before, {bad:.1%} with the bad model")
        assert bad < before - 0.3, (before, bad)


def test_in_place_overwrite_leaves_no_previous_version(found: Incident, stack: Stack) -> None:
    model_path = Path(stack.proc("inplace_predictor").env["MODEL_PATH"])
    assert found.files_after_deploy == ["manifest.json", "model.onnx"]  # nothing else kept
    assert sorted(p.name for p in model_path.parent.iterdir()) == [model_path.name]
    refused = found.in_place_rollback
    assert refused["status"] == 409 and refused["error"] == "no_previous_version"
    message = refused["message"]
    assert f"{model_path} holds {NAME} {BAD} only" in message
    assert f"copied {NAME} {BAD} over {NAME} {GOOD}" in message and "kept no copy" in message
    assert "python -m antipatterns.no_way_back.trainer --retrain" in message
    with Client(stack.url("inplace_predictor")) as in_place:
        again = in_place.post("/admin/rollback")  # after the retrain: still only one model
        meta = in_place.get("/metadata").json()
    assert again.status_code == 409 and again.json()["error"] == "no_previous_version"
    assert [o["version"] for o in meta["overwritten"]][-2:] == [GOOD, BAD]
    assert json.loads((model_path / MANIFEST_FILE).read_text())["version"] == GOOD


def test_the_fix_rolls_back_in_one_call_to_the_same_predictions_with_zero_failures(
    found: Incident, stack: Stack
) -> None:
    fixed = found.fixed
    assert fixed is not None and fixed.status == 200, fixed
    assert fixed.message == f"{BAD} -> {GOOD}"
    assert found.predictions["versioned"]["after"] == found.predictions["versioned"]["before"]
    assert len(fixed.sent) >= 6 and fixed.failed == 0, fixed.sent[:3]
    assert fixed.during, "no request was in flight during the rollback"
    assert {s.version for s in fixed.sent} == {BAD, GOOD}  # it swapped under that traffic
    by_sender: dict[int, list[str | None]] = {}
    for s in fixed.sent:
        by_sender.setdefault(s.sender, []).append(s.version)
    went_back = sum((a, b) == (GOOD, BAD) for v in by_sender.values()
                    for a, b in itertools.pairwise(v))
    assert went_back == 0
    timeline = found.timeline["versioned"]  # a paced caller over the whole incident
    assert len(timeline) > 20 and all(s.status == 200 for s in timeline)
    print(f"rollback: {fixed.message} in {fixed.seconds:.3f}s, {len(fixed.sent)} requests "
          f"around it ({len(fixed.during)} in flight during it), {fixed.failed} failed")
    with Client(stack.url("repository")) as repository:
        alias = repository.get(f"/models/{NAME}/aliases/{ALIAS}").json()
    assert alias["version"] == GOOD  # a restart loads the good one too


def test_the_fix_recovers_many_times_faster_than_a_retrain(found: Incident) -> None:
    assert found.fixed is not None and found.in_place is not None
    ratio = found.in_place.seconds / found.fixed.seconds
    print(f"time to recover: rollback {found.fixed.seconds:.3f}s, retrain + redeploy "
          f"{found.in_place.seconds:.2f}s ({ratio:.0f}x); the in-place server answered "
          f"{found.in_place.served(BAD)} of {len(found.in_place.during)} requests with {BAD} "
          "meanwhile")
    assert found.in_place.seconds > RATIO * found.fixed.seconds
    assert found.in_place.served(BAD) > 0 and found.in_place.failed == 0


def test_accuracy_after_recovery_equals_the_pre_bad_one(found: Incident) -> None:
    for stack in ("versioned", "in-place"):
        assert found.accuracy[stack]["after"] == found.accuracy[stack]["before"], stack
        assert found.predictions[stack]["after"] == found.predictions[stack]["before"], stack


def test_rollback_without_a_previous_version_and_bad_alias_calls_name_the_problem(
    found: Incident, stack: Stack
) -> None:
    with Client(stack.url("repository")) as repository, Client(stack.url()) as predictor:
        fresh = repository.put(f"/models/{NAME}/aliases/fresh", json={"version": GOOD})
        assert fresh.status_code == 200 and fresh.json()["previous"] is None
        none_before = repository.post(f"/models/{NAME}/aliases/fresh/rollback")
        assert none_before.status_code == 409
        assert none_before.json()["error"] == "no_previous_version"
        assert "pointed at 1.0.0 only" in none_before.json()["message"]
        unknown = repository.put(f"/models/{NAME}/aliases/{ALIAS}", json={"version": "9.9.9"})
        assert unknown.status_code == 404 and "9.9.9" in unknown.json()["message"]
        for alias in ("latest", "v2", "9lives"):
            bad = repository.put(f"/models/{NAME}/aliases/{alias}", json={"version": GOOD})
            assert bad.status_code == 422 and bad.json()["error"] == "invalid_alias", alias
        missing = repository.get(f"/models/{NAME}/aliases/nobody")
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_alias"
        body = repository.put(f"/models/{NAME}/aliases/{ALIAS}", json={"version": "1.0"})
        assert body.status_code == 422
        reserved = predictor.post("/admin/load", json={"version": "aliases"})
        assert reserved.status_code == 422 and "reserved" in reserved.json()["message"]
        manifest = repository.get(f"/models/{NAME}/{ALIAS}")
        assert manifest.status_code == 200 and manifest.json()["version"] == GOOD
        assert manifest.headers["cache-control"] == "no-cache"  # an alias moves
        assert predictor.get("/metadata").json()["load"]["alias"] == ALIAS


def test_a_pinned_predictor_rolls_back_to_the_version_it_served_before(
    found: Incident, stack: Stack
) -> None:
    """Without an alias, `/admin/rollback` goes back to the version before the last swap;
    before any swap there is none (409)."""
    with extra_instance(stack, "predictor", {"MODEL_VERSION": GOOD}) as extra, \
            Client(extra.url) as pinned:
        pinned.wait_ready(timeout=60)
        nothing = pinned.post("/admin/rollback")
        assert nothing.status_code == 409 and nothing.json()["error"] == "no_previous_version"
        assert "follows no alias" in nothing.json()["message"]
        assert pinned.post("/admin/load", json={"version": BAD}).status_code == 200
        back = pinned.post("/admin/rollback")
        assert back.status_code == 200, back.text
        assert (back.json()["previous"], back.json()["version"]) == (BAD, GOOD)
        assert back.json()["alias"] is None
        assert pinned.post("/predict", json={"data": [ROW]}).headers["x-model-version"] == GOOD


def test_a_half_written_copy_over_the_one_path_cannot_be_loaded(
    found: Incident, stack: Stack
) -> None:
    """The in-place deploy's other hazard: a copy cut short leaves the path holding bytes that
    match no manifest; the reload is refused (422) and the model in memory keeps serving,
    the only good copy left."""
    model_path = Path(stack.proc("inplace_predictor").env["MODEL_PATH"])
    whole = (model_path / MODEL_FILE).read_bytes()
    try:
        (model_path / MODEL_FILE).write_bytes(whole[: len(whole) // 2])
        with Client(stack.url("inplace_predictor")) as in_place:
            reload = in_place.post("/admin/reload")
            assert reload.status_code == 422 and reload.json()["error"] == "unloadable_model"
            assert "sha256 mismatch" in reload.json()["message"]
            still = in_place.post("/predict", json={"data": [ROW]})
            assert still.status_code == 200 and still.headers["x-model-version"] == GOOD
    finally:
        (model_path / MODEL_FILE).write_bytes(whole)


@pytest.mark.parametrize(("body", "status", "says"), BAD_PREDICT_BODIES)
def test_both_predictors_refuse_bad_bodies(stack: Stack, body: object, status: int,
                                           says: str) -> None:
    for service in ("predictor", "inplace_predictor"):
        with Client(stack.url(service)) as client:
            resp = post_body(client, "/predict", body)
        assert resp.status_code == status, (service, resp.text)
        assert says in resp.json()["message"], (service, resp.json())
