"""Demo traffic for SA2: the same four experiments on the monolith and on one service per model.

Both sides answer A, B and C; then B's CPU-hog input runs while A is called; then B is rolled
out to 2.0.0 (the whole monolith restarts, or only B's service) while A, B and C are called
continuously; last, B's poison input kills whatever process serves B, and 20 calls to A and C
follow. The helpers here (`Traffic`, `hog_while_calling_a`, `rollout`, ...) are shared with the
integration tests, so the demo table and the tests measure the same thing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx

from antipatterns.all_in_one.trainer import model_dir
from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.topology import Stack

MODELS = ("a", "b", "c")
# the service a user calls on each side
SIDES = {"monolith": "monolith", "microservices": "router"}
# the service(s) a rollout of B restarts on each side, and the variable that names B's model
ROLLOUT = {"monolith": ("monolith", "MODEL_B_PATH"), "microservices": ("b", "MODEL_PATH")}
# wine sample 0 (class 0): model C takes the 13 wine features
WINE_ROW = [14.23, 1.71, 2.43, 15.6, 127.0, 2.8, 3.06, 0.28, 2.29, 5.64, 1.04, 3.92, 1065.0]
ROWS = {"a": IRIS_ROWS[0][0], "b": IRIS_ROWS[2][0], "c": WINE_ROW}
CALL_INTERVAL_S = 0.02  # pace of the steady background traffic (about 50 rounds a second)


def trigger_row(stack: Stack, knob: str) -> list[float]:
    """An iris row for model B whose first feature is B's `POISON_VALUE` or `HOG_VALUE`."""
    return [float(stack.proc("b").env[knob]), *ROWS["b"][1:]]


def call(client: Client, model: str, row: list[float] | None = None) -> httpx.Response | str:
    """One prediction: the response, or the name of the transport error (no retries)."""
    try:
        return client.post(f"/predict/{model}", json={"data": [row or ROWS[model]]})
    except httpx.HTTPError as exc:
        return type(exc).__name__


def ok(result: httpx.Response | str) -> bool:
    return isinstance(result, httpx.Response) and result.status_code == 200


def outcome(result: httpx.Response | str) -> str:
    """A short description of what the caller saw."""
    if isinstance(result, str):
        return f"no response ({result})"
    if result.status_code == 200:
        return "200"
    return f"{result.status_code}: {result.json().get('message', '')}"


def side_client(stack: Stack, side: str, timeout: float = 10.0) -> Client:
    """A client for one side, without retries: a failed call counts as failed."""
    return Client(stack.url(SIDES[side]), timeout=timeout, retries=0)


def failures(client: Client, models: Iterable[str], n: int) -> int:
    """How many of `n` calls, spread over `models` in turn, did not return 200."""
    order = list(models)
    return sum(not ok(call(client, order[i % len(order)])) for i in range(n))


class Traffic:
    """Calls every model in turn, at a steady pace, in a background thread until stopped."""

    def __init__(self, base_url: str, models: Iterable[str] = MODELS) -> None:
        self.client = Client(base_url, timeout=5.0, retries=0)
        self.models = list(models)
        self.calls = dict.fromkeys(self.models, 0)
        self.failed = dict.fromkeys(self.models, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for model in self.models:
                result = call(self.client, model)
                self.calls[model] += 1
                self.failed[model] += not ok(result)
            self._stop.wait(CALL_INTERVAL_S)

    def __enter__(self) -> Traffic:
        self._thread.start()
        wait_until(lambda: min(self.calls.values()) >= 3, timeout=10,
                   what="the background traffic getting going")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self.client.close()

    def summary(self, model: str) -> str:
        return f"{self.failed[model]}/{self.calls[model]}"


def hog_while_calling_a(stack: Stack, side: str) -> dict[str, Any]:
    """Send B's CPU-hog input and call A until B answers: how long did A's calls take?"""
    hog = trigger_row(stack, "HOG_VALUE")
    b_result: dict[str, Any] = {}

    def send_hog() -> None:
        with side_client(stack, side) as client:
            started = time.perf_counter()
            b_result["response"] = call(client, "b", hog)
            b_result["ms"] = (time.perf_counter() - started) * 1000

    thread = threading.Thread(target=send_hog, daemon=True)
    a_ms: list[float] = []
    a_failed = 0
    with side_client(stack, side) as client:
        thread.start()
        while thread.is_alive() or not a_ms:
            started = time.perf_counter()
            a_failed += not ok(call(client, "a"))
            a_ms.append((time.perf_counter() - started) * 1000)
    thread.join()
    return {"b_status": outcome(b_result["response"]), "b_ms": round(b_result["ms"]),
            "a_calls": len(a_ms), "a_failed": a_failed, "a_max_ms": round(max(a_ms))}


def rollout(stack: Stack, side: str, key: str = "b-v2") -> dict[str, Any]:
    """Roll B out to the artifact `key` while A, B and C are called; count what failed."""
    service, variable = ROLLOUT[side]
    with Traffic(stack.url(SIDES[side])) as traffic:
        started = time.perf_counter()
        stack.restart(service, env={variable: str(model_dir(stack.run_dir, key))})
        took = time.perf_counter() - started
    with side_client(stack, side) as client:
        after = call(client, "b")
    version = after.json().get("version") if ok(after) else outcome(after)
    return {"restarted": service, "seconds": round(took, 1), "traffic": traffic,
            "b_version": version}


def poison(stack: Stack, side: str, n: int = 20) -> dict[str, Any]:
    """Send B's poison input, wait for its process to die, then call A and C `n` times."""
    victim = ROLLOUT[side][0]
    with side_client(stack, side) as client:
        hit = call(client, "b", trigger_row(stack, "POISON_VALUE"))
        wait_until(lambda: stack.status(victim)[0].state == "exited", timeout=10,
                   what=f"{victim} exiting after the poison input")
        return {"poison": hit, "died": victim, "a_c_failed": failures(client, ("a", "c"), n),
                "n": n, "b_after": call(client, "b")}


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sides = list(SIDES)

    def row(step: str, values: dict[str, Any]) -> None:
        rows.append({"step": step, **values})

    answers = {}
    for side in sides:
        with side_client(stack, side) as client:
            results = [call(client, m) for m in MODELS]
        answers[side] = " ".join(
            f"{m}={r.status_code} by {r.headers['x-served-by']}" if isinstance(r, httpx.Response)
            else f"{m}={r}" for m, r in zip(MODELS, results, strict=True)
        )
    row("A, B, C answer", answers)

    hog_ms = stack.proc("b").env["HOG_MS"]
    hogs = {side: hog_while_calling_a(stack, side) for side in sides}
    row(f"B busy {hog_ms} ms (CPU hog): slowest A call",
        {s: f"{h['a_max_ms']} ms ({h['a_calls']} calls, {h['a_failed']} failed)"
         for s, h in hogs.items()})

    outs = {side: rollout(stack, side) for side in sides}
    row("rollout of B to 2.0.0: restarted", {s: f"{o['restarted']} ({o['seconds']} s)"
                                             for s, o in outs.items()})
    for model in MODELS:
        row(f"  {model.upper()} calls failed during it",
            {s: o["traffic"].summary(model) for s, o in outs.items()})
    row("  B's version afterwards", {s: o["b_version"] for s, o in outs.items()})

    hits = {side: poison(stack, side) for side in sides}
    row("poison input to B", {s: outcome(h["poison"]) for s, h in hits.items()})
    row("  process that died", {s: h["died"] for s, h in hits.items()})
    row("  A+C calls failed afterwards",
        {s: f"{h['a_c_failed']}/{h['n']}" for s, h in hits.items()})
    row("  B afterwards", {s: outcome(h["b_after"]) for s, h in hits.items()})
    return rows
