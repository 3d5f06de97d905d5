"""The training job of T1: a Celery worker running `batch_training.train` step by step.

`batch_training.train(run_id)` (sent by the API) and `batch_training.tick` (sent by the
scheduler: it records a `schedule` run first) take a pending run from the runs table and go
through `train.STEPS`, writing the current step, the rows dropped by reason, the metrics and
each step's duration as they go. A rejected candidate ends `rejected` and its staging folder
is deleted before `register`, so it never reaches the repository; any error ends the run
`failed` with the step and the error, to be re-kicked (`POST /jobs/{id}/rerun`). A run
whose worker died is taken over by its redelivered message (late acks) once it has been
`running` for STALE_AFTER_S. DELAY_MS and FAIL_MODE slow down or break the train step; FAIL_STEP
(or a run's `fail_step`) is the fault drill: that step raises on the run's first
FAIL_ATTEMPTS attempts, as a full disk or a lost DWH connection would. Listens on no port.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

import sqlalchemy as sa
from celery import Celery
from pydantic import Field, model_validator

from patternkit import db
from patternkit.jobs import WorkerSettings, describe, lazy_app, make_worker
from training_patterns.batch_training import dwh, store, train

log = logging.getLogger("batch_training.worker")

QUEUE = "batch_training"
TRAIN_TASK, TICK_TASK = "batch_training.train", "batch_training.tick"
T = TypeVar("T")


class TrainWorkerSettings(WorkerSettings):
    """The base's broker and heartbeat, plus the DWH, the repository and the bars."""

    LONGEST_JOB: ClassVar[tuple[str, ...]] = ("delay_ms",)
    JOB: ClassVar[str] = "training run"

    database_url: str = Field(..., description="the DWH (raw table) and the runs table")
    repo_dir: str = Field(..., description="the model repository folder (publish target)")
    work_dir: str = Field(..., description="staging folders of runs being built")
    min_accuracy: float = Field(0.9, ge=0, le=1, description="a candidate below is rejected")
    max_regression: float = Field(
        0.02, ge=0, le=1, description="rejected when this far below the current model")
    seed: int = Field(0, ge=0, description="split and estimator seed when a run names none")
    fail_step: train.StepName | Literal["none"] = Field(
        "none", description="fault drill: this step fails ...")
    fail_attempts: int = Field(1, ge=1, description="... on each run's first N attempts")
    visibility_timeout_s: float = Field(
        120.0, gt=0, description="an unacked run is redelivered after this; > the longest run")
    stale_after_s: float = Field(
        60.0, gt=0, description="a run `running` this long lost its worker: a redelivery takes "
                                "it over; > the longest run, < VISIBILITY_TIMEOUT_S")

    @model_validator(mode="after")
    def _stale_before_redelivery(self) -> Self:
        if not self.delay_ms / 1000 < self.stale_after_s < self.visibility_timeout_s:
            raise ValueError(
                f"STALE_AFTER_S={self.stale_after_s} must exceed the longest run (DELAY_MS = "
                f"{self.delay_ms} ms) and be under VISIBILITY_TIMEOUT_S="
                f"{self.visibility_timeout_s}, or a redelivered run is never taken over")
        return self


class TrainWorker:
    def __init__(self, cfg: TrainWorkerSettings) -> None:
        self.cfg = cfg
        self.engine: sa.Engine | None = None
        self.pid: int | None = None
        self.faults = cfg.faults()

    def open(self) -> None:
        if self.pid == os.getpid():
            return
        self.engine = db.make_engine(self.cfg.database_url)
        dwh.create_tables(self.engine)
        db.create_tables(self.engine, store.METADATA)
        Path(self.cfg.repo_dir).mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        log.info("training worker: DWH %s, repository %s, MIN_ACCURACY=%s MAX_REGRESSION=%s "
                 "FAIL_STEP=%s", db.show_url(self.engine), self.cfg.repo_dir,
                 self.cfg.min_accuracy, self.cfg.max_regression, self.cfg.fail_step)

    def close(self) -> None:
        if self.engine is not None and self.pid == os.getpid():
            self.engine.dispose()
            self.pid = None

    @property
    def db(self) -> sa.Engine:
        self.open()
        assert self.engine is not None
        return self.engine

    def tick(self) -> str:
        with self.db.begin() as conn:
            run_id = store.create_run(conn, "schedule", {})
        log.info("scheduled run %s", run_id)
        self.run(run_id)
        return run_id

    def run(self, run_id: str) -> None:
        with self.db.begin() as conn:
            run = store.begin(conn, run_id, self.cfg.served_by,
                              stale_before=time.time() - self.cfg.stale_after_s)
        if run is None:
            log.warning("run %s is not pending (nor abandoned): a duplicate delivery, ignored",
                        run_id)
            return
        if run["attempts"] > 1 and run["kicks"] < run["attempts"] - 1:
            log.warning("run %s: taking over attempt %d, its worker died mid-run", run_id,
                        run["attempts"])
        timings: dict[str, float] = {}
        step = "gather"

        def do(name: str, work: Callable[[], T]) -> T:
            nonlocal step
            step = name
            with self.db.begin() as conn:
                store.update(conn, run_id, step=name, timings=timings)
            self.fault(run, name)
            started = time.perf_counter()
            out = work()
            timings[name] = round(time.perf_counter() - started, 4)
            return out

        request: dict[str, Any] = run["request"] or {}
        seed = int(request.get("seed", self.cfg.seed))
        params = {**train.DEFAULT_PARAMS, **(request.get("params") or {})}
        min_accuracy = float(request.get("min_accuracy", self.cfg.min_accuracy))
        max_regression = float(request.get("max_regression", self.cfg.max_regression))
        repo = Path(self.cfg.repo_dir)
        out = Path(self.cfg.work_dir) / run_id
        metrics: dict[str, Any] | None = None
        try:
            rows = do("gather", lambda: train.gather(self.db))
            clean = do("validate", lambda: train.validate(rows))
            with self.db.begin() as conn:
                store.update(conn, run_id, raw_rows=clean.raw, clean_rows=len(clean.y),
                             dropped=clean.dropped, dropped_examples=clean.examples,
                             data_hash=clean.hash)
            trained = do("train", lambda: self.slow(train.train(clean, seed, params)))
            metrics = trained.metrics
            do("evaluate", lambda: train.evaluate(trained, repo, min_accuracy, max_regression))
            version = train.next_version(repo)
            do("build", lambda: train.build(trained, clean, out, version, seed=seed,
                                            params=params, run_id=run_id))
            do("register", lambda: train.register(out, repo))
        except train.Rejected as exc:
            log.warning("run %s rejected: %s", run_id, exc)
            with self.db.begin() as conn:
                store.finish(conn, run_id, store.REJECTED, reject_reason=str(exc),
                             metrics=metrics, timings=timings)
            return
        except Exception as exc:  # any step: record where and why; a re-kick runs it again
            failed = exc.step if isinstance(exc, train.StepFailed) else step
            log.exception("run %s failed at %s", run_id, failed)
            with self.db.begin() as conn:
                store.finish(conn, run_id, store.FAILED, failed_step=failed,
                             error=describe(exc), metrics=metrics, timings=timings)
            return
        finally:
            shutil.rmtree(out, ignore_errors=True)
        log.info("run %s registered %s %s: accuracy %s (current %s %s), %d rows dropped %s",
                 run_id, train.MODEL_NAME, version, trained.metrics["accuracy"],
                 trained.metrics["current_version"], trained.metrics["current_accuracy"],
                 clean.raw - len(clean.y), clean.dropped)
        with self.db.begin() as conn:
            store.finish(conn, run_id, store.SUCCEEDED, version=version,
                         metrics=trained.metrics, timings=timings)

    def slow(self, value: T) -> T:
        """DELAY_MS and FAIL_MODE (the base fault knobs) on the train step: a slow or flaky
        trainer."""
        self.faults.apply_sync()
        return value

    def fault(self, run: dict[str, Any], step: str) -> None:
        """The fault drill: FAIL_STEP (or the run's `fail_step`) on its first attempts."""
        wanted = (run["request"] or {}).get("fail_step") or self.cfg.fail_step
        if wanted == step and run["attempts"] <= self.cfg.fail_attempts:
            raise train.StepFailed(step, f"injected failure at {step} (attempt "
                                         f"{run['attempts']}; FAIL_STEP={wanted})")


def create_worker(settings: TrainWorkerSettings | None = None) -> Celery:
    cfg = settings or TrainWorkerSettings()
    worker = TrainWorker(cfg)
    app = make_worker(QUEUE, cfg, worker)

    @app.task(name=TRAIN_TASK)
    def train_job(run_id: str) -> None:
        worker.run(run_id)

    @app.task(name=TICK_TASK)
    def tick() -> None:
        worker.tick()

    return app


__getattr__ = lazy_app(create_worker)  # `celery -A` reads `app`: built on first access
