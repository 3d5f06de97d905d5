"""Running Locust headless against a target: a plan's phases in one Locust process.

`run_locust` starts `python -m locust -f patternkit/loadtest/locustfile.py --headless` with
the phases' users (gevent monkey-patches whatever imports Locust, so it never runs inside
the caller) and returns what the users recorded per phase. `run_plan` runs a plan against a
URL and applies its gate: the report; `compare` runs the closed loop against several
targets taking turns. The benchmarks drive Locust through `run_locust` too.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from patternkit.loadtest.plan import LoadPlan, Phase
from patternkit.loadtest.stats import flat_metrics, phase_stats

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASS: dict[Phase, str] = {"closed": "ClosedLoopUser", "open": "OpenLoopUser"}
PRIMARY_KEYS = ("rps", "p50", "p95", "p99", "mean", "max", "errors", "error_rate", "requests",
                "rows_per_s", "ms_per_row", "projected_s", "cpu_ms_per_request", "locust")


class LoadTestError(RuntimeError):
    """The load could not be run: the target is unreachable or Locust failed."""


def tool_version() -> str:
    try:
        return f"locust {metadata.version('locust')} (FastHttpUser)"
    except metadata.PackageNotFoundError:
        return "locust (not installed)"


def run_locust(
    target: str,
    users: Mapping[Phase, int],
    env: Mapping[str, str],
    workdir: Path,
    *,
    seconds: float,
    tag: str = "run",
    timeout_s: float = 10.0,
    pids: Sequence[Iterable[int]] = (),
    preexec_fn: Callable[[], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """One headless Locust run of the phases in `users` (phase -> users), which together take
    about `seconds`; `pids` are the server processes whose CPU each phase measures (one group
    per target). Returns each phase's record (see locustfile.Phase.record)."""
    workdir.mkdir(parents=True, exist_ok=True)
    record_path = workdir / f"requests-{tag}.json"
    record_path.unlink(missing_ok=True)
    limit = math.ceil(seconds + 2 * timeout_s + 10)  # a safety net: the users end the run
    full_env = {
        **os.environ, **env, "LOADTEST_RECORD": str(record_path),
        "LOADTEST_PHASES": ",".join(users), "LOADTEST_TIMEOUT_S": str(timeout_s),
        "LOADTEST_PIDS": ";".join(",".join(str(p) for p in group) for group in pids),
        **{f"LOADTEST_{phase.upper()}_USERS": str(n) for phase, n in users.items()},
    }
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
           *(USER_CLASS[phase] for phase in users), "--headless",
           "-u", str(sum(users.values())), "-r", "1000", "-t", f"{limit}s", "--host", target,
           "--only-summary", "--loglevel", "ERROR"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=workdir,
                              env=full_env, timeout=limit + 60, preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired:
        raise LoadTestError(f"locust did not finish within {limit + 60}s") from None
    try:
        phases: dict[str, dict[str, Any]] = json.loads(record_path.read_text())["phases"]
    except (OSError, ValueError, KeyError):
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise LoadTestError(
            f"locust recorded nothing (exit {proc.returncode}); is locust installed "
            f"(the `bench` extra)?\n{tail}") from None
    return phases


def discover_features(target: str, timeout_s: float = 5.0) -> int:
    """The row width the target takes, from its `/metadata` (`n_features`)."""
    try:
        meta = httpx.get(f"{target}/metadata", timeout=timeout_s).json()
        return int(meta["n_features"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise LoadTestError(
            f"{target}/metadata does not say the row width (n_features: {exc}); "
            "set [request] features in the plan") from None


def check_target(target: str, timeout_s: float = 5.0) -> None:
    try:
        resp = httpx.get(f"{target}/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise LoadTestError(f"target {target} is unreachable: {exc}") from None
    if resp.status_code != 200:
        raise LoadTestError(f"target {target}/health answered {resp.status_code}")


def request_env(plan: LoadPlan, features: int) -> dict[str, str]:
    req = plan.request
    return {"LOADTEST_PATH": req.path, "LOADTEST_FEATURES": str(features),
            "LOADTEST_BATCH_MIN": str(req.batch[0]), "LOADTEST_BATCH_MAX": str(req.batch[1]),
            "LOADTEST_SEED": str(req.seed),
            "LOADTEST_CLOSED_SECONDS": str(plan.closed.seconds),
            "LOADTEST_CLOSED_WARMUP_S": str(plan.closed.warmup_s),
            "LOADTEST_OPEN_SECONDS": str(plan.open.seconds),
            "LOADTEST_OPEN_WARMUP_S": str(plan.open.warmup_s),
            "LOADTEST_OPEN_RATE": str(plan.open.rate),
            "LOADTEST_LATE_MS": str(plan.open.late_ms)}


def run_plan(
    target: str, plan: LoadPlan, workdir: str | Path, *,
    pids: Iterable[int] = (), label: str = "",
) -> dict[str, Any]:
    """Every phase of `plan` against `target` in one Locust run, then the gate: the report
    (a JSON-able dict). `pids` are the server processes whose CPU per request is measured."""
    target = target.rstrip("/")
    check_target(target)
    features = plan.request.features or discover_features(target)
    started, began = datetime.now(UTC), time.perf_counter()
    pid_list = list(pids)
    users: dict[Phase, int] = {p: getattr(plan, p).users for p in plan.phases}
    phases = run_locust(target, users, request_env(plan, features), Path(workdir),
                        seconds=sum(getattr(plan, p).seconds + getattr(plan, p).warmup_s
                                    for p in plan.phases),
                        tag=label.replace(" ", "-") or "run", timeout_s=plan.request.timeout_s,
                        pids=[pid_list] if pid_list else ())
    report: dict[str, Any] = {"label": label, "target": target, "tool": tool_version(),
                              "started": started.isoformat(timespec="seconds"),
                              "plan": plan.model_dump(mode="json"), "primary": plan.primary,
                              "features": features}
    for phase in plan.phases:
        spec = getattr(plan, phase)
        record = phases[phase]
        report[phase] = {"users": spec.users, **phase_stats(
            record, batch_rows=plan.batch.rows, cpu_s=(record.get("cpu_s") or [None])[0],
            rate=plan.open.rate if phase == "open" else None, seconds=spec.seconds)}
    primary = report[plan.primary]
    report.update({k: primary.get(k) for k in PRIMARY_KEYS})
    return judge(report, plan) | {"took_s": round(time.perf_counter() - began, 1)}


def compare(
    targets: Mapping[str, str], plan: LoadPlan, workdir: str | Path, *,
    rounds: int = 2, segment_s: float = 1.5, pids: Mapping[str, Iterable[int]] | None = None,
    features: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The closed loop of `plan` against several targets in one Locust run, taking turns of
    `segment_s` (target A, B, A, B, ... for `rounds` rounds), so that each target meets the
    same background load: the figures per target label."""
    labels, urls = list(targets), [u.rstrip("/") for u in targets.values()]
    for url in urls:
        check_target(url)
    width = features or plan.request.features or discover_features(urls[0])
    seconds = rounds * len(urls) * segment_s
    env = {**request_env(plan, width), "LOADTEST_CLOSED_SECONDS": str(seconds),
           "LOADTEST_TARGETS": ",".join(urls), "LOADTEST_SEGMENT_S": str(segment_s)}
    groups = [list((pids or {}).get(label, ())) for label in labels]
    record = run_locust(urls[0], {"closed": plan.closed.users}, env, Path(workdir),
                        seconds=seconds + plan.closed.warmup_s, tag="compare",
                        timeout_s=plan.request.timeout_s,
                        pids=groups if any(groups) else ())["closed"]
    cpu = record.get("cpu_s") or [None] * len(labels)
    return {label: {"users": plan.closed.users, "url": urls[i], "rounds": rounds,
                    "segment_s": segment_s,
                    **phase_stats(record, batch_rows=plan.batch.rows, cpu_s=cpu[i],
                                  target=i, window=rounds * segment_s)}
            for i, label in enumerate(labels)}


def judge(report: dict[str, Any], plan: LoadPlan) -> dict[str, Any]:
    """Apply the plan's thresholds to a report: `checks` and `slo_pass`."""
    values = flat_metrics(report, plan.phases)
    checks = []
    for threshold in plan.gate():
        value = values.get(threshold.metric)
        checks.append({"metric": threshold.metric, "condition": threshold.condition,
                       "value": value, "pass": threshold.holds(value)})
    report["checks"] = checks
    report["slo_pass"] = all(c["pass"] for c in checks)
    return report
