"""Demo traffic for Q1: all of iris through the proxy, the shadow report, half the traffic
mirrored, then B failing while the clients go on being served by A."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from patternkit.client import Client, LatencyStats, wait_until
from patternkit.models import load_dataset
from patternkit.topology import Stack


def send(proxy: Client, rows: list[list[float]], prefix: str) -> tuple[LatencyStats, Counter[str]]:
    """One request per row; the client's latency and what `X-Shadow` said."""
    latency, shadow = LatencyStats(), Counter[str]()
    for i, row in enumerate(rows):
        resp, ms = proxy.timed("POST", "/predict", json={"data": [row]},
                               headers={"x-request-id": f"{prefix}-{i}"})
        resp.raise_for_status()
        assert resp.headers["x-served-by"] == "a", resp.headers
        latency.add(ms)
        shadow[resp.headers["x-shadow"]] += 1
    return latency, shadow


def report(proxy: Client, since: datetime) -> dict[str, Any]:
    """The shadow report over the requests since `since`, once every mirror has answered."""
    def settled() -> dict[str, Any] | None:
        body: dict[str, Any] = proxy.get("/shadow/report",
                                         params={"since": since.isoformat()}).json()
        return body if body["pending"] == 0 else None

    return wait_until(settled, timeout=30, interval=0.2, what="every mirrored request answered")


def ms(stats: LatencyStats) -> str:
    s = stats.summary()
    return f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms"


def run(stack: Stack) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def say(step: str, observed: str) -> None:
        out.append({"step": step, "observed": observed})

    X, _, _, _ = load_dataset("iris")
    rows = X.tolist()
    delay = stack.proc("b").env["DELAY_MS"]
    with Client(stack.url()) as proxy:
        since = datetime.now(UTC)
        latency, shadow = send(proxy, rows, "iris")
        say(f"{len(rows)} iris rows, one request each", f"all answered by A (X-Served-By: a); "
            f"client {ms(latency)}; X-Shadow {dict(shadow)}")
        rep = report(proxy, since)
        labels, probs, lat = rep["labels"], rep["probabilities"], rep["latency"]
        say("labels: A vs B | A vs A'",
            f"agree {labels['agreement_a_b']:.1%} | {labels['agreement_a_a_prime']:.1%}: "
            f"raw {labels['raw']}, noise {labels['noise']}, flagged {labels['flagged']}")
        q = probs["diff_a_b"]
        n = probs["diff_a_a_prime"]
        say("prob. difference A-B (p50/p90/p99/max)",
            f"{q['p50']:.3f} / {q['p90']:.3f} / {q['p99']:.3f} / {q['max']:.3f}")
        say("prob. difference A-A' (the noise)",
            f"{n['p50']:.3f} / {n['p90']:.3f} / {n['p99']:.3f} / {n['max']:.3f}")
        say("noise floor (q0.99 of A-A')",
            f"{probs['noise_floor']:.4f}: {probs['raw']} rows of B above it, {probs['noise']} "
            f"of A'; flagged {probs['flagged']}")
        top = rep["flagged"][0]
        say("most different row", f"{top['request_id']}: label A {top['label_a']}, "
            f"A' {top['label_a_prime']}, B {top['label_b']}, diff {top['diff_a_b']:.3f} "
            f"(A' {top['diff_a_a_prime']:.3f})")
        say("latency A | A' | B (as the proxy waited)",
            " | ".join(f"p50 {lat[s]['p50_ms']:.1f} p99 {lat[s]['p99_ms']:.1f} ms"
                       for s in ("a", "a_prime", "b")) + f" (B has DELAY_MS={delay})")
        say("verdict", rep["verdict"])

        proxy.request("PUT", "/config", json={"mirror_fraction": 0.5}).raise_for_status()
        _, shadow = send(proxy, rows[:100], "half")
        say("PUT /config mirror_fraction 0.5, 100 requests", f"X-Shadow {dict(shadow)}")
        proxy.request("PUT", "/config", json={"mirror_fraction": 1.0}).raise_for_status()

        stack.restart("b", env={"FAIL_MODE": "always"})
        since = datetime.now(UTC)
        failing, _ = send(proxy, rows[:50], "failing")
        rep = report(proxy, since)
        b_errors = rep["errors"]["b"]
        say(f"B fails every call (FAIL_MODE=always, after {delay} ms), 50 requests",
            f"all answered by A; client {ms(failing)} (before: {ms(latency)}); "
            f"B errors {b_errors['errors']}/{b_errors['calls']} {b_errors['by_error']}")
        stats = proxy.stats()["mirror"]
        say("mirror counts (/stats)", f"mirrored {stats['mirrored']}, skipped "
            f"{stats['skipped']}, dropped {stats['dropped']}; B calls "
            f"{ {k: v for k, v in stats['calls']['b'].items() if v} }")
        say("client latency ratio, failing B / healthy B",
            f"{statistics.median(failing.samples) / statistics.median(latency.samples):.2f}")
    return out
