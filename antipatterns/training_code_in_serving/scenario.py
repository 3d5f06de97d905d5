"""Demo traffic for TA2: the fat server and the slim server measured side by side.

Both get the same rows (the same predictions); then `/train` on each (200 on fat, 404 on
slim); then what each imported (`/debug/modules`: the training stack, and the installed size
of the distributions it came from, the image-size stand-in). Last, each server is restarted
`ROUNDS` times in turn: the time from spawn to `/ready` 200 and its resident memory (VmRSS
from /proc) after a few predictions, medians of the rounds. The helpers are shared with the
integration tests, so the demo table and the tests measure the same thing.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from patternkit.client import IRIS_ROWS, Client
from patternkit.topology import Stack

SIDES = ("fat_server", "slim_server")
ROWS = [row for row, _ in IRIS_ROWS]
ROUNDS = 3  # restarts per server for the start time and RSS
WARM_CALLS = 20  # predictions before the RSS is read
MB = 1_000_000


def predictions(stack: Stack, side: str) -> dict[str, Any]:
    """The answer to `ROWS` from one side: status, labels and probabilities."""
    with Client(stack.url(side)) as client:
        resp = client.post("/predict", json={"data": ROWS})
    body = resp.json()
    return {"status": resp.status_code, "prediction": body.get("prediction"),
            "probabilities": body.get("probabilities"), "model": body.get("model"),
            "version": body.get("version")}


def modules(stack: Stack, side: str) -> dict[str, Any]:
    with Client(stack.url(side)) as client:
        resp = client.get("/debug/modules")
    resp.raise_for_status()
    found: dict[str, Any] = resp.json()
    return found


def rss_bytes(pid: int) -> int:
    """The resident set size of a process, from /proc/<pid>/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cold_start(stack: Stack, side: str, timeout: float = 60.0) -> dict[str, float]:
    """Restart `side` and time it from spawn to `/ready` 200 (polled every 10 ms); then send
    `WARM_CALLS` predictions and read its RSS."""
    stack.stop_service(side)
    url = stack.url(side)
    started = time.perf_counter()
    stack.start_service(side, wait=False)
    deadline = started + timeout
    with httpx.Client(timeout=1.0) as http:
        while True:
            try:
                if http.get(url + "/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{side} was not ready {timeout:.0f}s after its start")
            time.sleep(0.01)
        took = time.perf_counter() - started
        for _ in range(WARM_CALLS):
            http.post(url + "/predict", json={"data": ROWS}).raise_for_status()
    pid = stack.status(side)[0].pid
    assert pid is not None, f"{side} has no pid"
    return {"start_s": took, "rss_bytes": rss_bytes(pid)}


def footprint(stack: Stack, rounds: int = ROUNDS) -> dict[str, dict[str, Any]]:
    """Median start time and RSS of each side over `rounds` restarts, the sides in turn, and
    every start time (`starts`)."""
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for _ in range(rounds):
        for side in SIDES:
            runs[side].append(cold_start(stack, side))
    return {side: {"start_s": statistics.median(r["start_s"] for r in found),
                   "rss_bytes": statistics.median(r["rss_bytes"] for r in found),
                   "starts": [round(r["start_s"], 2) for r in found]}
            for side, found in runs.items()}


def train_status(stack: Stack, side: str) -> tuple[int, dict[str, Any]]:
    with Client(stack.url(side), timeout=60.0) as client:
        resp = client.post("/train", json={"version": "1.1.0"})
    return resp.status_code, resp.json()


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(measure: str, fat: object, slim: object, ratio: str = "") -> None:
        rows.append({"measure": measure, "fat_server": fat, "slim_server": slim,
                     "slim / fat": ratio})

    answers = {side: predictions(stack, side) for side in SIDES}
    same = answers["fat_server"] == answers["slim_server"]
    row(f"prediction of {len(ROWS)} iris rows", answers["fat_server"]["prediction"],
        answers["slim_server"]["prediction"], "identical" if same else "DIFFERENT")

    trained = {side: train_status(stack, side) for side in SIDES}
    fat_train = trained["fat_server"][1]
    row("POST /train", f"{trained['fat_server'][0]}: {fat_train.get('rows_read')} DWH rows, "
        f"accuracy {fat_train.get('metrics', {}).get('accuracy')}",
        f"{trained['slim_server'][0]}", "")
    env = {s: "DWH_URL" in stack.proc(s).env for s in SIDES}
    row("DWH_URL in its environment", env["fat_server"], env["slim_server"])

    mods = {side: modules(stack, side) for side in SIDES}
    stack_of = {s: ", ".join(mods[s]["training_stack"]) or "none" for s in SIDES}
    row("training stack imported", stack_of["fat_server"], stack_of["slim_server"])
    n = {s: len(mods[s]["modules"]) for s in SIDES}
    row("top-level packages imported", n["fat_server"], n["slim_server"],
        f"{n['slim_server'] / n['fat_server']:.2f}")
    closure = {s: mods[s]["closure_bytes"] for s in SIDES}
    size = {s: f"{closure[s] / MB:.0f} ({len(mods[s]['distributions'])} dists)" for s in SIDES}
    row("dependency closure (installed MB)", size["fat_server"], size["slim_server"],
        f"{closure['slim_server'] / closure['fat_server']:.2f}")

    measured = footprint(stack)
    rss = {s: measured[s]["rss_bytes"] for s in SIDES}
    start = {s: measured[s]["start_s"] for s in SIDES}
    row(f"RSS after {WARM_CALLS} predictions (MB, median of {ROUNDS})",
        f"{rss['fat_server'] / MB:.0f}", f"{rss['slim_server'] / MB:.0f}",
        f"{rss['slim_server'] / rss['fat_server']:.2f}")
    row(f"start to /ready (s, median of {ROUNDS})", f"{start['fat_server']:.2f}",
        f"{start['slim_server']:.2f}",
        f"{start['slim_server'] / start['fat_server']:.2f}")
    return rows
