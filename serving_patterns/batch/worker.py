"""The batch job of S4: a Celery worker that plans jobs and predicts their rows chunk by chunk.

Declared as `worker = "serving_patterns.batch.worker"` in topology.toml (a solo-pool
`celery -A ... worker` with a heartbeat). `batch.tick` (sent by the scheduler) and
`batch.plan` (sent by the API) claim the rows a job covers and split them into chunks of
CHUNK_SIZE; `batch.chunk` predicts one chunk: rows with a missing or non-finite
feature are recorded as failed with the reason, the rest go through the model, and both are
written in one transaction. The model lives only inside a job: it is loaded on the job's first
chunk and dropped when the job ends. The worker listens on no port.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import sqlalchemy as sa
from celery import Celery, Task
from pydantic import Field
from sqlalchemy.exc import OperationalError

from patternkit.db import make_engine
from patternkit.jobs import (
    WorkerSettings,
    describe,
    lazy_app,
    make_worker,
    open_on_start,
    transient_errors,
)
from patternkit.models import ModelError, OnnxModel
from serving_patterns.batch import dwh

log = logging.getLogger("serving_patterns.batch.worker")

QUEUE = "batch"
TICK_TASK, PLAN_TASK, CHUNK_TASK = "batch.tick", "batch.plan", "batch.chunk"
FLOAT32_MAX = float(np.finfo(np.float32).max)


class BatchWorkerSettings(WorkerSettings):
    """S4's worker: the base's broker, faults and timeouts (per chunk), plus its DWH, chunks
    and retries."""

    LONGEST_JOB: ClassVar[tuple[str, ...]] = ("delay_ms", "retry_backoff_ms")
    JOB: ClassVar[str] = "chunk"

    model_path: str = Field(..., description="model directory or .onnx file with a manifest")
    database_url: str = Field(..., description="the DWH ({db.url} of the topology)")
    chunk_size: int = Field(100, gt=0, le=100_000, description="rows per chunk (mini-job)")
    retry_policy: dwh.RetryPolicy = Field(
        "partial", description="all | partial | none: what a rerun covers (see the API)"
    )
    delay_ms: int = Field(0, ge=0, description="added time per chunk: a slow model")
    fail_mode: str = Field("none", description="none | always | first_n:N | rate:P, per chunk")
    chunk_retries: int = Field(2, ge=0, description="retries of a chunk after a transient fault")
    retry_backoff_ms: int = Field(200, ge=0, description="wait before a chunk's retry")
    visibility_timeout_s: float = Field(
        5.0, gt=0, description="an unacked chunk is redelivered after this; > the longest chunk"
    )



def row_problem(features: Sequence[float | None] | None) -> str | None:
    """Why a row cannot be predicted, or None when every feature is a usable number."""
    if features is None:
        return "the row is no longer in batch_input"
    for name, value in zip(dwh.FEATURES, features, strict=True):
        if value is None or math.isnan(value):
            return f"{name} is missing (NULL or NaN): every feature must be a finite number"
        if math.isinf(value) or abs(value) > FLOAT32_MAX:
            return f"{name}={value} is not a finite float32: every feature must be finite"
    return None


class BatchWorker:
    """What a worker process holds (DB engine, the current job's model) and how it runs tasks."""

    def __init__(self, cfg: BatchWorkerSettings, app: Celery) -> None:
        self.cfg = cfg
        self.app = app
        self.faults = cfg.faults()
        self.max_attempts = cfg.chunk_retries + 1
        self.scope = dwh.new_rows_scope(cfg.retry_policy)
        self.pid: int | None = None
        self.engine: sa.Engine
        self.model: OnnxModel | None = None
        self.model_job: str | None = None

    def open(self) -> None:
        """Connect to the DWH, once per process. No model: that waits for a job."""
        if self.pid == os.getpid():
            return
        self.engine = make_engine(self.cfg.database_url)
        dwh.create_tables(self.engine)
        self.pid = os.getpid()
        log.info("DWH %s; chunks of %d rows; RETRY_POLICY=%s; no model loaded until a job runs",
                 self.engine.url.render_as_string(hide_password=True), self.cfg.chunk_size,
                 self.cfg.retry_policy)

    def close(self) -> None:
        if self.pid == os.getpid():
            self.release()
            self.engine.dispose()
            self.pid = None

    # -- the model, loaded per job ------------------------------------------------------------

    def model_for(self, job_id: str) -> OnnxModel:
        """The model for this job: loaded on its first chunk here, so each job uses the model
        file as it is when the job runs."""
        if self.model is None or self.model_job != job_id:
            self.release()
            started = time.perf_counter()
            model = OnnxModel(self.cfg.model_path)
            if model.n_features != len(dwh.FEATURES):
                raise ModelError(
                    f"model {model.name} takes {model.n_features} features; "
                    f"batch_input has {len(dwh.FEATURES)}"
                )
            self.model, self.model_job = model, job_id
            log.info("job %s: loaded model %s %s in %.0f ms", job_id, model.name, model.version,
                     (time.perf_counter() - started) * 1000)
        return self.model

    def release(self, job_id: str | None = None) -> None:
        if self.model is not None and (job_id is None or job_id == self.model_job):
            log.info("job %s: model released", self.model_job)
            self.model, self.model_job = None, None

    # -- planning -----------------------------------------------------------------------------

    def send_chunks(self, job_id: str) -> None:
        """Queue every chunk of the job not done yet (again, after a redelivered plan)."""
        with self.engine.connect() as conn:
            chunks = dwh.pending_chunks(conn, job_id)
        for chunk_no in chunks:
            self.app.send_task(CHUNK_TASK, args=[job_id, chunk_no])

    def plan(self, job_id: str) -> None:
        """An on-demand job or rerun recorded by the API: claim its rows, queue its chunks."""
        self.open()
        with self.engine.begin() as conn:
            dwh.take_plan_lock(conn)
            total = dwh.plan_job(conn, job_id, self.cfg.chunk_size)
        log.info("job %s planned: %d rows", job_id, total)
        self.send_chunks(job_id)

    def tick(self) -> str | None:
        """The scheduled run: a job for the rows waiting, unless there are none."""
        self.open()
        job_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            dwh.take_plan_lock(conn)
            if not dwh.select_scope(conn, self.scope, None):
                log.info("scheduled run: no rows waiting")
                return None
            dwh.create_job(conn, job_id, "schedule", self.scope)
            total = dwh.plan_job(conn, job_id, self.cfg.chunk_size)
        log.info("scheduled job %s planned: %d rows", job_id, total)
        self.send_chunks(job_id)
        return job_id

    # -- chunks -------------------------------------------------------------------------------

    def predict_chunk(self, job_id: str, ids: list[int]) -> dwh.ChunkOutcome:
        """Predict the usable rows of a chunk; list the others with the reason."""
        self.faults.apply_sync()
        model = self.model_for(job_id)
        with self.engine.connect() as conn:
            inputs = dwh.read_inputs(conn, ids)
        outcome = dwh.ChunkOutcome(model=model.name, version=model.version)
        good_ids: list[int] = []
        rows: list[Sequence[float | None]] = []
        for row_id in ids:
            problem = row_problem(inputs.get(row_id))
            if problem:
                outcome.failures[row_id] = problem
            else:
                good_ids.append(row_id)
                rows.append(inputs[row_id])
        if rows:
            out = model.predict(np.asarray(rows, dtype=np.float32))
            for row_id, label, proba in zip(
                good_ids, out.labels.tolist(), out.probabilities.tolist(), strict=True
            ):
                outcome.results[row_id] = (int(label), proba)
        return outcome

    def run_chunk(self, task: Task, job_id: str, chunk_no: int) -> None:
        self.open()
        attempt = dwh.begin_chunk(self.engine, job_id, chunk_no, self.cfg.served_by)
        if attempt == 0:
            log.warning("job %s chunk %d already done: duplicate delivery ignored",
                        job_id, chunk_no)
            return
        with self.engine.connect() as conn:
            ids = dwh.chunk_ids(conn, job_id, chunk_no)
        if attempt > self.max_attempts:
            # every earlier attempt died with its worker (e.g. a row that crashes it)
            reason = f"gave up: {attempt - 1} attempts never finished"
            outcome = dwh.ChunkOutcome(failures=dict.fromkeys(ids, reason))
        else:
            try:
                outcome = self.predict_chunk(job_id, ids)
            except transient_errors() as exc:
                if attempt < self.max_attempts:
                    log.warning("job %s chunk %d attempt %d: %s; retrying", job_id, chunk_no,
                                attempt, describe(exc))
                    raise task.retry(exc=exc, countdown=self.cfg.retry_backoff_ms / 1000) from None
                outcome = dwh.ChunkOutcome(failures=dict.fromkeys(ids, describe(exc)))
            except Exception as exc:  # a missing or broken model, a bug: the whole chunk fails
                log.exception("job %s chunk %d failed", job_id, chunk_no)
                outcome = dwh.ChunkOutcome(failures=dict.fromkeys(ids, describe(exc)))
        try:
            dwh.complete_chunk(self.engine, job_id, chunk_no, outcome)
        except OperationalError as exc:  # a busy DB: the chunk stays pending, try it again
            if attempt < self.max_attempts:
                raise task.retry(exc=exc, countdown=self.cfg.retry_backoff_ms / 1000) from None
            raise
        log.info("job %s chunk %d: %d predicted, %d failed", job_id, chunk_no,
                 len(outcome.results), len(outcome.failures))
        status = dwh.finish_job_if_done(self.engine, job_id)
        if status is not None:
            log.info("job %s %s", job_id, status)
            self.release(job_id)


def create_worker(settings: BatchWorkerSettings | None = None) -> Celery:
    """The Celery app with the tick, plan and chunk tasks and the bootstep that opens the DWH."""
    cfg = settings or BatchWorkerSettings()
    app = make_worker(QUEUE, cfg)
    worker = BatchWorker(cfg, app)

    open_on_start(app, worker.open, worker.close)  # once per process, before "ready."

    @app.task(name=TICK_TASK)
    def tick() -> None:
        worker.tick()

    @app.task(name=PLAN_TASK)
    def plan(job_id: str) -> None:
        worker.plan(job_id)

    @app.task(bind=True, name=CHUNK_TASK, max_retries=cfg.chunk_retries)
    def chunk(task: Task, job_id: str, chunk_no: int) -> None:
        worker.run_chunk(task, job_id, chunk_no)

    return app


__getattr__ = lazy_app(create_worker)  # `celery -A` reads `app`: built on first access
