"""Where T3 keeps its state: Optuna's RDB storage plus two tables of our own, in one database.

Optuna's tables (studies, trials, params, intermediate values) hold every trial, written by
whichever worker ran it. `search_runs` holds each search's request and its budget counters:
a worker takes a trial slot with one conditional UPDATE (`claimed < max_trials` and before
the deadline), so `max_trials` is exact however many workers race. `search_models` is the
model registry: the best trial's exported model, its parameters and its held-out metric.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import sqlalchemy as sa

from patternkit import db

PENDING, RUNNING, EXPORTING, SUCCEEDED, FAILED = (
    "pending", "running", "exporting", "succeeded", "failed")

METADATA = sa.MetaData()
RUNS = sa.Table(
    "parameter_architecture_search_runs",
    METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("space", sa.String(32), nullable=False),
    sa.Column("strategy", sa.String(16), nullable=False),
    sa.Column("pruner", sa.String(16), nullable=False),
    sa.Column("max_trials", sa.Integer, nullable=False),
    sa.Column("time_budget_s", sa.Float, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("claimed", sa.Integer, nullable=False, default=0),
    sa.Column("done", sa.Integer, nullable=False, default=0),
    sa.Column("created_ts", sa.Float, nullable=False),
    sa.Column("deadline_ts", sa.Float, nullable=False),
    sa.Column("finished_ts", sa.Float, nullable=True),
    sa.Column("stop_reason", sa.String(16), nullable=True),  # max_trials | time
    sa.Column("error", sa.Text, nullable=True),
)
MODELS = sa.Table(
    "parameter_architecture_search_models",
    METADATA,
    sa.Column("search_id", sa.String(32),
              sa.ForeignKey("parameter_architecture_search_runs.id"), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("family", sa.String(16), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("cv_accuracy", sa.Float, nullable=False),
    sa.Column("test_accuracy", sa.Float, nullable=False),
    sa.Column("n_test", sa.Integer, nullable=False),
    sa.Column("registered_ts", sa.Float, nullable=False),
)


def study_name(search_id: str) -> str:
    return f"search-{search_id}"


def storage(url: str, attempts: int = 5, heartbeat_s: float | None = None,
            grace_s: float | None = None) -> Any:
    """Optuna's RDB storage on the pattern's database (SQLite waits up to 30 s for a lock).

    Optuna creates its tables on first use without a lock: two processes doing it at the same
    moment race (`table ... already exists`), so a losing process tries again, and sees them.
    With `heartbeat_s`, a running trial beats every `heartbeat_s`; one silent for `grace_s`
    (its worker died) is failed by `optuna.storages.fail_stale_trials`.
    """
    import optuna

    url = db.normalise_url(url)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") \
        else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                  heartbeat_interval=heartbeat_s,
                                                  grace_period=grace_s)
        except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def create_run(conn: sa.Connection, search_id: str, request: dict[str, Any]) -> None:
    now = time.time()
    conn.execute(RUNS.insert().values(
        id=search_id, status=RUNNING, claimed=0, done=0, created_ts=now,
        deadline_ts=now + float(request["time_budget_s"]), **request))


def active_runs(conn: sa.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(RUNS).where(RUNS.c.status == RUNNING)
                        .order_by(RUNS.c.created_ts)).mappings()
    return [db.plain(r) for r in rows]


def claim_slot(conn: sa.Connection, search_id: str, now: float) -> int | None:
    """Take the next trial slot of a running search at time `now`, or None when its budget
    (trials or time) is spent."""
    taken = conn.execute(
        RUNS.update()
        .where(RUNS.c.id == search_id, RUNS.c.status == RUNNING,
               RUNS.c.claimed < RUNS.c.max_trials, RUNS.c.deadline_ts > now)
        .values(claimed=RUNS.c.claimed + 1))
    if taken.rowcount != 1:
        return None
    claimed = conn.execute(sa.select(RUNS.c.claimed).where(RUNS.c.id == search_id)).scalar_one()
    return int(claimed) - 1


def slot_done(conn: sa.Connection, search_id: str) -> None:
    conn.execute(RUNS.update().where(RUNS.c.id == search_id).values(done=RUNS.c.done + 1))


def take_export(conn: sa.Connection, search_id: str, ended: int = -1) -> str | None:
    """Move a finished search (every claimed slot done, or `ended` trials of the study ended,
    counting those failed because their worker died; and the trial budget or the time spent)
    to `exporting`: exactly one worker wins it. Returns the stop reason."""
    now = time.time()
    won = conn.execute(
        RUNS.update()
        .where(RUNS.c.id == search_id, RUNS.c.status == RUNNING,
               sa.or_(RUNS.c.done == RUNS.c.claimed, RUNS.c.claimed <= ended),
               sa.or_(RUNS.c.claimed >= RUNS.c.max_trials, RUNS.c.deadline_ts <= now))
        .values(status=EXPORTING))
    if won.rowcount != 1:
        return None
    row = conn.execute(sa.select(RUNS).where(RUNS.c.id == search_id)).mappings().one()
    reason = "max_trials" if row["claimed"] >= row["max_trials"] else "time"
    conn.execute(RUNS.update().where(RUNS.c.id == search_id).values(stop_reason=reason))
    return reason


def finish(conn: sa.Connection, search_id: str, error: str | None = None) -> None:
    conn.execute(RUNS.update().where(RUNS.c.id == search_id).values(
        status=FAILED if error else SUCCEEDED, error=error, finished_ts=time.time()))


def register(conn: sa.Connection, record: dict[str, Any]) -> None:
    db.upsert(conn, MODELS, record)


def run_row(conn: sa.Connection, search_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(RUNS).where(RUNS.c.id == search_id)).mappings().first()
    return db.plain(row) if row else None


def model_row(conn: sa.Connection, search_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(MODELS).where(MODELS.c.search_id == search_id)) \
        .mappings().first()
    return db.plain(row) if row else None


def list_runs(conn: sa.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(RUNS).order_by(RUNS.c.created_ts.desc()).limit(limit))
    return [db.plain(r) for r in rows.mappings()]


def best_of(trials: list[Any]) -> Any | None:
    """The best finished trial: highest value, ties to the lowest slot (so a seed, not the
    order in which parallel workers finished, decides between equal scores)."""
    import optuna

    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    return min(done, key=lambda t: (-t.value, t.user_attrs.get("slot", t.number)))
