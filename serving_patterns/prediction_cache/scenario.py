"""Demo traffic for S8: the same input twice (a MISS, then a HIT), then a different one.

Then a latency sample: new inputs (MISSes), each repeated (HITs), classed by the `X-Cache`
header each reply carries; `draw` turns them into `latency.png`, the two latency
distributions on a log scale.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patternkit import charts
from patternkit.client import IRIS_ROWS, Client
from patternkit.topology import Stack

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PICTURE = "latency.png"
INPUTS = 8  # new inputs, each a MISS ...
REPEATS = 5  # ... then repeated, each repeat a HIT
_samples = itertools.count()  # a second sample in one process sends other inputs


def sample_latency(url: str) -> dict[str, list[float]]:
    """Milliseconds per reply, by the X-Cache header it carries: one client sends INPUTS new
    inputs one after another, each followed by REPEATS repeats of it."""
    tag = next(_samples)
    by_cache: dict[str, list[float]] = {"HIT": [], "MISS": []}
    with Client(url) as proxy:
        for i in range(INPUTS):
            row = [6.0, 3.0, 4.0, round(1.0 + (tag * 100 + i) / 10_000, 4)]
            for _ in range(1 + REPEATS):
                resp, ms = proxy.timed("POST", "/predict", json={"data": [row]})
                resp.raise_for_status()
                by_cache.setdefault(resp.headers.get("x-cache", "?"), []).append(ms)
    return by_cache


def draw(by_cache: dict[str, list[float]], delay_ms: int) -> Figure:
    """The ECDF of HIT and MISS latencies on a log axis, the predictor's delay marked."""
    fig, (ax,) = charts.figure(
        "S8 prediction cache: how long a cache HIT and a MISS take", heights=(4.4,), width=9
    )
    for cache, color in (("HIT", charts.COLORS["hit"]), ("MISS", charts.COLORS["miss"])):
        ms = by_cache.get(cache, [])
        if ms:
            charts.ecdf(ax, ms, f"{cache}: {len(ms)} replies, median "
                        f"{statistics.median(ms):.1f} ms", color)
    ax.axvline(delay_ms, color=charts.COLORS["muted"], ls=":", lw=1.2,
               label=f"the predictor's {delay_ms} ms per call (DELAY_MS)")
    charts.log_scale(ax, "x")
    every = [ms for values in by_cache.values() for ms in values]
    ax.set_xlim(*charts.log_limits([*every, delay_ms], pad=1.2, decades=True))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("latency seen by the client (ms, log scale)", fontsize=9)
    ax.set_ylabel("share of replies at or below", fontsize=9)
    ax.set_title(f"one client, one request at a time: {INPUTS} new inputs (MISS), each "
                 f"repeated {REPEATS} times (HIT)", fontsize=8.5,
                 color=charts.COLORS["muted"])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8,
              frameon=False)
    return fig


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    """The demo: its table rows; the picture goes to `out` (the run directory by default)."""
    rows: list[dict[str, Any]] = []
    calls = [
        ("first call", IRIS_ROWS[0][0]),
        ("same input again", IRIS_ROWS[0][0]),
        ("different input", IRIS_ROWS[2][0]),
        ("that one again", IRIS_ROWS[2][0]),
    ]
    with Client(stack.url()) as proxy, Client(stack.url("predictor")) as predictor:
        for what, features in calls:
            before = predictor.stats()["hits"]
            resp, ms = proxy.timed("POST", "/predict", json={"data": [features]})
            rows.append({
                "call": what,
                "input": features,
                "x_cache": resp.headers.get("x-cache"),
                "predicted": resp.json()["prediction"][0],
                "version": resp.headers.get("x-model-version"),
                "predictor_calls": predictor.stats()["hits"] - before,
                "ms": round(ms, 1),
            })
        before = predictor.stats()["hits"]
        by_cache = sample_latency(stack.url())
        seen = {cache: ms for cache, ms in sorted(by_cache.items()) if ms}
        rows.append({
            "call": f"{INPUTS} new inputs, {REPEATS} repeats each",
            "x_cache": ", ".join(f"{len(ms)} {cache}" for cache, ms in seen.items()),
            "predictor_calls": predictor.stats()["hits"] - before,
            "ms": " / ".join(f"{cache} {statistics.median(ms):.1f}"
                             for cache, ms in seen.items()) + " (median)",
        })
        cache = proxy.stats()["cache"]
    rows.append({"call": "proxy /stats",
                 "x_cache": f"hits {cache['hits']}, misses {cache['misses']}, "
                            f"redis errors {cache['errors']}"})
    delay_ms = int(stack.proc("predictor").env["DELAY_MS"])
    charts.picture((out or stack.run_dir) / PICTURE, lambda: draw(by_cache, delay_ms))
    return rows
