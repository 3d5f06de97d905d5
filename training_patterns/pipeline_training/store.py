"""Where T2 keeps its state, in the pattern's SQL database.

`pipeline_training_runs`: one row per run (its request, state, the step it failed at).
`pipeline_training_steps`: one row per run and step (state, cache hit or run and why, the
cache key, the worker and queue that handled it, times, error, output digest, and how often
it executed in this run). `pipeline_training_executions`: every time a worker handled a step
(ran it or restored it), the counters users read. `pipeline_training_cache`: a step's cache
key -> the run whose artifact holds that output. `pipeline_training_models`: the models the
build step registered. State changes are conditional UPDATEs, so a duplicate delivery or a
second dispatcher tick cannot move a step twice.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from patternkit import db

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
PENDING, QUEUED, STEP_RUNNING, DONE, STEP_FAILED = (
    "pending", "queued", "running", "done", "failed")
HIT, RUN = "hit", "run"
# what a step sent again forgets of its last handling (its executions count stays)
CLEARED: dict[str, None] = dict.fromkeys(
    ("cache", "reason", "worker", "queue", "pid", "error", "queued_ts", "started_ts",
     "finished_ts"))

METADATA = sa.MetaData()
RUNS = sa.Table(
    "pipeline_training_runs", METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("created_ts", sa.Float, nullable=False),
    sa.Column("finished_ts", sa.Float),
    sa.Column("failed_step", sa.String(32)),
    sa.Column("error", sa.Text),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
)
STEPS = sa.Table(
    "pipeline_training_steps", METADATA,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("step", sa.String(32), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("force", sa.Boolean, nullable=False, default=False),
    sa.Column("cache", sa.String(8)),
    sa.Column("reason", sa.Text),
    sa.Column("key", sa.String(64)),
    sa.Column("worker", sa.String(128)),
    sa.Column("queue", sa.String(32)),
    sa.Column("pid", sa.Integer),
    sa.Column("executions", sa.Integer, nullable=False, default=0),
    sa.Column("queued_ts", sa.Float),
    sa.Column("started_ts", sa.Float),
    sa.Column("finished_ts", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("digest", sa.String(64)),
    sa.Column("inputs", sa.JSON),
    sa.Column("outputs", sa.JSON),
)
EXECUTIONS = sa.Table(
    "pipeline_training_executions", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False, index=True),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # ran | restored | failed
    sa.Column("worker", sa.String(128), nullable=False),
    sa.Column("queue", sa.String(32), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_ts", sa.Float, nullable=False),
    sa.Column("finished_ts", sa.Float, nullable=False),
)
CACHE = sa.Table(
    "pipeline_training_cache", METADATA,
    sa.Column("step", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_ts", sa.Float, nullable=False),
)
MODELS = sa.Table(
    "pipeline_training_models", METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("accuracy", sa.Float, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("registered_ts", sa.Float, nullable=False),
)




def create_run(conn: sa.Connection, run_id: str, request: dict[str, Any],
               order: tuple[str, ...]) -> None:
    conn.execute(RUNS.insert().values(id=run_id, state=RUNNING, request=request,
                                      created_ts=time.time(), retries=0))
    conn.execute(STEPS.insert(), [
        {"run_id": run_id, "step": name, "position": i, "state": PENDING, "force": False,
         "executions": 0} for i, name in enumerate(order)])


def run_row(conn: sa.Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
    return db.plain(row) if row else None


def step_rows(conn: sa.Connection, run_id: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(sa.select(STEPS).where(STEPS.c.run_id == run_id)
                        .order_by(STEPS.c.position)).mappings()
    return {r["step"]: db.plain(r) for r in rows}


def active_runs(conn: sa.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(RUNS).where(RUNS.c.state == RUNNING)
                        .order_by(RUNS.c.created_ts)).mappings()
    return [db.plain(r) for r in rows]


def list_runs(conn: sa.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(RUNS).order_by(RUNS.c.created_ts.desc()).limit(limit))
    return [db.plain(r) for r in rows.mappings()]


def set_step(conn: sa.Connection, run_id: str, step: str, from_states: tuple[str, ...],
             **values: Any) -> bool:
    """Move a step on only from one of `from_states`; True when this call moved it."""
    moved = conn.execute(STEPS.update().where(
        STEPS.c.run_id == run_id, STEPS.c.step == step, STEPS.c.state.in_(from_states)
    ).values(**values))
    return bool(moved.rowcount == 1)


def finish_run(conn: sa.Connection, run_id: str, state: str, failed_step: str | None = None,
               error: str | None = None) -> bool:
    moved = conn.execute(RUNS.update().where(RUNS.c.id == run_id, RUNS.c.state == RUNNING)
                         .values(state=state, failed_step=failed_step, error=error,
                                 finished_ts=time.time()))
    return bool(moved.rowcount == 1)


def reopen_run(conn: sa.Connection, run_id: str, retry: bool) -> bool:
    values: dict[str, Any] = {"state": RUNNING, "failed_step": None, "error": None,
                              "finished_ts": None}
    if retry:
        values["retries"] = RUNS.c.retries + 1
    moved = conn.execute(RUNS.update().where(RUNS.c.id == run_id, RUNS.c.state != RUNNING)
                         .values(**values))
    return bool(moved.rowcount == 1)


def record_execution(conn: sa.Connection, **values: Any) -> None:
    conn.execute(EXECUTIONS.insert().values(**values))


def executions(conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(EXECUTIONS).where(EXECUTIONS.c.run_id == run_id)
                        .order_by(EXECUTIONS.c.started_ts)).mappings()
    return [db.plain(r) for r in rows]


def cached(conn: sa.Connection, step: str, key: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(CACHE).where(CACHE.c.step == step, CACHE.c.key == key)
                       ).mappings().first()
    return db.plain(row) if row else None


def remember(conn: sa.Connection, step: str, key: str, run_id: str, digest: str) -> None:
    db.upsert(conn, CACHE, {"step": step, "key": key, "run_id": run_id, "digest": digest,
                            "created_ts": time.time()})


def forget(conn: sa.Connection, step: str, key: str) -> None:
    conn.execute(CACHE.delete().where(CACHE.c.step == step, CACHE.c.key == key))


def register(conn: sa.Connection, record: dict[str, Any]) -> None:
    db.upsert(conn, MODELS, record)


def models(conn: sa.Connection, run_id: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(MODELS).order_by(MODELS.c.registered_ts)
    if run_id is not None:
        query = query.where(MODELS.c.run_id == run_id)
    return [db.plain(r) for r in conn.execute(query).mappings()]


def totals(conn: sa.Connection) -> dict[str, dict[str, int]]:
    """Executions per step and outcome over every run."""
    rows = conn.execute(sa.select(EXECUTIONS.c.step, EXECUTIONS.c.outcome, sa.func.count())
                        .group_by(EXECUTIONS.c.step, EXECUTIONS.c.outcome))
    out: dict[str, dict[str, int]] = {}
    for step, outcome, n in rows:
        out.setdefault(str(step), {})[str(outcome)] = int(n)
    return out
