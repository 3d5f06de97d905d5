"""The release registry's tables of L1: each model version's state, and every decision.

`train_then_serve_releases` has one row per version the training job published into the
model repository. A version enters as `candidate` (training made it; nobody has looked), a
human moves it to `approved` or it is `refused` (under the bar: the reason is kept), a deploy
makes it `deployed` (the one the predictor serves, MLflow's `champion` alias) and the version
it replaced `retired`; a rollback marks the bad one `rolled_back` and deploys the version
retired last. `train_then_serve_events` is the audit trail and the demo's timeline: one row
per candidate seen, approval, refusal, deploy, rollback and adoption (the boot version the
predictor served before the registry had any record), with who, when and the details.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import sqlalchemy as sa

from patternkit import db

CANDIDATE, APPROVED, REFUSED, DEPLOYED, RETIRED, ROLLED_BACK = (
    "candidate", "approved", "refused", "deployed", "retired", "rolled_back")
State = Literal["candidate", "approved", "refused", "deployed", "retired", "rolled_back"]
DEPLOYABLE = (APPROVED, RETIRED)  # a retired version was approved and served before

METADATA = sa.MetaData()
RELEASES = sa.Table(
    "train_then_serve_releases",
    METADATA,
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),  # the training run that made it
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("decided_by", sa.String(64), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),  # why it was refused or rolled back
    sa.Column("comparison", sa.JSON, nullable=True),  # what the approver saw
    sa.Column("created_ts", sa.Float, nullable=False),
    sa.Column("decided_ts", sa.Float, nullable=True),
    sa.Column("deployed_ts", sa.Float, nullable=True),
    sa.Column("retired_ts", sa.Float, nullable=True),
)
EVENTS = sa.Table(
    "train_then_serve_events",
    METADATA,
    sa.Column("id", db.ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("by", sa.String(64), nullable=True),
    sa.Column("detail", sa.JSON, nullable=False),
)


def event(conn: sa.Connection, version: str, action: str, by: str | None = None,
          **detail: Any) -> None:
    conn.execute(EVENTS.insert().values(at=time.time(), version=version, action=action, by=by,
                                        detail=detail))


def get(conn: sa.Connection, version: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(RELEASES).where(RELEASES.c.version == version)).mappings().first()
    return db.plain(row) if row else None


def known(conn: sa.Connection) -> set[str]:
    return set(conn.scalars(sa.select(RELEASES.c.version)))


def add_candidate(conn: sa.Connection, version: str, run_id: str | None,
                  metrics: dict[str, Any], sha256: str, state: str = CANDIDATE) -> None:
    conn.execute(RELEASES.insert().values(version=version, state=state, run_id=run_id,
                                          metrics=metrics, sha256=sha256,
                                          created_ts=time.time()))
    event(conn, version, "candidate", run_id=run_id, accuracy=metrics.get("accuracy"))


def deployed(conn: sa.Connection) -> dict[str, Any] | None:
    row = conn.execute(sa.select(RELEASES).where(RELEASES.c.state == DEPLOYED)).mappings().first()
    return db.plain(row) if row else None


def rollback_target(conn: sa.Connection) -> dict[str, Any] | None:
    """The version retired last: the one served before the current one (rolled-back
    versions are skipped, so rollbacks walk back through what served well)."""
    row = conn.execute(sa.select(RELEASES).where(RELEASES.c.state == RETIRED)
                       .order_by(RELEASES.c.retired_ts.desc())).mappings().first()
    return db.plain(row) if row else None


def decide(conn: sa.Connection, version: str, state: str, by: str, note: str | None,
           comparison: dict[str, Any], reason: str | None = None) -> None:
    conn.execute(RELEASES.update().where(RELEASES.c.version == version).values(
        state=state, decided_by=by, note=note, comparison=comparison, reason=reason,
        decided_ts=time.time()))
    event(conn, version, "approve" if state == APPROVED else "refuse", by, note=note,
          reason=reason, comparison=comparison)


def switch(conn: sa.Connection, version: str, previous: str | None, action: str, by: str,
           **detail: Any) -> None:
    """`version` is now served; `previous` (if any) is retired, or rolled back."""
    now = time.time()
    if previous is not None and previous != version:
        conn.execute(RELEASES.update().where(RELEASES.c.version == previous).values(
            state=ROLLED_BACK if action == "rollback" else RETIRED, retired_ts=now,
            reason=detail.get("reason") if action == "rollback" else None))
    conn.execute(RELEASES.update().where(RELEASES.c.version == version).values(
        state=DEPLOYED, deployed_ts=now))
    event(conn, version, action, by, previous=previous, **detail)


def list_releases(conn: sa.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(RELEASES).order_by(RELEASES.c.created_ts.desc())).mappings()
    return [db.plain(r) for r in rows]


def list_events(conn: sa.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(EVENTS).order_by(EVENTS.c.id.desc()).limit(limit)).mappings()
    return [db.plain(r) for r in rows][::-1]


def view(r: dict[str, Any]) -> dict[str, Any]:
    return {"version": r["version"], "state": r["state"], "run_id": r["run_id"],
            "accuracy": (r["metrics"] or {}).get("accuracy"), "metrics": r["metrics"],
            "decided_by": r["decided_by"], "note": r["note"], "reason": r["reason"],
            "created": r["created_ts"], "decided": r["decided_ts"],
            "deployed": r["deployed_ts"], "retired": r["retired_ts"]}
