"""O7 integration tests: the real proxy and five real predictors, routed by the rules file.

The condition comes from the request body (`context`) or the `X-Client-Time` header, so no
test depends on the machine's clock. The rules file is edited in place (written whole, then
renamed, as editors save) and the tests poll the proxy with a deadline until it has reloaded;
its process id stays the same, so nothing is restarted. The test that edits the file puts
the shipped rules back after it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from patternkit.client import Client, wait_until
from patternkit.testing import BAD_PREDICT_BODIES, post_body
from patternkit.topology import Stack

ROW = [5.1, 3.5, 1.4, 0.2]
SHIPPED = Path(__file__).parents[1] / "rules.yaml"

EDITED = """\
clock: none
rules:
  europe: {region: [europe], backend: europe}
  asia: {region: [asia], backend: asia}
  kiosk: {device: [kiosk], backend: europe}
  morning: {hours: [5, 10], backend: morning}
  noon: {hours: [10, 19], backend: noon}
  night: {hours: [19, 5], backend: night}
"""


@pytest.fixture
def proxy(entry: Client) -> Client:
    return entry


def predict(proxy: Client, context: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"data": [ROW]}
    if context is not None:
        body["context"] = context
    return proxy.post("/predict", json=body, headers=headers or {})


def served(proxy: Client, **context: Any) -> tuple[str, str]:
    """(rule, X-Served-By) of a request with this context."""
    resp = predict(proxy, context)
    assert resp.status_code == 200, resp.text
    assert resp.json()["rule"] == resp.headers["x-route-rule"]
    return resp.headers["x-route-rule"], resp.headers["x-served-by"]


def hits(stack: Stack, name: str) -> int:
    with Client(stack.url(name)) as backend:
        return int(backend.stats()["hits"])


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def rules_file(stack: Stack, proxy: Client) -> Iterator[Path]:
    """The proxy's rules file; the shipped rules are back in it after the test."""
    path = Path(stack.proc("proxy").env["RULES_FILE"])
    yield path
    write_atomically(path, SHIPPED.read_text())
    assert proxy.post("/rules/reload").status_code == 200


# -- (1) the hour -----------------------------------------------------------------------------


@pytest.mark.parametrize(("hour", "model"), [
    (8, "morning"), (13, "noon"), (22, "night"), (3, "night"),  # 19-07 wraps past midnight
    (7, "morning"), (10, "morning"), (11, "noon"), (18, "noon"), (19, "night"), (0, "night"),
    (6, "night"), (23, "night"),
])
def test_the_hour_picks_the_time_of_day_model(proxy: Client, hour: int, model: str) -> None:
    resp = predict(proxy, {"hour": hour})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-served-by"] == model
    body = resp.json()
    assert (body["rule"], body["backend"], body["served_by"]) == (model, model, model)
    assert body["condition"] == {"hour": hour, "hour_from": "request", "region": None,
                                 "device": None}
    assert body["prediction"] == [0]


def test_the_clients_local_time_header_gives_the_hour(proxy: Client) -> None:
    for value, model in [("2026-05-01T08:30:00+09:00", "morning"),
                         ("2026-05-01T23:59:59Z", "night"), ("14:05", "noon")]:
        resp = predict(proxy, headers={"X-Client-Time": value})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-served-by"] == model, value
        assert resp.json()["condition"]["hour_from"] == "x-client-time"
    # the body's own hour wins over the header
    resp = predict(proxy, {"hour": 13}, headers={"X-Client-Time": "08:00"})
    assert resp.headers["x-served-by"] == "noon"


# -- (2) the region -------------------------------------------------------------------------------


def test_the_region_picks_the_regional_model(stack: Stack, proxy: Client) -> None:
    before = hits(stack, "europe")
    assert served(proxy, region="europe") == ("europe", "europe")
    assert served(proxy, region="Europe", hour=8) == ("europe", "europe")  # the first rule wins
    assert served(proxy, region="asia", hour=22) == ("asia", "asia")
    assert served(proxy, region="america", hour=8) == ("morning", "morning")  # no region rule
    assert hits(stack, "europe") == before + 2
    resp = predict(proxy, {"region": "europe"})
    assert resp.json()["model"] == "iris_rf"


# -- (3) unmatched --------------------------------------------------------------------------------


def test_an_unmatched_condition_goes_to_the_default(proxy: Client) -> None:
    # no hour, no region: no rule can match, and the shipped rules' default is noon
    assert served(proxy) == ("default", "noon")
    assert served(proxy, region="america") == ("default", "noon")
    assert served(proxy, device="watch") == ("default", "noon")
    route = proxy.get("/route", params={"region": "america"}).json()
    assert (route["rule"], route["backend"]) == ("default", "noon")


# -- (4) the rules file, edited while the proxy runs ----------------------------------------------


def test_editing_the_rules_file_reroutes_with_no_restart(
    stack: Stack, proxy: Client, rules_file: Path
) -> None:
    pid = stack.status("proxy")[0].pid
    version = proxy.get("/rules").json()["version"]
    assert served(proxy, hour=6) == ("night", "night")

    write_atomically(rules_file, EDITED)
    wait_until(lambda: proxy.get("/rules").json()["version"] > version, timeout=10,
               what="the proxy reloading the rules")
    assert served(proxy, hour=6) == ("morning", "morning")
    assert served(proxy, hour=10) == ("noon", "noon")
    assert served(proxy, device="kiosk") == ("kiosk", "europe")
    resp = predict(proxy)  # no default any more: unmatched is a 400 naming the condition
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == "no_matching_rule"
    assert body["message"] == ("no rule matches hour=None, region=None, device=None, "
                               "and the rules have no default")
    assert proxy.get("/route").status_code == 400
    assert proxy.stats()["unmatched"] >= 1

    changes = proxy.get("/rules/history").json()["changes"]
    assert {(c["field"], str(c["old"]), str(c["new"]), c["source"]) for c in changes} >= {
        ("default", "noon", "None", "file"),
        ("rules.morning.hours", "[7, 11]", "[5, 10]", "file"),
        ("rules.noon.hours", "[11, 19]", "[10, 19]", "file"),
        ("rules.night.hours", "[19, 7]", "[19, 5]", "file"),
    }
    assert any(c["field"] == "rules.kiosk" and c["old"] is None for c in changes)
    meta = proxy.get("/metadata").json()["rules"]
    assert "kiosk" in meta["values"]["rules"] and meta["values"]["default"] is None
    assert f"rules change #{version + 1} by file: default \"noon\" -> null" in (
        stack.log_tail("proxy", 400))

    # reordering rules changes who wins, so it is a change too
    reordered = EDITED.replace("  europe: {region: [europe], backend: europe}\n", "") + (
        "  europe: {region: [europe], backend: europe}\n")
    write_atomically(rules_file, reordered)
    wait_until(lambda: any(c["field"] == "rules[order]" for c in
                           proxy.get("/rules/history").json()["changes"]),
               timeout=10, what="the reordered rules")
    assert served(proxy, region="europe", hour=8) == ("morning", "morning")
    assert stack.status("proxy")[0].pid == pid


@pytest.mark.parametrize(("text", "message"), [
    (EDITED.replace("backend: morning", "backend: breakfast"),
     "rules.yaml: rules.morning.backend: no backend named 'breakfast'; backends: morning, noon"),
    (EDITED.replace("[5, 10]", "[5, 5]"),
     "rules.yaml: rules.morning.hours: [5, 5]: start and end are the same hour"),
    (EDITED.replace("[5, 10]", "[5, 30]"), "rules.yaml: rules.morning.hours: [5, 30]: start"),
    (EDITED.replace("{device: [kiosk], backend: europe}", "{backend: europe}"),
     "rules.yaml: rules.kiosk: a rule needs at least one condition"),
    (EDITED.replace("clock: none", "clock: Mars/Olympus"),
     "rules.yaml: clock: unknown time zone 'Mars/Olympus'"),
    (EDITED + "fallback: noon\n", "rules.yaml: fallback: unknown field (fields: default, clock"),
    ("rules: {}\n", "rules.yaml: rules: Dictionary should have at least 1 item"),
    ("rules: [unclosed\n", "rules.yaml: cannot read it"),
])
def test_a_bad_rules_file_is_refused_by_name_and_the_old_rules_kept(
    stack: Stack, proxy: Client, rules_file: Path, text: str, message: str
) -> None:
    before = proxy.get("/rules").json()
    write_atomically(rules_file, text)
    error = wait_until(lambda: proxy.get("/rules").json()["file"]["error"], timeout=10,
                       what="the bad rules being refused")
    assert error["message"].startswith(message), error["message"]
    after = proxy.get("/rules").json()
    assert (after["values"], after["version"]) == (before["values"], before["version"])
    assert served(proxy, hour=8) == ("morning", "morning")  # the old rules still route
    resp = proxy.post("/rules/reload")
    assert resp.status_code == 422
    assert resp.json()["message"].startswith(message)
    logged = f"rules change by file refused, nothing changed: {message}"
    assert logged in stack.log_tail("proxy", 50)


# -- the dry run, bad input -----------------------------------------------------------------------


def test_the_route_endpoint_answers_without_calling_a_model(stack: Stack, proxy: Client) -> None:
    before = hits(stack, "morning")
    route = proxy.get("/route", params={"hour": 9}).json()
    assert (route["rule"], route["backend"], route["condition"]["hour"]) == (
        "morning", "morning", 9)
    route = proxy.get("/route", headers={"X-Client-Time": "21:00"}).json()
    assert (route["backend"], route["condition"]["hour_from"]) == ("night", "x-client-time")
    assert hits(stack, "morning") == before
    assert proxy.get("/route", params={"hour": 24}).status_code == 422


@pytest.mark.parametrize(("context", "headers", "message"), [
    ({"hour": 25}, {}, "body.context.hour: Input should be less than or equal to 23"),
    ({"hour": "8"}, {}, "body.context.hour: Input should be a valid integer"),
    ({"hour": True}, {}, "body.context.hour"),
    ({"region": ""}, {}, "body.context.region"),
    ({"planet": "earth"}, {}, "body.context.planet: Extra inputs are not permitted"),
    ({}, {"X-Client-Time": "yesterday"}, "header X-Client-Time: expected an ISO 8601 time"),
])
def test_a_bad_condition_is_refused_by_name(
    proxy: Client, context: dict[str, Any], headers: dict[str, str], message: str
) -> None:
    resp = predict(proxy, context, headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["message"].startswith(message), resp.json()["message"]
    assert resp.headers["x-served-by"] == "proxy"


@pytest.mark.parametrize(("body", "status", "text"), BAD_PREDICT_BODIES,
                         ids=[str(i) for i in range(len(BAD_PREDICT_BODIES))])
def test_bad_rows_are_refused_by_the_proxy(
    proxy: Client, body: object, status: int, text: str
) -> None:
    resp = post_body(proxy, "/predict", body)
    assert resp.status_code == status, resp.text
    assert text in resp.json()["message"]
    assert resp.headers["x-served-by"] == "proxy"
