"""Demo traffic for QA1: the offline verdict, then seeded users through Q2's A/B proxy.

The offline report (held-out accuracy) ranks B first. Then up to 400 seeded users come, half
to each variant by their hash; each converts when the model answers what it really wants
(`simulator.py`). The guard, which has the KPI as a guardrail, rolls B back once B's loss is
beyond noise at three checks; the table puts the two rankings side by side with the online
difference, its always-valid interval, the decision and the guard. Shared with the tests.
"""

from __future__ import annotations

from typing import Any

from antipatterns.offline_only import simulator
from patternkit.client import Client, wait_until
from patternkit.topology import Stack
from patternkit.usersim import Visit, drive
from qa_patterns.online_ab_test.scenario import logged, pct

USERS = 400


def online_test(url: str, proxy: Client, n: int = USERS, batch: int = 50) -> tuple[
    int, list[Visit]
]:
    """The experiment's phase and its users' visits: `n` users, in batches while B still gets
    traffic, then the wait for the guard's verdict (it judges the data in the log)."""
    phase = proxy.get("/config").json()["phase"]
    visits: list[Visit] = []
    while len(visits) < n and proxy.get("/config").json()["weight_b"] > 0:
        visits += drive(url, simulator.users(min(batch, n - len(visits)), start=len(visits)),
                        simulator.converts)
    wait_until(lambda: proxy.get("/config").json()["weight_b"] == 0, timeout=60,
               what="the guard rolling B back")
    return phase, visits


def side_by_side(found: dict[str, Any]) -> list[dict[str, str]]:
    rankings = found["rankings"]
    rows = []
    for off, on in zip(rankings["offline"], rankings["online"], strict=True):
        rows.append({
            "": f"rank {off['rank']}",
            "offline: held-out accuracy": f"{off['variant'].upper()} {off['model']} "
                                          f"{pct(off['accuracy'])}",
            "online: conversion rate": f"{on['variant'].upper()} {on['model']} "
                                       f"{pct(on['conversion_rate'])} of {on['users']} users",
        })
    low, high = found["effect"]["ci"]
    offline = {r["variant"]: r["accuracy"] for r in rankings["offline"]}
    rows.append({
        "": "B - A",
        "offline: held-out accuracy": f"{(offline['b'] - offline['a']) * 100:+.1f} points",
        "online: conversion rate": (f"{pct(found['effect']['diff'])} [{pct(low)}, {pct(high)}] "
                                    f"always-valid, p={found['effect']['p_value']:.2g}"),
    })
    rows.append({"": "decision", "offline: held-out accuracy": "ship B",
                 "online: conversion rate": f"{found['decision']['decision']} (GET /ab/decision)"})
    reason = found["decision"]["reasons"][0]
    rows.append({"": "why", "offline: held-out accuracy": "B is right on every held-out row",
                 "online: conversion rate": reason.split("; last: ")[0]})
    return rows


def run(stack: Stack) -> list[dict[str, Any]]:
    url = stack.url()
    with Client(url) as proxy:
        phase, visits = online_test(url, proxy)
        found = logged(proxy, visits, phase)
        rows = side_by_side(found)
        after = drive(url, simulator.users(20, start=10_000), simulator.converts)
        now = proxy.get("/config").json()
        rows.append({"": "afterwards", "offline: held-out accuracy": "",
                     "online: conversion rate": (
                         f"weight of B {now['weight_b']:g}%: the next {len(after)} users got "
                         f"{'/'.join(sorted({v.variant or '?' for v in after}))}")})
    return rows
