"""Demo traffic for S10: bursts below and above the cap, then failing predictors and recovery.

`burst` fires N requests at once (patternkit.client.burst: a bare asyncio HTTP client, so
it measures the proxy, not the client); the tests use it too. The scenario shows
that a burst over the cap is shed at once, that failing predictors open their breakers and
calls then fall back without reaching them, and that healthy predictors close them again.
Meanwhile a `Timeline` polls the proxy's `/breaker`; `draw` turns every request and those
samples into `breaker.png` (latency, slots in flight and breaker states on one time axis).
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patternkit import charts
from patternkit.client import IRIS_ROWS, BurstReply, Client, wait_until
from patternkit.client import burst as client_burst
from patternkit.topology import Stack

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROW = IRIS_ROWS[0][0]
PICTURE = "breaker.png"
POLL_S = 0.02  # how often the timeline reads /breaker


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
    return [Shot(r.status, r.ms, r.body, r.headers, r.sent) for r in replies]


def median_ms(shots: list[Shot]) -> float | str:
    return round(statistics.median(s.ms for s in shots), 1) if shots else "-"


def predictor_hits(predictors: list[Client]) -> int:
    return sum(int(predictor.stats()["hits"]) for predictor in predictors)


def breaker_states(proxy: Client) -> str:
    return " / ".join(b["state"] for b in proxy.get("/breaker").json()["backends"])


def observe(what: str, shots: list[Shot], predictors: list[Client], proxy: Client,
            predictor_calls: int) -> dict[str, Any]:
    answered = [s for s in shots if s.answered]
    fallbacks = [s for s in shots if s.fallback]
    reasons = sorted({s.body["reason"] for s in fallbacks})
    peak = [str(predictor.stats()["max_in_flight"]) for predictor in predictors]
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


@dataclass(frozen=True)
class Sample:
    """The proxy's /breaker at one moment: each predictor's breaker state and calls in flight."""

    t: float
    states: tuple[str, ...]
    in_flight: tuple[int, ...]


@dataclass
class Step:
    """One step of the scenario: when it began, what it did, the requests it sent."""

    t: float
    what: str
    shots: list[Shot] = field(default_factory=list)


@dataclass
class Timeline:
    """What the scenario saw on one clock (seconds since it began): its steps and their
    requests, the predictors' restarts, and the proxy's /breaker read every POLL_S by a thread."""

    url: str
    names: list[str]  # the predictors, in /breaker's order
    delay_ms: int
    t0: float = field(default_factory=time.perf_counter)
    steps: list[Step] = field(default_factory=list)
    restarts: list[tuple[float, float, str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    cap: int = 0
    ended: float = 0.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="breaker-poll", daemon=True)

    def __enter__(self) -> Timeline:
        self._poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._poller.join(timeout=5)
        self.ended = self.now()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _poll(self) -> None:
        with Client(self.url, timeout=2.0, retries=0) as proxy:
            while not self._stop.is_set():
                try:
                    backends = proxy.get("/breaker").json()["backends"]
                except Exception:  # a missed sample is a gap in the picture, nothing more
                    backends = None
                if backends:
                    self.cap = int(backends[0]["limit"])
                    self.samples.append(Sample(self.now(), tuple(b["state"] for b in backends),
                                               tuple(int(b["in_flight"]) for b in backends)))
                self._stop.wait(POLL_S)

    def restart(self, stack: Stack, env: dict[str, str], what: str) -> None:
        began = self.now()
        stack.restart("predictor", env=env)  # both replicas, stopped and started together
        self.restarts.append((began, self.now(), what))


def outcome(shot: Shot) -> str:
    if shot.answered:
        return "answer"
    if shot.fallback:
        return "breaker_open" if shot.body.get("reason") == "breaker_open" else "fallback"
    return "error"


OUTCOMES = {  # outcome: (legend, marker)
    "answer": ("real answer (200)", "o"),
    "fallback": ("fallback: shed, no free slot (503)", "v"),
    "breaker_open": ("fallback: breaker open (503)", "s"),
    "error": ("error: the failing predictor's 502", "X"),
}


def state_spans(samples: list[Sample], i: int, end: float) -> list[tuple[float, float, str]]:
    """Predictor `i`'s breaker as (start, end, state) runs, from consecutive samples."""
    spans: list[tuple[float, float, str]] = []
    for sample, after in zip(samples, [*samples[1:], None], strict=True):
        stop = after.t if after is not None else end
        state = sample.states[i]
        if spans and spans[-1][2] == state:
            spans[-1] = (spans[-1][0], stop, state)
        else:
            spans.append((sample.t, stop, state))
    return spans


def draw(timeline: Timeline) -> Figure:
    """Latency of every request, each predictor's calls in flight, each breaker's state."""
    plt = charts.pyplot()
    muted = charts.COLORS["muted"]
    fig, (lat, slots, states) = charts.figure(
        "S10 prediction circuit break: every request of the demo, the predictors' slots and "
        "breakers", heights=(3.6, 1.5, 1.0), width=11,
    )
    end = timeline.ended or timeline.now()
    for began, ended, what in timeline.restarts:
        for ax in (lat, slots, states):
            ax.axvspan(began, ended, color="#efefef", zorder=0)
        lat.text((began + ended) / 2, 0.3, what, transform=lat.get_xaxis_transform(),
                 ha="center", va="center", fontsize=7.5, color=muted)
    seen: set[str] = set()
    for n, step in enumerate(timeline.steps, 1):
        lat.axvline(step.t, color=muted, lw=0.6, ls="--", zorder=1)
        lat.text(step.t, 0.58, f"{n}. {step.what}", transform=lat.get_xaxis_transform(),
                 rotation=90, ha="right", va="center", fontsize=7)
        for kind, (label, marker) in OUTCOMES.items():
            shots = [s for s in step.shots if outcome(s) == kind]
            if not shots:
                continue
            total = sum(outcome(s) == kind for st in timeline.steps for s in st.shots)
            lat.scatter([s.sent - timeline.t0 for s in shots], [s.ms for s in shots], s=28,
                        marker=marker, color=charts.COLORS[kind], alpha=0.75, zorder=3,
                        label=None if kind in seen else f"{label}: {total}")
            seen.add(kind)
            sent = [s.sent for s in shots]
            if len(shots) > 1 and max(sent) - min(sent) < 0.1:  # stacked points: how many
                lat.annotate(f"x{len(shots)}", (max(sent) - timeline.t0,
                             statistics.median(s.ms for s in shots)), xytext=(6, -3),
                             textcoords="offset points", fontsize=7, color=charts.COLORS[kind])
    every = [s.ms for step in timeline.steps for s in step.shots]
    lat.axhline(timeline.delay_ms, color=muted, ls=":", lw=1,
                label=f"the predictor's {timeline.delay_ms} ms per call (DELAY_MS)")
    charts.log_scale(lat, "y")
    lat.set_ylim(*charts.log_limits([*every, timeline.delay_ms], pad=2.5))
    lat.set_ylabel("client latency (ms, log scale)", fontsize=9)
    lat.legend(loc="lower right", fontsize=7.5, framealpha=0.95)

    ts = [s.t for s in timeline.samples]
    for i, name in enumerate(timeline.names):  # the first wider, so equal lines both show
        slots.step(ts, [s.in_flight[i] for s in timeline.samples], where="post",
                   lw=3.2 if i == 0 else 1.3, alpha=0.55 if i == 0 else 1.0, label=name)
    slots.axhline(timeline.cap, color=charts.COLORS["error"], ls="--", lw=1,
                  label=f"cap per predictor (MAX_INFLIGHT={timeline.cap})")
    slots.set_ylim(-0.3, timeline.cap + 1.8)
    slots.set_ylabel("proxy calls\nin flight", fontsize=9)
    slots.legend(loc="upper right", fontsize=7.5, ncol=3, framealpha=0.95)

    for i, _ in enumerate(timeline.names):
        for began, ended, state in state_spans(timeline.samples, i, end):
            states.broken_barh([(began, ended - began)], (i - 0.35, 0.7),
                               color=charts.COLORS.get(state, muted))
    states.set_yticks(range(len(timeline.names)), timeline.names)
    states.set_ylim(len(timeline.names) - 0.5, -0.5)
    states.set_ylabel("breaker", fontsize=9)
    states.grid(False, axis="y")
    states.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=charts.COLORS[s]) for s in
                           ("closed", "half_open", "open")],
                  labels=["closed", "half-open (lets one trial call through)",
                          "open (every call falls back at once)"],
                  loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=3, fontsize=7.5)
    states.set_xlabel("seconds since the scenario began", fontsize=9)
    first = min([*(s.t for s in timeline.samples[:1]), *(s.t for s in timeline.steps[:1]), end])
    states.set_xlim(max(0.0, first - 0.3), end + 0.3)
    return fig


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    """The demo: its table rows; the picture goes to `out` (the run directory by default)."""
    rows: list[dict[str, Any]] = []
    url = stack.url()
    timeline = Timeline(url, stack.instances("predictor"),
                        int(stack.proc("predictor").env["DELAY_MS"]))
    with ExitStack() as open_clients, Client(url) as proxy, timeline:
        predictors = [open_clients.enter_context(Client(u))  # same ports after restarts
                      for u in stack.urls("predictor")]

        def step(what: str, n: int, at_once: bool = True) -> None:
            before = predictor_hits(predictors)
            timeline.steps.append(Step(timeline.now(), what))
            if at_once:
                shots = burst(url, n)
            else:
                shots = []
                for _ in range(n):
                    sent = time.perf_counter()
                    resp, ms = proxy.timed("POST", "/predict", json={"data": [ROW]})
                    shots.append(Shot(resp.status_code, ms, resp.json(), dict(resp.headers),
                                      sent))
            timeline.steps[-1].shots = shots
            rows.append(observe(what, shots, predictors, proxy,
                                predictor_hits(predictors) - before))

        step("10 at once (cap 5 x 2 replicas)", 10)
        step("30 at once", 30)

        timeline.restart(stack, {"FAIL_MODE": "always"},
                         "both predictors restart\nwith FAIL_MODE=always")
        step("predictors fail: 6 at once", 6)
        step("breakers open: 5 calls", 5, at_once=False)

        timeline.restart(stack, {"FAIL_MODE": "none"},
                         "both predictors restart\nwith FAIL_MODE=none")
        wait_until(lambda: "open" not in breaker_states(proxy).split(" / "), timeout=10,
                   what="the cooldown ending")
        step("healthy again: trial calls", 2, at_once=False)
        step("10 at once, closed again", 10)
    charts.picture((out or stack.run_dir) / PICTURE, lambda: draw(timeline))
    return rows
