"""The heavy stage of S11: a Celery worker that runs the big model on every queued request.

Declared as `worker = "serving_patterns.multiple_stage_prediction.worker"` in topology.toml (a
solo-pool `celery -A ... worker` with a heartbeat); Celery reads `app`, built on first access
from `HeavyWorkerSettings` (the environment). A bootstep loads `iris_heavy` and opens the job
store once per process, before the worker logs "ready."; each job then takes DELAY_MS (the
heavy model's cost), obeys FAIL_MODE and stores its answer as the job's result, which the
proxy serves as `stage: "heavy"`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from pydantic import Field

from patternkit.jobs import (
    JobStore,
    WorkerSettings,
    describe,
    lazy_app,
    make_worker,
)
from patternkit.models import OnnxModel, as_rows

log = logging.getLogger("serving_patterns.multiple_stage_prediction.worker")

QUEUE = "multiple_stage_prediction"
TASK_NAME = "multiple_stage_prediction.heavy"
# deliveries of one job that may die with their worker before the job is failed for good
MAX_ATTEMPTS = 3


class HeavyWorkerSettings(WorkerSettings):
    """The heavy worker: the base's broker, faults and timeouts, plus the heavy model."""

    service_name: str = "heavy"
    redis_url: str = Field(..., description="Redis: the Celery broker and the job records")
    model_path: str = Field(..., description="the heavy model's directory (model.onnx + manifest)")
    delay_ms: int = Field(1500, ge=0, description="added time per job: the heavy model's cost")
    job_ttl_s: int = Field(86_400, gt=0, description="how long a job's record is kept")


class HeavyStage:
    """What a worker process holds (the heavy model, the job store) and how it runs a job."""

    def __init__(self, cfg: HeavyWorkerSettings) -> None:
        self.cfg = cfg
        self.faults = cfg.faults()
        self.pid: int | None = None
        self.model: OnnxModel
        self.jobs: JobStore

    def open(self) -> None:
        """Load the model and connect, once per process (a no-op after that)."""
        if self.pid == os.getpid():
            return
        self.model = OnnxModel(self.cfg.model_path)
        self.jobs = JobStore.from_url(self.cfg.redis_url, QUEUE, self.cfg.job_ttl_s)
        self.pid = os.getpid()
        log.info("loaded heavy model %s %s", self.model.name, self.model.version)

    def close(self) -> None:
        if self.pid == os.getpid():
            self.jobs.close()
            self.pid = None

    def predict(self, rows: list[list[float]], request_id: str | None) -> dict[str, Any]:
        """The heavy model's answer for `rows`, after DELAY_MS and subject to FAIL_MODE."""
        X = as_rows(rows, self.model.n_features)
        self.faults.apply_sync()
        return {"stage": "heavy", **self.model.answer(X, self.cfg.served_by, request_id)}

    def run(self, job_id: str, rows: list[list[float]], request_id: str | None) -> None:
        """Run one job; a failure is recorded on the job (the light answer is already out)."""
        self.open()
        if self.jobs.start_attempt(job_id, self.cfg.served_by, MAX_ATTEMPTS) is None:
            return
        try:
            result = self.predict(rows, request_id)
        except Exception as exc:  # bad data, an injected fault or a bug: report it, do not loop
            log.error("job %s failed: %s", job_id, describe(exc))
            self.jobs.fail(job_id, describe(exc))
            return
        self.jobs.finish(job_id, result)


def create_worker(settings: HeavyWorkerSettings | None = None) -> Celery:
    """The Celery app with the heavy task and the bootstep that loads the model."""
    cfg = settings or HeavyWorkerSettings()
    stage = HeavyStage(cfg)
    app = make_worker(QUEUE, cfg, opens=stage)  # opened once per process, before "ready."

    @app.task(name=TASK_NAME)
    def heavy(job_id: str, rows: list[list[float]], request_id: str | None) -> None:
        stage.run(job_id, rows, request_id)

    return app


__getattr__ = lazy_app(create_worker)  # `celery -A` reads `app`: built on first access
