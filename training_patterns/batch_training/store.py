"""The runs table of T1 (`batch_training_runs`): one row per training run, for the API and
for whoever has to re-kick a run.

A run is `pending` (recorded, its message sent), `running` (a worker took it: `step` says
where it is), then `succeeded` (registered as `version`), `rejected` (trained but not good
enough: `reject_reason`, nothing registered) or `failed` (`failed_step` and `error`). Every
run keeps the rows it read and dropped by reason, its metrics and each step's duration. A
worker takes a run with one conditional UPDATE (`pending` only), so a message delivered twice
runs it once, unless the run has been `running` longer than a run takes (its worker died:
the redelivered message takes it over); a re-kick moves a `failed` run back to `pending` and
keeps its attempt count.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import sqlalchemy as sa

from patternkit import db

PENDING, RUNNING, SUCCEEDED, REJECTED, FAILED = (
    "pending", "running", "succeeded", "rejected", "failed")
FINISHED = (SUCCEEDED, REJECTED, FAILED)
Status = Literal["pending", "running", "succeeded", "rejected", "failed"]

METADATA = sa.MetaData()
RUNS = sa.Table(
    "batch_training_runs",
    METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("triggered_by", sa.String(16), nullable=False),  # api | schedule | boot
    sa.Column("request", sa.JSON, nullable=False),  # seed, params, thresholds, fault drill
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("step", sa.String(16), nullable=True),
    sa.Column("failed_step", sa.String(16), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("reject_reason", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("kicks", sa.Integer, nullable=False, default=0),  # re-kicks after a failure
    sa.Column("raw_rows", sa.Integer, nullable=True),
    sa.Column("clean_rows", sa.Integer, nullable=True),
    sa.Column("dropped", sa.JSON, nullable=True),  # reason -> rows
    sa.Column("dropped_examples", sa.JSON, nullable=True),  # reason -> one row
    sa.Column("data_hash", sa.String(64), nullable=True),
    sa.Column("metrics", sa.JSON, nullable=True),
    sa.Column("timings", sa.JSON, nullable=True),  # step -> seconds
    sa.Column("version", sa.String(32), nullable=True),  # the registered version
    sa.Column("worker", sa.String(64), nullable=True),
    sa.Column("created_ts", sa.Float, nullable=False),
    sa.Column("started_ts", sa.Float, nullable=True),
    sa.Column("finished_ts", sa.Float, nullable=True),
)


def create_run(conn: sa.Connection, triggered_by: str, request: dict[str, Any]) -> str:
    run_id = uuid.uuid4().hex
    conn.execute(RUNS.insert().values(id=run_id, triggered_by=triggered_by, request=request,
                                      status=PENDING, attempts=0, kicks=0,
                                      created_ts=time.time()))
    return run_id


def delete_run(conn: sa.Connection, run_id: str) -> None:
    conn.execute(RUNS.delete().where(RUNS.c.id == run_id))


def begin(conn: sa.Connection, run_id: str, worker: str, stale_before: float
          ) -> dict[str, Any] | None:
    """Take a pending run, or one `running` since before `stale_before` (its worker died:
    this is the redelivery); None when it is unknown, finished or running elsewhere (a
    duplicate delivery)."""
    abandoned = sa.and_(RUNS.c.status == RUNNING, RUNS.c.started_ts < stale_before)
    taken = conn.execute(RUNS.update().where(RUNS.c.id == run_id,
                                             sa.or_(RUNS.c.status == PENDING, abandoned))
                         .values(status=RUNNING, attempts=RUNS.c.attempts + 1, worker=worker,
                                 started_ts=time.time(), finished_ts=None, step=None,
                                 failed_step=None, error=None, reject_reason=None))
    return get(conn, run_id) if taken.rowcount == 1 else None


def update(conn: sa.Connection, run_id: str, **values: Any) -> None:
    conn.execute(RUNS.update().where(RUNS.c.id == run_id).values(**values))


def finish(conn: sa.Connection, run_id: str, status: str, **values: Any) -> None:
    update(conn, run_id, status=status, finished_ts=time.time(), **values)


def rekick(conn: sa.Connection, run_id: str) -> bool:
    """Move a failed run back to pending; False when it is not failed."""
    moved = conn.execute(RUNS.update().where(RUNS.c.id == run_id, RUNS.c.status == FAILED)
                         .values(status=PENDING, kicks=RUNS.c.kicks + 1))
    return moved.rowcount == 1


def get(conn: sa.Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
    return db.plain(row) if row else None


def list_runs(conn: sa.Connection, limit: int, status: str | None = None
              ) -> list[dict[str, Any]]:
    query = sa.select(RUNS).order_by(RUNS.c.created_ts.desc()).limit(limit)
    if status:
        query = query.where(RUNS.c.status == status)
    return [db.plain(r) for r in conn.execute(query).mappings()]


def by_version(conn: sa.Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(sa.select(RUNS).where(RUNS.c.version.is_not(None))).mappings()
    return {str(r["version"]): db.plain(r) for r in rows}


def view(run: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it."""
    started, finished = run["started_ts"], run["finished_ts"]
    return {
        "job_id": run["id"], "status": run["status"], "triggered_by": run["triggered_by"],
        "step": run["step"], "failed_step": run["failed_step"], "error": run["error"],
        "reject_reason": run["reject_reason"], "attempts": run["attempts"],
        "kicks": run["kicks"], "request": run["request"],
        "rows": {"raw": run["raw_rows"], "clean": run["clean_rows"],
                 "dropped": run["dropped"], "examples": run["dropped_examples"]},
        "data_hash": run["data_hash"], "metrics": run["metrics"], "timings": run["timings"],
        "version": run["version"], "worker": run["worker"],
        "created": run["created_ts"], "started": started, "finished": finished,
        "took_s": round(finished - started, 3) if started and finished else None,
    }
