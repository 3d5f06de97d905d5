"""A T2 step worker: one Celery worker process per step, consuming only its step's queue.

Declared five times in topology.toml (`worker = "...worker"`, `queue = "gather"`, ...,
STEP set to match). The task `pipeline.<step>` takes a run id; the worker computes the step's
cache key from its own code, the run's parameters for it and the digests of its inputs (the
upstream steps' artifacts; for gather, the DWH file), then either restores the output filed
under that key (a cache hit: copied into `artifacts/<run>/<step>/`, its digest checked) or
runs the step. A step marked always-run, or re-run on request, never takes the cache. After
a run, the inputs are hashed again: if one changed while the step ran, the result is thrown
away, not cached, and the step fails saying which input changed (DVC caches such a result
under the old key). Every handling is an execution row, with this worker's name and queue.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from celery import Celery, Task
from pydantic import Field

from patternkit.db import create_tables, make_engine
from patternkit.faults import InjectedFault
from patternkit.jobs import WorkerSettings, describe, lazy_app, make_worker
from training_patterns.pipeline_training import steps, store

log = logging.getLogger("pipeline.worker")


def task_name(step: str) -> str:
    return f"pipeline.{step}"


class StepWorkerSettings(WorkerSettings):
    LONGEST_JOB: ClassVar[tuple[str, ...]] = ("max_step_ms",)
    JOB: ClassVar[str] = "step"

    step: steps.StepName = Field(..., description="the step this worker runs (its queue)")
    database_url: str = Field(..., description="runs, steps, executions, cache ({db.url})")
    artifacts_dir: str = Field(..., description="artifacts/<run>/<step>/ go here")
    data_dir: str = Field(..., description="the DWH tables (CSV files) gather reads")
    repo_dir: str = Field(..., description="the model repository build publishes to")
    max_step_ms: int = Field(20_000, gt=0, description="the longest a step runs, delays included")
    visibility_timeout_s: float = Field(30.0, gt=0)


class StepWorker:
    """What a worker process holds (its DB engine) and how it handles one step of a run."""

    def __init__(self, cfg: StepWorkerSettings) -> None:
        self.cfg = cfg
        self.step = cfg.step
        self.artifacts = Path(cfg.artifacts_dir)
        self.engine: sa.Engine

    def open(self) -> None:
        self.engine = make_engine(self.cfg.database_url)
        create_tables(self.engine, store.METADATA)
        log.info("step worker for %s ready (pid %d), code %s", self.step, os.getpid(),
                 steps.code_hash(self.step)[:12])

    def close(self) -> None:
        self.engine.dispose()

    def inputs(self, run_id: str, params: dict[str, Any]) -> dict[str, Path]:
        if self.step == "gather":
            return {steps.SOURCE: Path(self.cfg.data_dir) / params["source"]}
        return {up: self.artifacts / run_id / up for up in steps.PIPELINE.upstream(self.step)}

    def handle(self, run_id: str, worker: str, queue: str) -> None:
        with self.engine.begin() as conn:
            run = store.run_row(conn, run_id)
            if run is None or run["state"] != store.RUNNING:
                log.warning("run %s is not running: %s ignored", run_id, self.step)
                return
            row = store.step_rows(conn, run_id)[self.step]
            started = time.time()
            if not store.set_step(conn, run_id, self.step, (store.QUEUED, store.STEP_RUNNING),
                                  state=store.STEP_RUNNING, worker=worker, queue=queue,
                                  pid=os.getpid(), started_ts=started, finished_ts=None,
                                  error=None):
                log.warning("run %s step %s is %s: duplicate delivery ignored", run_id,
                            self.step, row["state"])
                return
        request = run["request"]
        params = request["params"][self.step]
        always = self.step in request["always_run"] or steps.PIPELINE.steps[self.step].always_run
        outcome, values = "ran", dict[str, Any]()
        try:
            outcome, values = self.execute(run_id, request, params, row, always)
        except Exception as exc:  # the run fails at this step, saying why
            if not isinstance(exc, (steps.StepFailed, InjectedFault)):
                log.exception("run %s step %s failed", run_id, self.step)
            values = {"state": store.STEP_FAILED, "error": describe(exc)}
            outcome = "failed"
        finished = time.time()
        with self.engine.begin() as conn:
            if outcome != "restored":
                values["executions"] = store.STEPS.c.executions + 1
            store.set_step(conn, run_id, self.step, (store.STEP_RUNNING,),
                           finished_ts=finished, **values)
            store.record_execution(conn, run_id=run_id, step=self.step, outcome=outcome,
                                   worker=worker, queue=queue, pid=os.getpid(),
                                   started_ts=started, finished_ts=finished)
        log.info("run %s step %s %s in %.3f s%s", run_id[:8], self.step, outcome,
                 finished - started, f": {values.get('error')}" if outcome == "failed" else "")

    def execute(self, run_id: str, request: dict[str, Any], params: dict[str, Any],
                row: dict[str, Any], always: bool) -> tuple[str, dict[str, Any]]:
        inputs = self.inputs(run_id, params)
        for name, path in inputs.items():
            if not path.exists():
                raise steps.StepFailed(f"input {name} is missing: {path}")
        before = {name: steps.digest(path) for name, path in inputs.items()}
        key = steps.cache_key(self.step, params, before)
        out = self.artifacts / run_id / self.step
        common = {"key": key, "inputs": before}
        with self.engine.begin() as conn:  # shown while it runs: what the step started from
            store.set_step(conn, run_id, self.step, (store.STEP_RUNNING,), **common)
        if row["force"] or always:
            reason = "re-run on request" if row["force"] else "always-run step: never restored"
        else:
            with self.engine.begin() as conn:
                hit = store.cached(conn, self.step, key)
            reason = "no cache entry for this key"
            if hit is not None:
                restored = self.restore(hit, out)
                if restored is not None:
                    return "restored", {"state": store.DONE, "cache": store.HIT,
                                        "reason": f"key filed by run {hit['run_id']}",
                                        "digest": restored, "outputs": self.listing(out),
                                        "force": False, **common}
                reason = f"cache entry of run {hit['run_id']} is gone or altered"

        fault = request["faults"].get(self.step) or {}
        if fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000)
        if row["executions"] < int(fault.get("fail_times", 0)):
            raise InjectedFault(f"injected failure of {self.step} (execution "
                                f"{row['executions'] + 1} of {fault['fail_times']} to fail)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.step}-", dir=out.parent))
        try:
            summary = steps.CODE[self.step](inputs, params, tmp,
                                            steps.Context(Path(self.cfg.repo_dir), run_id))
            after = {name: steps.digest(path) for name, path in inputs.items()}
            changed = [n for n in before if after[n] != before[n]]
            if changed:
                raise steps.StepFailed(
                    "input changed while the step ran: " + "; ".join(
                        f"{n} {before[n][:12]} -> {after[n][:12]}" for n in changed)
                    + "; the result was discarded, not cached: retry to run on the new input")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        produced = steps.digest(out)
        with self.engine.begin() as conn:
            store.remember(conn, self.step, key, run_id, produced)
            if self.step == "build":  # the registry's row of the model it published
                store.register(conn, {"name": summary["name"], "version": summary["version"],
                                      "run_id": run_id, "sha256": summary["sha256"],
                                      "accuracy": summary["accuracy"], "path": summary["path"],
                                      "registered_ts": time.time()})
        return "ran", {"state": store.DONE, "cache": store.RUN, "reason": reason,
                       "digest": produced, "outputs": {**self.listing(out), "summary": summary},
                       "force": False, **common}

    def restore(self, hit: dict[str, Any], out: Path) -> str | None:
        """Copy the cached output into this run's folder; None if it no longer matches."""
        src = self.artifacts / hit["run_id"] / self.step
        if hit["run_id"] == out.parent.name and out.is_dir():
            return hit["digest"] if steps.digest(out) == hit["digest"] else None
        if not src.is_dir() or steps.digest(src) != hit["digest"]:
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.step}-", dir=out.parent))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            if steps.digest(tmp) != hit["digest"]:
                return None
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return str(hit["digest"])

    def listing(self, out: Path) -> dict[str, Any]:
        return {"path": str(out), "files": sorted(p.name for p in out.iterdir())}


def create_worker(settings: StepWorkerSettings | None = None) -> Celery:
    cfg = settings or StepWorkerSettings()
    worker = StepWorker(cfg)
    app = make_worker(cfg.step, cfg, opens=worker)

    @app.task(bind=True, name=task_name(cfg.step))
    def run_step(task: Task, run_id: str) -> None:
        info = task.request.delivery_info or {}
        queue = str(info.get("routing_key") or cfg.step)
        worker.handle(run_id, str(task.request.hostname or cfg.served_by), queue)

    return app


__getattr__ = lazy_app(create_worker)  # `celery -A` reads `app`: built on first access
