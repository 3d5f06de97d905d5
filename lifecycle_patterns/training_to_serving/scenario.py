"""Demo of L2: injected drift closes the loop, and a canary that errs is rolled back.

Traffic of iris rows runs through the proxy the whole time. First the boot cycle's timeline
(the first stable version). Then the traffic's petal length is shifted by DRIFT_CM: the drift
monitor's `feature_drift` alert fires after two windows and is posted to the controller's
webhook, which retrains, gates, deploys and canaries the candidate until the guard promotes
it; the timeline is printed with timestamps. Then a cycle by API whose predictors fail every
third call (FAIL_MODE=every:3): it passes the gate, and the guard rolls its canary back.
The last line counts what the clients saw. The helpers are shared with the tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from patternkit.client import Client, Traffic, print_table, wait_until
from patternkit.topology import Stack

DRIFT_CM = 2.5  # added to petal_length: the drift the monitor must see


def sample_rows() -> list[list[float]]:
    """Every 2nd iris row: 75 rows spread like the training data (PSI < 0.11 per feature)."""
    from sklearn.datasets import load_iris

    data = load_iris().data[::2]
    return [[round(float(v), 1) for v in row] for row in data]


def drifted_rows() -> list[list[float]]:
    """The same rows with petal_length (feature 3) shifted by DRIFT_CM."""
    return [[a, b, round(c + DRIFT_CM, 1), d] for a, b, c, d in sample_rows()]


def cycle_done(controller: Client, cycle_id: int, timeout: float = 90.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found: dict[str, Any] = controller.get(f"/cycles/{cycle_id}").json()
        return found if found["status"] != "running" else None

    return wait_until(done, timeout, 0.3, what=f"cycle {cycle_id} to end")


def start_cycle(controller: Client, **body: Any) -> dict[str, Any]:
    resp = controller.post("/cycles", json=body)
    if resp.status_code != 202:
        raise RuntimeError(f"POST /cycles answered {resp.status_code}: {resp.text}")
    return cycle_done(controller, resp.json()["id"])


def alert_cycle(controller: Client, after: int, timeout: float = 60.0) -> dict[str, Any]:
    """The first cycle after id `after` that a drift alert started."""
    def started() -> dict[str, Any] | None:
        for c in controller.get("/cycles").json()["cycles"]:
            if c["id"] > after and c["timeline"][0]["step"] == "drift_detected":
                return dict(c)
        return None

    return wait_until(started, timeout, 0.3, what="a cycle started by a drift alert")


def timeline(cycle: dict[str, Any]) -> list[dict[str, Any]]:
    """The cycle's steps with their UTC times and seconds since the trigger."""
    return [{"cycle": cycle["id"], "at": datetime.fromtimestamp(e["at"], UTC).strftime(
        "%H:%M:%S.%f")[:-3], "t_s": f"{e['t_s']:.1f}", "step": e["step"],
             "detail": e["detail"][:110]} for e in cycle["timeline"]]


def run(stack: Stack) -> list[dict[str, Any]]:
    url = stack.url()
    rows: list[dict[str, Any]] = []
    with Client(stack.url("controller")) as controller:
        boot = controller.get("/cycles").json()["cycles"][-1]
        rows += timeline(boot)
        last = boot["id"]
        with Traffic(f"{url}/predict", {"data": sample_rows()}, senders=2) as normal:
            wait_until(lambda: len(normal.sent()) > 50, 30, what="some traffic")
        with Traffic(f"{url}/predict", {"data": drifted_rows()}, senders=2) as drifted:
            cycle = cycle_done(controller, alert_cycle(controller, last)["id"])
            rows += timeline(cycle)
            last = cycle["id"]
        with Traffic(f"{url}/predict", {"data": sample_rows()}, senders=2) as canary:
            bad = start_cycle(controller, reason="a candidate whose predictors fail every "
                              "3rd call", canary_faults={"fail_mode": "every:3"})
            rows += timeline(bad)
    print_table(rows)
    sent = [*normal.sent(), *drifted.sent(), *canary.sent()]
    failed = [*normal.failures(), *drifted.failures(), *canary.failures()]
    with Client(url) as proxy:
        found = proxy.get("/rollout").json()
    print(f"clients sent {len(sent)} requests, {len(failed)} failed; stable version now "
          f"{found['stable']}; retries on another member: "
          f"{proxy_retries(url)}", flush=True)
    return rows


def proxy_retries(url: str) -> int:
    with Client(url) as proxy:
        return int(proxy.stats().get("retries", 0))
