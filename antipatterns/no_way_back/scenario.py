"""Demo of the no-way-back antipattern: one bad model, deployed on both stacks, and the time
each takes to recover from it.

Both stacks serve iris_lr 1.0.0 and are scored on the held-out iris rows. Then the bad 1.1.0
(trained on shuffled labels) is deployed on both: copied over the in-place server's one model
path and reloaded; on the fix, the alias `champion` moved to 1.1.0 and the predictor told to
load it. Every reply stays a 200 while the accuracy collapses. Recovery: the fix calls
`POST /admin/rollback` once, under traffic; the in-place server answers that call with a 409,
so its operator retrains 1.0.0 from scratch (a new process: data, code, libraries), copies
it over the path and reloads, while the bad model keeps serving. Both times are measured,
and one paced caller per stack records what was served over the whole incident: the picture
`recovery.png` (the accuracy of the served version, second by second).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antipatterns.no_way_back.trainer import ALIAS, BAD, GOOD, NAME, holdout
from patternkit import charts
from patternkit.client import Client, Sent, Traffic
from patternkit.models import MANIFEST_FILE, MODEL_FILE
from patternkit.topology import Stack

PROJECT = Path(__file__).resolve().parents[2]  # where `python -m antipatterns...` resolves
PACED_REPLIES = 15  # replies of a paced caller (one per ~50 ms) between two steps


@dataclass
class Recovery:
    """How one stack got back to the good model: the call(s), the time, what callers saw."""

    seconds: float
    status: int  # of the rollback call
    message: str
    sent: list[Sent] = field(default_factory=list)  # the traffic around the recovery
    began: float = 0.0  # monotonic
    ended: float = 0.0

    @property
    def during(self) -> list[Sent]:
        """The requests in flight while the recovery ran."""
        return [s for s in self.sent if s.started < self.ended and s.ended > self.began]

    @property
    def failed(self) -> int:
        return sum(1 for s in self.sent if s.status != 200)

    def served(self, version: str) -> int:
        """Requests answered by `version` while the recovery ran."""
        return sum(1 for s in self.during if s.version == version)


@dataclass
class Incident:
    """Accuracy (and predictions) on the held-out rows before, with the bad model, after."""

    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # stack -> phase -> acc
    predictions: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    deploys: dict[str, int] = field(default_factory=dict)  # stack -> status of the deploy
    bad_statuses: dict[str, int] = field(default_factory=dict)  # /predict with the bad model
    fixed: Recovery | None = None
    in_place: Recovery | None = None
    in_place_rollback: dict[str, Any] = field(default_factory=dict)  # the 409's body
    files_after_deploy: list[str] = field(default_factory=list)  # what the one path holds
    timeline: dict[str, list[Sent]] = field(default_factory=dict)  # a paced caller per stack
    marks: dict[str, float] = field(default_factory=dict)  # monotonic times of the steps

    def served_accuracy(self, stack: str, version: str | None) -> float | None:
        """The held-out accuracy of the version that answered (None: no answer)."""
        for phase in ("before", "bad"):
            if self.versions[stack][phase] == version:
                return self.accuracy[stack][phase]
        return None


def score(client: Client, stack: str, phase: str, found: Incident) -> None:
    X, y = holdout()
    resp = client.post("/predict", json={"data": X})
    resp.raise_for_status()
    labels = [int(v) for v in resp.json()["prediction"]]
    found.accuracy.setdefault(stack, {})[phase] = sum(
        a == b for a, b in zip(labels, y, strict=True)) / len(y)
    found.predictions.setdefault(stack, {})[phase] = labels
    found.versions.setdefault(stack, {})[phase] = resp.headers["x-model-version"]


def deploy_in_place(candidate: Path, model_path: Path, server: Client) -> int:
    """The antipattern's deploy: copy the new files over the one model path, then reload."""
    for file in (MODEL_FILE, MANIFEST_FILE):
        shutil.copyfile(candidate / file, model_path / file)
    return server.post("/admin/reload").status_code


def deploy_versioned(version: str, repository: Client, predictor: Client) -> int:
    """The fix's deploy: point the alias at the published version, then load the alias."""
    moved = repository.put(f"/models/{NAME}/aliases/{ALIAS}", json={"version": version})
    moved.raise_for_status()
    return predictor.post("/admin/load", json={"version": ALIAS}, timeout=60).status_code


def retrain_and_redeploy(model_path: Path, server: Client) -> str:
    """The in-place stack's only way back: train the old model again from scratch in a new
    process, copy it over the path and reload. The trainer's own output line."""
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "antipatterns.no_way_back.trainer", "--retrain", "--out", tmp],
            capture_output=True, text=True, timeout=300, check=True, cwd=PROJECT)
        reload = deploy_in_place(Path(tmp), model_path, server)
    if reload != 200:
        raise RuntimeError(f"the reload after the retrain answered {reload}")
    return done.stdout.strip().splitlines()[-1]


def under_traffic(url: str) -> Traffic:
    X, _ = holdout()
    return Traffic(f"{url}/predict", {"data": X[:5]}, senders=2)


def incident(stack: Stack) -> Incident:
    """The whole incident on both stacks, measured."""
    found = Incident()
    model_path = Path(stack.proc("inplace_predictor").env["MODEL_PATH"])
    candidates = model_path.parent.parent / "candidates"
    with Client(stack.url("predictor")) as fixed, \
            Client(stack.url("inplace_predictor")) as in_place, \
            Client(stack.url("repository")) as repository:
        for name, client in (("versioned", fixed), ("in-place", in_place)):
            score(client, name, "before", found)
        X, _ = holdout()
        paced = {name: Traffic(f"{stack.url(svc)}/predict", {"data": X[:5]}, senders=1,
                               interval_s=0.05)
                 for name, svc in (("versioned", "predictor"), ("in-place", "inplace_predictor"))}
        for traffic in paced.values():
            traffic.__enter__()
        try:
            timed_incident(stack, found, paced, fixed, in_place, repository, model_path,
                           candidates)
        finally:
            for name, traffic in paced.items():
                traffic.stop()
                found.timeline[name] = traffic.sent()
    return found


def timed_incident(stack: Stack, found: Incident, paced: dict[str, Traffic], fixed: Client,
                   in_place: Client, repository: Client, model_path: Path,
                   candidates: Path) -> None:
    """Deploy the bad model on both, then recover each the way it can, timing every step;
    the paced callers get a few replies between the steps, so the timeline shows each."""
    for traffic in paced.values():
        traffic.wait_for(PACED_REPLIES)
    found.marks["deploy"] = time.monotonic()
    # the bad model goes out on both, the way each stack deploys
    found.deploys["in-place"] = deploy_in_place(candidates / f"{NAME}-{BAD}", model_path,
                                                in_place)
    found.files_after_deploy = sorted(p.name for p in model_path.iterdir())
    found.deploys["versioned"] = deploy_versioned(BAD, repository, fixed)
    for name, client in (("versioned", fixed), ("in-place", in_place)):
        score(client, name, "bad", found)
        found.bad_statuses[name] = client.post("/predict", json={"data": [[5.1, 3.5, 1.4,
                                                                         0.2]]}).status_code

    # the fix: one call, under traffic
    with under_traffic(stack.url("predictor")) as traffic:
        traffic.wait_for(3)
        paced["versioned"].wait_for(PACED_REPLIES, since=found.marks["deploy"])
        began = found.marks["rollback"] = time.monotonic()
        resp = fixed.post("/admin/rollback", timeout=60)
        took = time.monotonic() - began
        found.marks["rolled_back"] = began + took
        traffic.wait_for(3, since=began + took)
    body = resp.json()
    found.fixed = Recovery(took, resp.status_code,
                           f"{body.get('previous')} -> {body.get('version')}"
                           if resp.status_code == 200 else body.get("message", ""),
                           traffic.sent(), began, began + took)
    score(fixed, "versioned", "after", found)

    # the antipattern: the same call has nothing to go back to; retrain from scratch
    refused = in_place.post("/admin/rollback")
    found.in_place_rollback = {"status": refused.status_code, **refused.json()}
    with under_traffic(stack.url("inplace_predictor")) as traffic:
        traffic.wait_for(3)
        began = found.marks["retrain"] = time.monotonic()
        said = retrain_and_redeploy(model_path, in_place)
        took = time.monotonic() - began
        found.marks["retrained"] = began + took
        traffic.wait_for(3, since=began + took)
    found.in_place = Recovery(took, refused.status_code, said, traffic.sent(), began,
                              began + took)
    score(in_place, "in-place", "after", found)
    for traffic in paced.values():
        traffic.wait_for(PACED_REPLIES, since=found.marks["retrained"])


def rows_of(found: Incident) -> list[dict[str, Any]]:
    assert found.fixed is not None and found.in_place is not None
    acc = found.accuracy

    def pct(stack: str, phase: str) -> str:
        return f"{acc[stack][phase]:.1%} ({found.versions[stack][phase]})"

    refused = found.in_place_rollback
    ratio = found.in_place.seconds / max(found.fixed.seconds, 1e-6)
    return [
        {"stack": "in-place", "step": "before", "status": "200",
         "accuracy": pct("in-place", "before"), "detail": "one model path, iris_lr 1.0.0"},
        {"stack": "versioned", "step": "before", "status": "200",
         "accuracy": pct("versioned", "before"), "detail": f"{ALIAS} -> {GOOD}"},
        {"stack": "in-place", "step": "deploy bad: copy over, reload",
         "status": str(found.deploys["in-place"]), "accuracy": pct("in-place", "bad"),
         "detail": f"/predict {found.bad_statuses['in-place']}; the path now holds "
                   f"{', '.join(found.files_after_deploy)} of {BAD} only"},
        {"stack": "versioned", "step": f"deploy bad: {ALIAS} -> {BAD}, load",
         "status": str(found.deploys["versioned"]), "accuracy": pct("versioned", "bad"),
         "detail": f"/predict {found.bad_statuses['versioned']}; {GOOD} is still published"},
        {"stack": "versioned", "step": "POST /admin/rollback",
         "status": str(found.fixed.status), "accuracy": pct("versioned", "after"),
         "detail": f"{found.fixed.message} in {found.fixed.seconds:.3f}s; "
                   f"{len(found.fixed.sent)} requests around it, "
                   f"{len(found.fixed.during)} in flight during it, {found.fixed.failed} failed"},
        {"stack": "in-place", "step": "POST /admin/rollback", "status": str(refused["status"]),
         "accuracy": pct("in-place", "bad"),
         "detail": f"{refused.get('error')}: {str(refused.get('message'))[:90]}..."},
        {"stack": "in-place", "step": "retrain from scratch + redeploy", "status": "200",
         "accuracy": pct("in-place", "after"),
         "detail": f"{found.in_place.seconds:.2f}s ({found.in_place.message}); "
                   f"{found.in_place.served(BAD)} of {len(found.in_place.during)} "
                   f"requests meanwhile answered by {BAD}, {found.in_place.failed} failed"},
        {"stack": "both", "step": "time to recover", "status": "-", "accuracy": "-",
         "detail": f"rollback {found.fixed.seconds:.3f}s vs retrain {found.in_place.seconds:.2f}s"
                   f": {ratio:.0f}x"},
    ]


PICTURE = "recovery.png"


def draw(found: Incident) -> Any:
    """The accuracy of the model each stack served, request by request, over the incident."""
    assert found.fixed is not None and found.in_place is not None
    fig, panels = charts.figure("One bad model, two ways back: accuracy of the served model",
                                heights=(1.7, 1.7))
    t0 = found.marks["deploy"]
    spans = {"versioned": (found.marks["rollback"], found.marks["rolled_back"],
                           f"POST /admin/rollback: {found.fixed.seconds:.3f}s"),
             "in-place": (found.marks["retrain"], found.marks["retrained"],
                          f"rollback 409; retrain from scratch + redeploy: "
                          f"{found.in_place.seconds:.1f}s")}
    for ax, stack in zip(panels, ("versioned", "in-place"), strict=True):
        sent = found.timeline[stack]
        xs = [s.ended - t0 for s in sent]
        ys = [found.served_accuracy(stack, s.version) for s in sent]
        ok = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        bad = [x for x, y in zip(xs, ys, strict=True) if y is None]
        ax.step([x for x, _ in ok], [y for _, y in ok], where="post", lw=2,
                color=charts.COLORS["answer"], label="accuracy of the version that answered")
        if bad:
            ax.plot(bad, [0.0] * len(bad), "x", color=charts.COLORS["error"], label="failed")
        start, end, what = spans[stack]
        ax.axvspan(0, end - t0, color=charts.COLORS["error"], alpha=0.08,
                   label=f"serving {BAD} (shuffled labels)")
        ax.axvspan(start - t0, max(end - t0, start - t0 + 0.05), color=charts.COLORS["half_open"],
                   alpha=0.3, label=what)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{stack}\naccuracy", fontsize=8)
        ax.legend(fontsize=7, loc="center right")
    panels[-1].set_xlabel("seconds since the bad model was deployed (every reply a 200)",
                          fontsize=8)
    return fig


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    found = incident(stack)
    charts.picture((out or stack.run_dir) / PICTURE, lambda: draw(found))
    return rows_of(found)
