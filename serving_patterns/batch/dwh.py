"""The DWH of S4: the input, result and job tables, and every query the API and the batch run.

`batch_input` holds the rows to score (f1..f4; NULL is allowed, as in any upstream table),
`batch_result` one prediction per input row, upserted by row id so that a rerun or a
redelivered chunk overwrites instead of adding a duplicate. `batch_jobs`, `batch_chunk`,
`batch_job_row` and `batch_failure` record what each job covers, how far it got and which
rows failed and why. Planning a job first takes the `batch_lock` row, so two triggers (the
schedule and a user) never claim the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from patternkit import db

FEATURES = ("f1", "f2", "f3", "f4")
RetryPolicy = Literal["all", "partial", "none"]

# job statuses; a job is active (its rows are claimed) while pending or running
PENDING, RUNNING = "pending", "running"
SUCCEEDED, PARTIAL, FAILED = "succeeded", "partial", "failed"
ACTIVE = (PENDING, RUNNING)
# which rows a job covers
NEW = "new"  # rows never tried: no result and no failure (RETRY_POLICY=all|partial)
UNPREDICTED = "unpredicted"  # rows without a result, failed ones included (RETRY_POLICY=none)
FAILED_ROWS = "failed"  # a rerun of exactly the parent's failed rows (partial)
ALL_ROWS = "all"  # a rerun of every row of the parent (all)

METADATA = sa.MetaData()
INPUT = sa.Table(
    "batch_input",
    METADATA,
    sa.Column("id", db.ROW_ID, primary_key=True, autoincrement=True),
    *(sa.Column(name, sa.Float, nullable=True) for name in FEATURES),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
)
RESULT = sa.Table(
    "batch_result",
    METADATA,
    sa.Column("input_id", db.ROW_ID, sa.ForeignKey("batch_input.id"), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("probabilities", sa.JSON, nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(32), nullable=False, index=True),
    sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=False),
)
JOBS = sa.Table(
    "batch_jobs",
    METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("triggered_by", sa.String(16), nullable=False),  # api | schedule | rerun
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("parent_id", sa.String(32), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("total", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)
CHUNKS = sa.Table(
    "batch_chunk",
    METADATA,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("chunk_no", sa.Integer, primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | done
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("predicted", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("model", sa.String(64), nullable=True),
    sa.Column("version", sa.String(32), nullable=True),
    sa.Column("worker", sa.String(64), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)
JOB_ROWS = sa.Table(
    "batch_job_row",
    METADATA,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("input_id", db.ROW_ID, primary_key=True, index=True),
    sa.Column("chunk_no", sa.Integer, nullable=False),
    sa.Index("ix_batch_job_row_chunk", "job_id", "chunk_no"),
)
FAILURES = sa.Table(
    "batch_failure",
    METADATA,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("input_id", db.ROW_ID, primary_key=True, index=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
)
LOCK = sa.Table(
    "batch_lock",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("plans", sa.Integer, nullable=False),
)


def now() -> datetime:
    return datetime.now(UTC)


def aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes, which are UTC here; PostgreSQL gives aware ones."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def iso(ts: datetime | None) -> str | None:
    return None if ts is None else aware(ts).astimezone(UTC).isoformat(timespec="milliseconds")


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((aware(end) - aware(start)).total_seconds(), 3)


def create_tables(engine: sa.Engine) -> None:
    """Create the tables and the lock row; the API and the worker may race to do it."""
    db.create_tables(engine, METADATA)
    db.upsert(engine, LOCK, {"id": 1, "plans": 0}, update=[])


def new_rows_scope(policy: RetryPolicy) -> str:
    """What a new (scheduled or on-demand) job covers under a retry policy."""
    return UNPREDICTED if policy == "none" else NEW


# -- input rows -------------------------------------------------------------------------------


def _features(row: Any) -> list[float | None]:
    return [None if v is None or math.isnan(v) else v for v in (row[f] for f in FEATURES)]


def insert_rows(conn: sa.Connection, rows: Sequence[Sequence[float | None]]) -> list[int]:
    """Append input rows; returns their new ids in order."""
    stamp = now()
    values = [{**dict(zip(FEATURES, row, strict=True)), "created_at": stamp} for row in rows]
    stmt = sa.insert(INPUT).returning(INPUT.c.id, sort_by_parameter_order=True)
    return [int(i) for i in conn.scalars(stmt, values)]


def update_row(conn: sa.Connection, row_id: int, features: Sequence[float | None]) -> bool:
    """Correct a row's features (as upstream would); False if there is no such row."""
    values = {**dict(zip(FEATURES, features, strict=True)), "updated_at": now()}
    done = conn.execute(sa.update(INPUT).where(INPUT.c.id == row_id).values(values))
    return bool(done.rowcount)


def row_view(conn: sa.Connection, row_id: int) -> dict[str, Any] | None:
    """An input row with its prediction (if any) and every failure recorded for it."""
    row = conn.execute(sa.select(INPUT).where(INPUT.c.id == row_id)).mappings().first()
    if row is None:
        return None
    result = conn.execute(sa.select(RESULT).where(RESULT.c.input_id == row_id)).mappings().first()
    failures = conn.execute(
        sa.select(FAILURES.c.job_id, FAILURES.c.reason, FAILURES.c.failed_at)
        .where(FAILURES.c.input_id == row_id).order_by(FAILURES.c.failed_at)
    ).mappings()
    return {
        "id": row["id"],
        "features": _features(row),
        "result": None if result is None else {
            "label": result["label"],
            "probabilities": result["probabilities"],
            "model": result["model"],
            "version": result["version"],
            "job_id": result["job_id"],
            "predicted_at": iso(result["predicted_at"]),
        },
        "failures": [
            {"job_id": f["job_id"], "reason": f["reason"], "failed_at": iso(f["failed_at"])}
            for f in failures
        ],
    }


def read_inputs(conn: sa.Connection, ids: Sequence[int]) -> dict[int, list[float | None]]:
    rows = conn.execute(sa.select(INPUT).where(INPUT.c.id.in_(ids))).mappings()
    return {int(r["id"]): _features(r) for r in rows}


def summary(conn: sa.Connection) -> dict[str, Any]:
    """What the tables hold: rows, predictions, rows never tried, jobs per status."""
    rows = conn.scalar(sa.select(sa.func.count()).select_from(INPUT)) or 0
    predicted = conn.scalar(sa.select(sa.func.count()).select_from(RESULT)) or 0
    untried = conn.scalar(
        sa.select(sa.func.count()).select_from(INPUT).where(
            ~sa.exists().where(RESULT.c.input_id == INPUT.c.id),
            ~sa.exists().where(FAILURES.c.input_id == INPUT.c.id),
        )
    ) or 0
    jobs: dict[str, int] = {
        status: n for status, n in
        conn.execute(sa.select(JOBS.c.status, sa.func.count()).group_by(JOBS.c.status))
    }
    return {"rows": rows, "predicted": predicted, "unpredicted": rows - predicted,
            "never_tried": untried, "jobs": jobs}


# -- jobs -------------------------------------------------------------------------------------


def create_job(
    conn: sa.Connection, job_id: str, triggered_by: str, scope: str, parent_id: str | None = None
) -> None:
    conn.execute(sa.insert(JOBS).values(
        id=job_id, triggered_by=triggered_by, scope=scope, parent_id=parent_id, status=PENDING,
        created_at=now(),
    ))


def delete_job(conn: sa.Connection, job_id: str) -> None:
    conn.execute(sa.delete(JOBS).where(JOBS.c.id == job_id))


def get_job(conn: sa.Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(JOBS).where(JOBS.c.id == job_id)).mappings().first()
    return dict(row) if row else None


def count_failures(conn: sa.Connection, job_id: str) -> int:
    stmt = sa.select(sa.func.count()).select_from(FAILURES).where(FAILURES.c.job_id == job_id)
    return conn.scalar(stmt) or 0


def _brief(job: Any, chunks: Any) -> dict[str, Any]:
    def total(name: str) -> int:
        return int(chunks.get(name) or 0)

    predicted, failed = total("predicted"), total("failed")
    return {
        "job_id": job["id"],
        "status": job["status"],
        "triggered_by": job["triggered_by"],
        "scope": job["scope"],
        "parent_id": job["parent_id"],
        "total": job["total"],
        "processed": predicted + failed,
        "predicted": predicted,
        "failed": failed,
        "chunks": {"total": total("total"), "done": total("done"), "attempts": total("attempts")},
        "created_at": iso(job["created_at"]),
        "started_at": iso(job["started_at"]),
        "finished_at": iso(job["finished_at"]),
        "took_s": seconds_between(job["started_at"], job["finished_at"]),
    }


def _chunk_totals(job_ids: Sequence[str]) -> sa.Select[Any]:
    return sa.select(
        CHUNKS.c.job_id,
        sa.func.count().label("total"),
        sa.func.sum(sa.case((CHUNKS.c.status == "done", 1), else_=0)).label("done"),
        sa.func.sum(CHUNKS.c.attempts).label("attempts"),
        sa.func.sum(CHUNKS.c.predicted).label("predicted"),
        sa.func.sum(CHUNKS.c.failed).label("failed"),
    ).where(CHUNKS.c.job_id.in_(job_ids)).group_by(CHUNKS.c.job_id)


def job_view(conn: sa.Connection, job_id: str) -> dict[str, Any] | None:
    """A job as the API shows it: status, progress, model, and every failed row with why."""
    job = conn.execute(sa.select(JOBS).where(JOBS.c.id == job_id)).mappings().first()
    if job is None:
        return None
    chunks: Any = conn.execute(_chunk_totals([job_id])).mappings().first() or {}
    view = _brief(job, chunks)
    models = conn.execute(
        sa.select(CHUNKS.c.model, CHUNKS.c.version).distinct()
        .where(CHUNKS.c.job_id == job_id, CHUNKS.c.model.is_not(None))
    ).all()
    failures = conn.execute(
        sa.select(FAILURES.c.input_id, FAILURES.c.reason)
        .where(FAILURES.c.job_id == job_id).order_by(FAILURES.c.input_id)
    ).all()
    view["models"] = [f"{name} {version}" for name, version in models]
    view["failed_ids"] = [int(i) for i, _ in failures]
    view["failures"] = [{"id": int(i), "reason": reason} for i, reason in failures]
    return view


def list_jobs(
    conn: sa.Connection, limit: int, triggered_by: str | None = None
) -> list[dict[str, Any]]:
    """The latest jobs, newest first, without their failure lists."""
    query = sa.select(JOBS).order_by(JOBS.c.created_at.desc(), JOBS.c.id).limit(limit)
    if triggered_by:
        query = query.where(JOBS.c.triggered_by == triggered_by)
    jobs = conn.execute(query).mappings().all()
    totals = {r["job_id"]: r for r in conn.execute(
        _chunk_totals([j["id"] for j in jobs])).mappings()}
    return [_brief(job, totals.get(job["id"], {})) for job in jobs]


# -- planning: which rows a job covers, in which chunks ----------------------------------------


def take_plan_lock(conn: sa.Connection) -> None:
    """Serialise planners until this transaction ends (a row lock in PostgreSQL, the write
    lock in SQLite): no two jobs ever claim the same row."""
    conn.execute(sa.update(LOCK).where(LOCK.c.id == 1).values(plans=LOCK.c.plans + 1))


def _claimed(id_column: sa.ColumnElement[int]) -> sa.Exists:
    """A row already belongs to an active (pending or running) job."""
    return (
        sa.select(JOB_ROWS.c.input_id)
        .join(JOBS, JOBS.c.id == JOB_ROWS.c.job_id)
        .where(JOB_ROWS.c.input_id == id_column, JOBS.c.status.in_(ACTIVE))
        .exists()
    )


def select_scope(conn: sa.Connection, scope: str, parent_id: str | None) -> list[int]:
    """The ids a job of `scope` covers now, minus rows another active job holds."""
    if scope in (NEW, UNPREDICTED):
        query = sa.select(INPUT.c.id).where(~sa.exists().where(RESULT.c.input_id == INPUT.c.id))
        if scope == NEW:
            query = query.where(~sa.exists().where(FAILURES.c.input_id == INPUT.c.id))
        query = query.where(~_claimed(INPUT.c.id))
    elif scope == FAILED_ROWS:
        query = sa.select(FAILURES.c.input_id).where(
            FAILURES.c.job_id == parent_id, ~_claimed(FAILURES.c.input_id))
    elif scope == ALL_ROWS:
        query = sa.select(JOB_ROWS.c.input_id).where(
            JOB_ROWS.c.job_id == parent_id, ~_claimed(JOB_ROWS.c.input_id))
    else:
        raise ValueError(f"unknown job scope {scope!r}")
    return sorted(int(i) for i in conn.scalars(query))


def plan_job(conn: sa.Connection, job_id: str, chunk_size: int) -> int:
    """Split a pending job's rows into chunks and mark it running; returns its row count.

    Call inside a transaction that holds the plan lock. A job already planned (a redelivered
    plan message) is left alone. A job with nothing to do succeeds at once.
    """
    job = get_job(conn, job_id)
    if job is None or job["status"] != PENDING:
        return int(job["total"] or 0) if job else 0
    ids = select_scope(conn, job["scope"], job["parent_id"])
    chunks = [ids[i:i + chunk_size] for i in range(0, len(ids), chunk_size)]
    if ids:
        conn.execute(sa.insert(JOB_ROWS), [
            {"job_id": job_id, "input_id": i, "chunk_no": n}
            for n, chunk in enumerate(chunks) for i in chunk
        ])
        conn.execute(sa.insert(CHUNKS), [
            {"job_id": job_id, "chunk_no": n, "size": len(chunk), "status": PENDING,
             "attempts": 0, "predicted": 0, "failed": 0}
            for n, chunk in enumerate(chunks)
        ])
    stamp = now()
    conn.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(
        status=RUNNING if ids else SUCCEEDED, total=len(ids), started_at=stamp,
        finished_at=None if ids else stamp,
    ))
    return len(ids)


def pending_chunks(conn: sa.Connection, job_id: str) -> list[int]:
    query = sa.select(CHUNKS.c.chunk_no).where(
        CHUNKS.c.job_id == job_id, CHUNKS.c.status == PENDING).order_by(CHUNKS.c.chunk_no)
    return [int(n) for n in conn.scalars(query)]


# -- running chunks ---------------------------------------------------------------------------


@dataclass
class ChunkOutcome:
    """What one chunk produced: predictions by row id, and failed row ids with the reason."""

    results: dict[int, tuple[int, list[float]]] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    model: str | None = None
    version: str | None = None


def begin_chunk(engine: sa.Engine, job_id: str, chunk_no: int, worker: str) -> int:
    """Count an attempt at a chunk; returns the attempt number, 0 if the chunk is done."""
    where = (CHUNKS.c.job_id == job_id, CHUNKS.c.chunk_no == chunk_no)
    with engine.begin() as conn:
        done = conn.execute(sa.update(CHUNKS).where(*where, CHUNKS.c.status == PENDING).values(
            attempts=CHUNKS.c.attempts + 1, worker=worker, started_at=now()))
        if not done.rowcount:
            return 0
        return int(conn.scalar(sa.select(CHUNKS.c.attempts).where(*where)) or 0)


def chunk_ids(conn: sa.Connection, job_id: str, chunk_no: int) -> list[int]:
    query = sa.select(JOB_ROWS.c.input_id).where(
        JOB_ROWS.c.job_id == job_id, JOB_ROWS.c.chunk_no == chunk_no).order_by(JOB_ROWS.c.input_id)
    return [int(i) for i in conn.scalars(query)]


def complete_chunk(
    engine: sa.Engine, job_id: str, chunk_no: int, outcome: ChunkOutcome
) -> None:
    """Write a chunk's predictions and failures and mark it done, in one transaction.

    Results are upserted by row id: a chunk delivered twice, or a row predicted again by a
    rerun, leaves exactly one result per row (the latest).
    """
    stamp = now()
    with engine.begin() as conn:
        db.upsert(conn, RESULT, [
            {"input_id": i, "label": label, "probabilities": proba, "model": outcome.model,
             "version": outcome.version, "job_id": job_id, "predicted_at": stamp}
            for i, (label, proba) in outcome.results.items()
        ])
        db.upsert(conn, FAILURES, [
            {"job_id": job_id, "input_id": i, "reason": reason, "failed_at": stamp}
            for i, reason in outcome.failures.items()
        ])
        conn.execute(
            sa.update(CHUNKS)
            .where(CHUNKS.c.job_id == job_id, CHUNKS.c.chunk_no == chunk_no,
                   CHUNKS.c.status == PENDING)
            .values(status="done", predicted=len(outcome.results),
                    failed=len(outcome.failures), model=outcome.model,
                    version=outcome.version, finished_at=stamp)
        )


def finish_job_if_done(engine: sa.Engine, job_id: str) -> str | None:
    """Once no chunk is pending, settle the job's status; returns it (None if not yet done,
    or another worker settled it first)."""
    with engine.begin() as conn:
        if pending_chunks(conn, job_id):
            return None
        totals: Any = conn.execute(_chunk_totals([job_id])).mappings().first() or {}
        failed = int(totals.get("failed") or 0)
        processed = failed + int(totals.get("predicted") or 0)
        status = SUCCEEDED if failed == 0 else FAILED if failed >= processed else PARTIAL
        settled = conn.execute(
            sa.update(JOBS).where(JOBS.c.id == job_id, JOBS.c.status == RUNNING)
            .values(status=status, finished_at=now())
        )
        return status if settled.rowcount else None
