"""SA2 integration tests: the real monolith beside the real router and per-model services.

Each claim is measured on both sides in one run: what both serve, what a CPU hog in B does
to A, what a rollout of B costs A, and what B's poison input does to A and C. The numbers are
printed side by side as well as asserted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from antipatterns.all_in_one.fragile_predictor import POISON_EXIT_CODE
from antipatterns.all_in_one.scenario import (
    MODELS,
    ROWS,
    SIDES,
    call,
    failures,
    hog_while_calling_a,
    rollout,
    side_client,
    trigger_row,
)
from patternkit.client import Client, wait_until
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack

SERVED_BY = {"monolith": dict.fromkeys(MODELS, "monolith"),
             "microservices": {m: m for m in MODELS}}
N = 20  # A and C calls counted after the poison


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a measured comparison into the test output, even when pytest captures it."""

    def show(line: str) -> None:
        with capsys.disabled():
            print(f"\n[SA2] {line}", flush=True)

    return show


@pytest.fixture(params=list(SIDES))
def side(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(stack: Stack, side: str) -> Iterator[Client]:
    with side_client(stack, side) as c:
        yield c


def test_both_sides_serve_the_same_three_models(stack: Stack) -> None:
    answers: dict[str, dict[str, dict[str, object]]] = {}
    for side in SIDES:
        with side_client(stack, side) as client:
            for model in MODELS:
                resp = client.post(f"/predict/{model}", json={"data": [ROWS[model]]})
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-served-by"] == SERVED_BY[side][model]
                body = resp.json()
                assert body["served_by"] == SERVED_BY[side][model]
                answers.setdefault(model, {})[side] = {
                    k: body[k] for k in ("prediction", "probabilities", "model")
                }
    for model, (expected_model, label) in {"a": ("iris_lr", 0), "b": ("iris_rf", 2),
                                           "c": ("wine_lr", 0)}.items():
        assert answers[model]["monolith"] == answers[model]["microservices"]
        assert answers[model]["monolith"]["model"] == expected_model
        assert answers[model]["monolith"]["prediction"] == [label]


def test_the_monolith_holds_all_three_models_in_one_process(stack: Stack) -> None:
    with Client(stack.url("monolith")) as monolith:
        meta = monolith.get("/metadata").json()
    assert meta["served_by"] == "monolith"
    assert {k: m["name"] for k, m in meta["models"].items()} == {
        "a": "iris_lr", "b": "iris_rf", "c": "wine_lr"}
    assert meta["models"]["c"]["n_features"] == 13
    for model, name in (("a", "iris_lr"), ("c", "wine_lr")):
        with Client(stack.url(model)) as own:
            assert own.get("/metadata").json()["model"]["name"] == name
    with Client(stack.url()) as router:
        backends = router.get("/metadata").json()["backends"]
    assert backends == {m: stack.url(m) for m in MODELS}


@pytest.mark.parametrize(("body", "status", "names"), BAD_PREDICT_BODIES)
def test_bad_input_gets_a_4xx_naming_the_problem(
    client: Client, body: object, status: int, names: str
) -> None:
    resp = post_body(client, "/predict/a", body)
    assert resp.status_code == status, resp.text
    assert names in resp.json()["message"]


def test_each_model_checks_its_own_input(client: Client) -> None:
    resp = client.post("/predict/c", json={"data": [ROWS["a"]]})
    assert resp.status_code == 422, resp.text
    assert resp.json()["message"] == "body.data.0: expected 13 features, got 4"
    resp = client.post("/predict/a", json={"data": [ROWS["c"]]})
    assert resp.status_code == 422, resp.text
    assert "expected 4 features, got 13" in resp.json()["message"]


def test_an_unknown_model_is_a_404(client: Client, side: str) -> None:
    resp = client.post("/predict/d", json={"data": [ROWS["a"]]})
    assert resp.status_code == 404, resp.text
    if side == "microservices":
        assert resp.json()["message"] == "no model 'd'; known models: a, b, c"


def test_a_cpu_hog_in_b_stalls_a_only_in_the_monolith(
    stack: Stack, report: Callable[[str], None]
) -> None:
    hog_ms = int(stack.proc("b").env["HOG_MS"])
    monolith = hog_while_calling_a(stack, "monolith")
    micro = hog_while_calling_a(stack, "microservices")
    report(f"B busy {hog_ms} ms: slowest A call: monolith {monolith['a_max_ms']} ms "
           f"({monolith['a_calls']} calls); microservices {micro['a_max_ms']} ms "
           f"({micro['a_calls']} calls)")
    for measured in (monolith, micro):
        assert measured["b_status"] == "200"
        assert measured["b_ms"] >= hog_ms
        assert measured["a_failed"] == 0
    assert monolith["a_max_ms"] >= 0.5 * hog_ms, monolith  # A waited for B's hog
    assert micro["a_max_ms"] < 0.5 * hog_ms, micro  # A never waited for B
    assert micro["a_calls"] > monolith["a_calls"]


def test_poison_in_b_kills_the_monolith_but_only_b_in_microservices(
    fresh_stack: Callable[..., Stack], report: Callable[[str], None]
) -> None:
    stack = fresh_stack()
    poison = trigger_row(stack, "POISON_VALUE")
    with side_client(stack, "monolith") as monolith, side_client(stack, "microservices") as micro:
        for client in (monolith, micro):
            assert failures(client, MODELS, 6) == 0  # everything answers before the poison

        # the monolith: the poisoned request gets no response, and the process is gone
        hit = call(monolith, "b", poison)
        assert hit in ("RemoteProtocolError", "ReadError"), hit  # dropped, no response
        wait_until(lambda: stack.status("monolith")[0].state == "exited", timeout=10,
                   what="the monolith exiting after the poison input")
        assert stack.status("monolith")[0].exit_code == POISON_EXIT_CODE
        mono_failed = failures(monolith, ("a", "c"), N)
        assert call(monolith, "a") == "ConnectError"

        # microservices: the router names B in a 502; B's process is gone, the rest answer
        resp = call(micro, "b", poison)
        assert isinstance(resp, httpx.Response)
        assert resp.status_code == 502, resp.text
        assert resp.json()["message"].startswith("model b: gave no answer")
        assert resp.json()["details"][0]["backend"] == "b"
        wait_until(lambda: stack.status("b")[0].state == "exited", timeout=10,
                   what="b exiting after the poison input")
        micro_failed = failures(micro, ("a", "c"), N)
        resp = call(micro, "b")
        assert isinstance(resp, httpx.Response)
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"] == "backend_unavailable"
        assert resp.json()["message"].startswith("model b: unreachable at http://")
        assert resp.json()["message"].endswith("(connection refused)")
        stats = micro.stats()["models"]
    report(f"after poison hit B: monolith {mono_failed}/{N} A+C calls failed; "
           f"microservices {micro_failed}/{N}")
    assert mono_failed == N
    assert micro_failed == 0
    assert stats["b"]["failed"] == 2
    assert stats["a"]["failed"] == stats["c"]["failed"] == 0
    assert [stack.status(name)[0].state for name in ("router", "a", "c")] == ["up"] * 3


def test_a_rollout_of_b_costs_a_only_in_the_monolith(
    fresh_stack: Callable[..., Stack], report: Callable[[str], None]
) -> None:
    stack = fresh_stack()
    monolith = rollout(stack, "monolith")
    micro = rollout(stack, "microservices")
    mono_traffic, micro_traffic = monolith["traffic"], micro["traffic"]
    report(f"rollout of B to 2.0.0: A calls failed: monolith {mono_traffic.summary('a')} "
           f"(restarted {monolith['restarted']}); microservices {micro_traffic.summary('a')} "
           f"(restarted {micro['restarted']})")
    assert monolith["b_version"] == micro["b_version"] == "2.0.0"
    assert mono_traffic.failed["a"] > 0
    assert mono_traffic.failed["c"] > 0
    assert micro_traffic.failed["a"] == 0
    assert micro_traffic.failed["c"] == 0
    assert micro_traffic.calls["a"] >= 5  # A really was called throughout the rollout
    assert micro_traffic.failed["b"] > 0  # B alone, one replica, is down while it restarts
