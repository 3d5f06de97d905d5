"""The L1 demo: train -> candidate -> compare -> approve -> deploy under traffic -> rollback.

Four callers send predictions through the proxy the whole time. A training run makes a
candidate (serving stays on 1.0.0), a weak run's candidate is refused at approval with the
reason, a run that fails at its build step makes nothing; the good candidate is compared with
the deployed model, approved by a person, deployed, then rolled back in one call. Each row is
one moment of the timeline, with its UTC time, the seconds since the start, what the callers
were answered by until then, and the registry's events at the end; the picture shows which
version answered each request over time, with the decisions marked.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patternkit import charts
from patternkit.client import IRIS_ROWS, Client, Sent, Traffic, wait_until
from patternkit.topology import Stack
from training_patterns.batch_training import store

ROW = IRIS_ROWS[0][0]


def clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


def train(api: Client, body: dict[str, Any]) -> dict[str, Any]:
    url = api.post("/jobs", json=body).raise_for_status().json()["job_url"]

    def done() -> dict[str, Any] | None:
        view: dict[str, Any] = api.get(url).json()
        return view if view["status"] in store.FINISHED else None

    return wait_until(done, 60, interval=0.1, what=f"training run {body}")


def served(sent: list[Sent]) -> str:
    counts: dict[str, int] = {}
    for s in sent:
        key = s.version if s.status == 200 else f"failed {s.status}"
        counts[str(key)] = counts.get(str(key), 0) + 1
    return ", ".join(f"{v}: {n}" for v, n in sorted(counts.items()))


def draw(sent: list[Sent], marks: list[tuple[float, str]], start: float, offset: float,
         path: Path) -> Path | None:
    """One dot per request at the time it was answered (its monotonic time less `offset` is
    wall time), on the row of the version that answered it; a dashed line at each decision."""
    def make() -> Any:
        fig, (ax,) = charts.figure("Train-then-serve: the version that answered each request",
                                   (3.6,), width=11.0)
        versions = sorted({str(s.version) for s in sent if s.status == 200})
        rows = {v: i for i, v in enumerate(versions)}
        ok = [s for s in sent if s.status == 200]
        ax.scatter([s.ended - offset - start for s in ok], [rows[str(s.version)] for s in ok], s=4,
                   color=charts.COLORS["answer"], label="200")
        bad = [s for s in sent if s.status != 200]
        if bad:
            ax.scatter([s.ended - offset - start for s in bad], [-0.5] * len(bad), s=12,
                       color=charts.COLORS["error"], label="failed")
        for at, text in marks:
            ax.axvline(at - start, color=charts.COLORS["muted"], ls="--", lw=0.8)
            ax.annotate(text, (at - start, len(versions) - 0.6), rotation=90, fontsize=8,
                        va="top", ha="right")
        ax.set_yticks(range(len(versions)), versions)
        ax.set_ylim(-0.8, len(versions) - 0.2)
        ax.set_xlabel(f"seconds since the start; {len(sent)} requests, {len(bad)} failed")
        ax.set_ylabel("X-Model-Version")
        return fig

    return charts.picture(path, make)


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    out = out or Path(stack.run_dir)
    rows: list[dict[str, Any]] = []
    marks: list[tuple[float, str]] = []
    start = time.time()
    offset = time.monotonic() - start  # Traffic's clock less this is the wall clock

    with Client(stack.url("api")) as api, Client(stack.url("registry"), timeout=60) as reg, \
            Traffic(f"{stack.url()}/predict", {"data": [ROW]}, senders=4) as traffic:

        def note(step: str, what: str, mark: str | None = None) -> None:
            now = time.time()
            rows.append({"time": clock(now), "t_s": f"{now - start:5.2f}", "step": step,
                         "what": what, "callers so far": served(traffic.sent())})
            if mark:
                marks.append((now, mark))

        traffic.wait_for(3)
        listing = reg.get("/models").json()
        note("boot", f"{listing['deployed']} deployed (the boot run's version, adopted)")

        good = train(api, {"seed": 2})
        state = reg.get("/models/" + good["version"]).json()["state"]
        note("train seed=2", f"run {good['status']}: {good['version']} accuracy "
             f"{good['metrics']['accuracy']}, registry state {state}", "candidate")

        weak = train(api, {"params": {"C": 0.01}})
        note("train C=0.01", f"run {weak['status']}: {weak['version']} accuracy "
             f"{weak['metrics']['accuracy']} (over training's floor 0.8): a candidate")
        refused = reg.post(f"/models/{weak['version']}/approve", json={"by": "alice"})
        note(f"approve {weak['version']} (C=0.01)",
             f"{refused.status_code} {refused.json()['error']}: "
             f"{refused.json()['details'][0]['problem']}", "refused")

        failed = train(api, {"fail_step": "build"})
        note("train fail_step=build", f"run {failed['status']} at {failed['failed_step']}: "
             "no candidate, serving untouched")

        shown = reg.get(f"/models/{good['version']}/compare").json()
        note(f"compare {good['version']}",
             f"candidate {shown['candidate']['accuracy']} vs deployed "
             f"{shown['current']['version']} {shown['current']['accuracy']} on "
             f"{shown['rows']['n']} held-out rows; passes={shown['passes']}")

        ok = reg.post(f"/models/{good['version']}/approve",
                      json={"by": "alice", "note": "as good on the same rows"}).json()
        note(f"approve {good['version']}", f"{ok['state']} by {ok['by']}", "approved")

        deployed = reg.post("/deploy", json={"version": good["version"], "by": "alice"}).json()
        note("deploy", f"{deployed['previous']} -> {deployed['version']} in "
             f"{deployed['took_ms']:.0f} ms", "deploy")
        traffic.wait_for(20, since=time.monotonic())
        note("traffic", f"{good['version']} answers")

        back = reg.post("/rollback", json={"by": "bob", "reason": "demo: the way back"}).json()
        note("rollback", f"{back['previous']} -> {back['version']} in {back['took_ms']:.0f} ms "
             "(one call)", "rollback")
        traffic.wait_for(20, since=time.monotonic())
        events = reg.get("/events").json()["events"]
    sent = traffic.sent()
    rows.append({"time": clock(time.time()), "t_s": f"{time.time() - start:5.2f}",
                 "step": "traffic", "what": f"{len(sent)} requests, "
                 f"{len(traffic.failures())} failed", "callers so far": served(sent)})
    for e in events:
        rows.append({"time": clock(e["at"]), "t_s": f"{e['at'] - start:5.2f}",
                     "step": f"event {e['action']}", "what": f"{e['version']} by "
                     f"{e['by'] or '-'}"})
    picture = draw(sent, marks, start, offset, out / "train_then_serve_timeline.png")
    if picture is not None:
        rows.append({"step": "picture", "what": str(picture)})
    return rows
