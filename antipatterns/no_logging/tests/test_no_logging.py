"""OA1 integration tests: the same traffic, with the same client bug, through an unlogged and
a logged stack; only the logged one (O5's proxy and monitor) can see or explain the change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from antipatterns.no_logging import scenario
from antipatterns.no_logging.scenario import Run, log_rows, side_by_side
from patternkit.client import Client
from patternkit.testing import check_picture
from patternkit.topology import Stack

RADIUS, PERIMETER = "mean radius", "mean perimeter"


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    return {}


@pytest.fixture
def run(stack: Stack, runs: dict[str, Run]) -> Run:
    """One side-by-side run (3 healthy windows, then 3 with the bug), shared by the tests."""
    if "run" not in runs:
        runs["run"] = side_by_side(stack, seed=7, tag="test")
    return runs["run"]


@pytest.fixture
def clients(stack: Stack) -> Iterator[dict[str, Client]]:
    made = {name: Client(stack.url(name)) for name in (*scenario.STACKS, "monitor",
                                                        "alert_sink")}
    yield made
    for client in made.values():
        client.close()


def test_both_stacks_answer_200_while_the_class_mix_shifts(run: Run) -> None:
    for s in scenario.STACKS:
        assert run.statuses[s] == [200] * 60
        healthy, bug = run.share(s, "healthy"), run.share(s, "bug")
        print(f"{s}: 60/60 answered 200; malignant {healthy:.1%} -> {bug:.1%} "
              f"(training: 37.2%)")
        # 3,000 rows each: a binomial share's sd is under 0.01, so these bounds are wide
        assert 0.30 < healthy < 0.45 and bug > 0.7
    assert run.answers["unlogged"] == run.answers["logged"]  # the same model, same answers


def test_the_unlogged_stack_has_nothing_to_query(
    stack: Stack, run: Run, clients: dict[str, Client]
) -> None:
    resp = clients["unlogged"].get("/logs", params={"request_id": run.first_bug_rid})
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    assert clients["unlogged"].get("/metadata").json()["logging"] == "off"
    rows = log_rows(stack, run.windows[0][0])
    print(f"log rows since the run: {rows}")
    assert rows == {"unlogged": 0, "logged": 60}
    # no log writer, so no metric of one; and no alert ever names one of its requests
    assert "prediction_log_written_total" not in clients["unlogged"].get("/metrics").text
    assert "prediction_log_written_total" in clients["logged"].get("/metrics").text
    alerts = clients["alert_sink"].get("/alerts").json()["alerts"]
    assert not any("unlogged" in str(a.get("first_request_id")) for a in alerts)


def test_the_logged_stack_fires_a_drift_alert_on_the_swapped_features_and_finds_the_first_request(
    run: Run, clients: dict[str, Client]
) -> None:
    body = clients["monitor"].post("/evaluate", json={"windows": [
        {"start": a.isoformat(), "end": b.isoformat()} for a, b in run.windows]}).json()
    reports = body["windows"]
    assert [w["findings"] for w in reports[:3]] == [[], [], []]  # healthy: nothing
    assert reports[3]["alerts"] == []  # the bug's first window: pending (for = 2)
    fired = {(a["rule"], a.get("feature") or a.get("class")): a for a in body["alerts"]}
    print(f"fired: {sorted(fired)}")
    assert set(fired) == {("feature_drift", RADIUS), ("feature_drift", PERIMETER),
                          ("class_ratio", "malignant")}
    drift = fired[("feature_drift", RADIUS)]
    assert drift["value"] > drift["threshold"] == 0.25
    assert drift["window"] == reports[4]["window"]
    assert drift["first_request_id"] == run.first_bug_rid
    sunk = clients["alert_sink"].get("/alerts", params={"source": body["evaluation"]}).json()
    assert sunk["count"] == 3

    # the log holds the request as it was sent: a perimeter (40-190) where the radius (7-28)
    # belongs, and the malignant answers it got
    logs = clients["logged"].get("/logs", params={"request_id": run.first_bug_rid}).json()
    (row,) = logs["rows"]
    assert row["request_id"] == run.first_bug_rid and row["service"] == "logged"
    assert all(r[0] > 40 and r[2] < 30 for r in row["input"])
    assert len(row["output"]["prediction"]) == 100


def test_the_demo_reports_the_counts(stack: Stack, tmp_path: Path) -> None:
    rows = {r["stack"]: r for r in scenario.run(stack, out=tmp_path)}
    assert rows["unlogged"]["log rows"] == 0 and rows["logged"]["log rows"] == 60
    assert rows["unlogged"]["GET /logs?request_id=<first bug request>"] == "404"
    assert rows["logged"]["GET /logs?request_id=<first bug request>"].startswith("200")
    assert rows["logged"]["alerts"].startswith("3 fired (3 at the sink)")
    check_picture(tmp_path / scenario.PICTURE)
