"""The worker of S3: a Celery task runs the model on each queued job and records the result.

Declared as `worker = "serving_patterns.asynchronous.worker"` in topology.toml (a solo-pool
`celery -A ... worker` with a heartbeat). Celery reads `app`, which this module's `__getattr__`
builds on first access from `PredictionWorkerSettings` (the environment): importing the module
reads nothing, and this entry module is the one place that reads settings outside a factory
call. A bootstep loads the ONNX model and opens the DB once per process, before Celery logs
"ready."; each job then sleeps DELAY_MS, obeys FAIL_MODE, upserts its row into
`asynchronous_inference` (D2, in the `db` backing) and is marked done. Transient failures are
retried MAX_RETRIES times, other errors fail the job at once, a finished job is never rerun.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from celery import Celery, Task
from pydantic import Field

from patternkit.db import create_tables, make_engine, show_url, upsert
from patternkit.jobs import (
    JobStore,
    WorkerSettings,
    describe,
    lazy_app,
    make_worker,
    transient_errors,
)
from patternkit.models import OnnxModel, as_rows

log = logging.getLogger("serving_patterns.asynchronous.worker")

QUEUE = "asynchronous"
TASK_NAME = "asynchronous.predict"

METADATA = sa.MetaData()
INFERENCE = sa.Table(
    "asynchronous_inference",
    METADATA,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(128)),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("n_rows", sa.Integer, nullable=False),
    sa.Column("prediction", sa.JSON, nullable=False),
    sa.Column("probabilities", sa.JSON, nullable=False),
    sa.Column("worker", sa.String(64), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


class PredictionWorkerSettings(WorkerSettings):
    """S3's worker: the base's broker, faults and timeouts, plus its model, DB and retries."""

    LONGEST_JOB: ClassVar[tuple[str, ...]] = ("delay_ms", "retry_backoff_ms")

    redis_url: str = Field(..., description="Redis: the Celery broker and the job records")
    model_path: str = Field(..., description="model directory or .onnx file with a manifest")
    delay_ms: int = Field(1000, ge=0, description="added time per job: a slow model")
    max_retries: int = Field(2, ge=0, description="retries of a transient failure")
    retry_backoff_ms: int = Field(200, ge=0, description="wait before a retry")
    database_url: str = Field(..., description="the inference DB ({db.url} of the topology)")
    job_ttl_s: int = Field(86_400, gt=0)


class PredictionWorker:
    """What a worker process holds (model, DB engine, job store) and how it runs one job."""

    def __init__(self, cfg: PredictionWorkerSettings) -> None:
        self.cfg = cfg
        self.faults = cfg.faults()
        self.max_attempts = cfg.max_retries + 1
        self.pid: int | None = None
        self.model: OnnxModel
        self.engine: sa.Engine
        self.jobs: JobStore

    def open(self) -> None:
        """Load the model and connect, once per process (a no-op after that)."""
        if self.pid == os.getpid():
            return
        self.model = OnnxModel(self.cfg.model_path)
        self.engine = make_engine(self.cfg.database_url)
        create_tables(self.engine, METADATA)
        self.jobs = JobStore.from_url(self.cfg.redis_url, QUEUE, self.cfg.job_ttl_s)
        self.pid = os.getpid()
        log.info("loaded model %s %s; inference DB %s", self.model.name, self.model.version,
                 show_url(self.engine))

    def close(self) -> None:
        if self.pid == os.getpid():
            self.engine.dispose()
            self.jobs.close()
            self.pid = None

    def predict(self, rows: list[list[float]], request_id: str | None) -> dict[str, Any]:
        """The sync predictor's answer for `rows`, after DELAY_MS and subject to FAIL_MODE."""
        self.faults.apply_sync()
        return self.model.answer(as_rows(rows, self.model.n_features), self.cfg.served_by,
                                 request_id)

    def record(self, job_id: str, result: dict[str, Any], attempt: int) -> None:
        # a redelivered job that gets here again overwrites its row
        upsert(
            self.engine, INFERENCE,
            {
                "job_id": job_id,
                "request_id": result["request_id"],
                "model": result["model"],
                "version": result["version"],
                "n_rows": len(result["prediction"]),
                "prediction": result["prediction"].tolist(),
                "probabilities": result["probabilities"].tolist(),
                "worker": self.cfg.served_by,
                "attempts": attempt,
                "created_at": datetime.now(UTC),
            },
        )

    def run(self, task: Task, job_id: str, rows: list[list[float]], request_id: str | None) -> None:
        self.open()
        attempt = self.jobs.start_attempt(job_id, self.cfg.served_by, self.max_attempts)
        if attempt is None:
            return
        try:
            result = self.predict(rows, request_id)
            self.record(job_id, result, attempt)
        except transient_errors() as exc:
            if attempt < self.max_attempts:
                self.jobs.requeue(job_id, describe(exc))
                raise task.retry(exc=exc, countdown=self.cfg.retry_backoff_ms / 1000) from None
            self.jobs.fail(job_id, describe(exc))
            raise
        except Exception as exc:  # bad data or a bug: another attempt would fail the same way
            self.jobs.fail(job_id, describe(exc))
            raise
        self.jobs.finish(job_id, result)


def create_worker(settings: PredictionWorkerSettings | None = None) -> Celery:
    """The Celery app with the predict task and the bootstep that opens the worker's resources."""
    cfg = settings or PredictionWorkerSettings()
    worker = PredictionWorker(cfg)
    app = make_worker(QUEUE, cfg, opens=worker)  # opened once per process, before "ready."

    @app.task(bind=True, name=TASK_NAME, max_retries=cfg.max_retries)
    def predict(task: Task, job_id: str, rows: list[list[float]], request_id: str | None) -> None:
        worker.run(task, job_id, rows, request_id)

    return app


__getattr__ = lazy_app(create_worker)  # `celery -A` reads `app`: built on first access
