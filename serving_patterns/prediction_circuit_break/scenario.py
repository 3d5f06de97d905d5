"""Demo traffic for S10: bursts below and above the cap, then failing predictors and recovery.

`burst` fires N requests at once (patternkit.client.burst: a bare asyncio HTTP client, so
it measures the proxy, not the client); the tests use it too. The scenario shows
that a burst over the cap is shed at once, that failing predictors open their breakers and
calls then fall back without reaching them, and that healthy predictors close them again.
"""

from __future__ import annotations

import statistics
from typing import Any

from patternkit.client import IRIS_ROWS, BurstReply, Client, wait_until
from patternkit.client import burst as client_burst
from patternkit.topology import Stack

ROW = IRIS_ROWS[0][0]


class Shot(BurstReply):
    """One request of a burst, as the caller saw it."""

    @property
    def fallback(self) -> bool:
        return self.body.get("fallback") is True

    @property
    def answered(self) -> bool:
        """A real prediction from a predictor."""
        return self.status == 200 and not self.fallback


def burst(url: str, n: int, body: dict[str, Any] | None = None) -> list[Shot]:
    """POST `body` (one iris row by default) to `url`/predict `n` times at once."""
    replies = client_burst(url.rstrip("/") + "/predict", n, body or {"data": [ROW]})
    return [Shot(r.status, r.ms, r.body, r.headers) for r in replies]


def median_ms(shots: list[Shot]) -> float | str:
    return round(statistics.median(s.ms for s in shots), 1) if shots else "-"


def predictor_hits(stack: Stack) -> int:
    total = 0
    for url in stack.urls("predictor"):
        with Client(url) as predictor:
            total += int(predictor.stats()["hits"])
    return total


def breaker_states(proxy: Client) -> str:
    return " / ".join(b["state"] for b in proxy.get("/breaker").json()["backends"])


def observe(what: str, shots: list[Shot], stack: Stack, proxy: Client,
            predictor_calls: int) -> dict[str, Any]:
    answered = [s for s in shots if s.answered]
    fallbacks = [s for s in shots if s.fallback]
    reasons = sorted({s.body["reason"] for s in fallbacks})
    peak = []
    for url in stack.urls("predictor"):
        with Client(url) as predictor:
            peak.append(str(predictor.stats()["max_in_flight"]))
    return {
        "step": what,
        "sent": len(shots),
        "answered": len(answered),
        "fallbacks": f"{len(fallbacks)} {','.join(reasons)}".strip(),
        "errors": len(shots) - len(answered) - len(fallbacks),
        "predictor_calls": predictor_calls,
        "answer_ms": median_ms(answered),
        "fallback_ms": median_ms(fallbacks),
        "peak_in_flight": "/".join(peak),
        "breakers": breaker_states(proxy),
    }


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    url = stack.url()
    with Client(url) as proxy:

        def step(what: str, n: int, at_once: bool = True) -> None:
            before = predictor_hits(stack)
            if at_once:
                shots = burst(url, n)
            else:
                shots = []
                for _ in range(n):
                    resp, ms = proxy.timed("POST", "/predict", json={"data": [ROW]})
                    shots.append(Shot(resp.status_code, ms, resp.json(), dict(resp.headers)))
            rows.append(observe(what, shots, stack, proxy, predictor_hits(stack) - before))

        step("10 at once (cap 5 x 2 replicas)", 10)
        step("30 at once", 30)

        for name in stack.instances("predictor"):
            stack.restart(name, env={"FAIL_MODE": "always"})
        step("predictors fail: 6 at once", 6)
        step("breakers open: 5 calls", 5, at_once=False)

        for name in stack.instances("predictor"):
            stack.restart(name, env={"FAIL_MODE": "none"})
        wait_until(lambda: "open" not in breaker_states(proxy).split(" / "), timeout=10,
                   what="the cooldown ending")
        step("healthy again: trial calls", 2, at_once=False)
        step("10 at once, closed again", 10)
    return rows
