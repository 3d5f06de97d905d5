"""Demo traffic for Q2: seeded users through the A/B proxy, in three phases, and their reports.

400 users at the starting 10% to B; then B is ramped up to 50% (`PUT /config`: a new phase)
and 2,000 more users come, B's answers converting at 16% against A's 10%; then B is restarted
failing every second call (`FAIL_MODE=every:2`) in a new 50% phase, and users keep coming
until the guard rolls B back. The table shows each phase's report: split, conversions, the
always-valid difference with its interval and p-value beside the one-look p-value, the MDE,
the SRM check, the guardrails and the decision. The helpers are shared with the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from patternkit.client import Client, wait_until
from patternkit.topology import Stack
from patternkit.usersim import SimUser, Visit, drive
from qa_patterns.online_ab_test import simulator


def logged(proxy: Client, visits: Sequence[Visit], phase: int) -> dict[str, Any]:
    """The report of `phase` once the prediction log holds every exposure of `visits` in it
    (the log writes in batches, off the request path)."""
    sent = sum(1 for v in visits if v.phase == phase and v.status != 422)

    def complete() -> dict[str, Any] | None:
        found: dict[str, Any] = proxy.get("/ab/report", params={"phase": phase}).json()
        seen = sum(found["variants"][v]["requests"] for v in ("a", "b"))
        return found if seen >= sent else None

    return wait_until(complete, timeout=30, what=f"phase {phase}'s {sent} exposures in the log")


SHORT = {"error_rate": "errors", "latency_p99": "p99", "kpi": "kpi"}


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def summary(found: dict[str, Any]) -> dict[str, str]:
    """One column of the demo table: what a phase's report says."""
    a, b = found["variants"]["a"], found["variants"]["b"]
    effect, power, srm = found["effect"], found["power"], found["srm"]
    low, high = effect["ci"]
    rails, experiment = found["guardrails"], found["experiment"]
    return {
        "phase (weight of B)": f"{experiment['phase']} ({experiment['weight_b']:g}%)",
        "users A / B": f"{a['units']} / {b['units']}",
        "share of B": pct(srm["observed_share"]["b"]),
        "SRM chi-square p": f"{srm['p_value']:.3g}" + (" FLAGGED" if srm["flagged"] else ""),
        "conversion A / B": f"{pct(a['rate'])} / {pct(b['rate'])}",
        "B - A [always-valid 95% CI]": (f"{pct(effect['diff'], 2)} [{pct(low, 2)}, "
                                        f"{pct(high, 2)}]"),
        "p always-valid / one-look": (f"{effect['p_value']:.3g} / "
                                      f"{effect['fixed_horizon_p']:.3g}"),
        "MDE sequential / one-look": (f"{pct(power['mde_sequential'])} / "
                                      f"{pct(power['mde_fixed_horizon'])}"),
        "errors A / B": f"{a['errors']} / {b['errors']} of {a['requests']} / {b['requests']}",
        "p99 ms A / B": (f"{a['latency_ms']['p99'] or 0:.0f} / "
                         f"{b['latency_ms']['p99'] or 0:.0f}"),
        "guardrails": ", ".join(f"{SHORT.get(k, k)} {v['status']}" for k, v in rails.items()),
        "decision": found["decision"]["decision"],
    }


def transpose(columns: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """Steps as columns, report lines as rows (a readable table of many numbers)."""
    lines: list[str] = []
    for col in columns.values():
        lines += [line for line in col if line not in lines]
    return [{"": line, **{step: col.get(line, "") for step, col in columns.items()}}
            for line in lines]


def until_rolled_back(
    url: str, proxy: Client, users: Callable[[int, int], list[SimUser]],
    converts: Callable[[SimUser, Visit], bool], batch: int = 50, most: int = 3000,
) -> list[Visit]:
    """Users in batches until the guard has set B's weight to 0 (or `most` users came)."""
    visits: list[Visit] = []
    while proxy.get("/config").json()["weight_b"] > 0:
        if len(visits) >= most:
            raise AssertionError(f"the guard did not roll B back within {most} users: "
                                 f"{proxy.get('/ab/guard').json()}")
        visits += drive(url, users(batch, len(visits)), converts)
    return visits


def run(stack: Stack) -> list[dict[str, Any]]:
    url = stack.url()
    columns: dict[str, dict[str, str]] = {}
    with Client(url) as proxy:
        first = proxy.get("/config").json()["phase"]
        visits = drive(url, simulator.users(400), simulator.converts)
        columns["10% to B: 400 users"] = summary(logged(proxy, visits, first))

        ramp = proxy.put("/config", json={"weight_b": 50}).json()["phase"]
        visits = drive(url, simulator.users(2000, start=400), simulator.converts)
        columns["ramped to 50%: 2,000 users"] = summary(logged(proxy, visits, ramp))

        stack.restart("b", env={"FAIL_MODE": "every:2"})
        broken = proxy.put("/config", json={"weight_b": 50}).json()["phase"]
        visits = until_rolled_back(
            url, proxy, lambda n, i: simulator.users(n, start=2400 + i), simulator.converts)
        found = logged(proxy, visits, broken)
        rollback = proxy.get("/ab/guard").json()["last_rollback"]
        column = summary(found)
        column["guard"] = (f"{rollback['reason'].split(';')[0]}, after {len(visits)} users: "
                           f"weight of B now {proxy.get('/config').json()['weight_b']:g}%")
        columns["B fails every 2nd call"] = column
    return transpose(columns)
