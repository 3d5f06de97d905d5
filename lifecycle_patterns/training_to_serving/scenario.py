"""Demo of L2: injected drift closes the loop, and a canary that errs is rolled back.

Traffic of iris rows runs through the proxy the whole time. First the boot cycle's timeline
(the first stable version). Then the traffic's petal length is shifted by DRIFT_CM: the drift
monitor's `feature_drift` alert fires after two windows and is posted to the controller's
webhook, which retrains, gates, deploys and canaries the candidate until the guard promotes
it; the timeline is printed with timestamps. Then a cycle by API whose predictors fail every
third call (FAIL_MODE=every:3): it passes the gate, and the guard rolls its canary back.
The last line counts what the clients saw; `training_to_serving.png` shows which version
answered the clients second by second, with each cycle's steps marked. The helpers are shared
with the tests.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patternkit import charts
from patternkit.client import Client, Sent, Traffic, print_table, wait_until
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


MARKS = {"drift_detected": "#d62728", "canary": "#e6b800", "promoted": "#2ca02c",
         "rolled_back": "#9467bd"}


def draw(sent: list[Sent], cycles: list[dict[str, Any]], offset: float, path: Path,
         bin_s: float = 0.5) -> Path | None:
    """Replies per version in `bin_s` bins (wall-clock = monotonic + `offset`), the cycles'
    drift, canary, promotion and rollback as vertical lines."""
    def make() -> Any:
        fig, (ax,) = charts.figure("Training-to-serving: which version answered, and why it "
                                   "changed", (4.0,), width=11.0)
        t0 = min(s.started for s in sent) + offset
        versions = sorted({s.version or "error" for s in sent})
        counts: dict[str, Counter[int]] = {v: Counter() for v in versions}
        for s in sent:
            counts[s.version or "error"][int((s.started + offset - t0) / bin_s)] += 1
        bins = range(max(max(c, default=0) for c in counts.values()) + 1)
        xs = [(b + 0.5) * bin_s for b in bins]  # each bin at its middle
        ax.stackplot(xs, *[[counts[v][b] / bin_s for b in bins] for v in versions],
                     labels=[f"version {v}" for v in versions], alpha=0.85)
        for cycle in cycles:
            for e in cycle["timeline"]:
                if e["step"] in MARKS and e["at"] >= t0:
                    ax.axvline(e["at"] - t0, color=MARKS[e["step"]], lw=1.4, ls="--")
                    ax.annotate(f"{e['step']} {cycle['version'] or ''}", (e["at"] - t0, 0),
                                xytext=(3, 4), textcoords="offset points", rotation=90,
                                fontsize=8, color=MARKS[e["step"]])
        ax.set_xlabel("seconds")
        ax.set_ylabel("replies per second")
        ax.legend(loc="upper left", fontsize=8, framealpha=1)
        return fig

    return charts.picture(path, make)


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    out = out or Path(stack.run_dir)
    offset = time.time() - time.monotonic()
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
        cycles = [cycle, bad]
    print_table(rows)
    sent = [*normal.sent(), *drifted.sent(), *canary.sent()]
    draw(sent, cycles, offset, out / "training_to_serving.png")
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
