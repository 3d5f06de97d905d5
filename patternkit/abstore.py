"""The tables of an online A/B experiment and the queries its report runs on them.

Three tables per pattern (its name as prefix, `[backing.db] kind = "sql"`): the prediction log
(`patternkit.predlog`, with the columns an experiment groups by: variant, unit, phase, status),
`<prefix>_events` (conversions and other client events, by request id) and `<prefix>_phases`
(every change of weights or mode starts a phase; the report judges one phase against its own
weights). `ExperimentStore.phase_data` is the join the report rests on: events to predictions
by request id, counted per variant as units (users), converted units, requests, errors and
latencies.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa

from patternkit.db import ROW_ID, create_tables, make_engine
from patternkit.experiment import VARIANTS, VariantData
from patternkit.predlog import prediction_table


def experiment_columns() -> list[sa.Column[Any]]:
    """The prediction log's extra columns (new objects on every call: one table each)."""
    return [
        sa.Column("variant", sa.String(16), nullable=True),
        sa.Column("unit", sa.String(128), nullable=True),  # the user, or the request (random)
        sa.Column("phase", sa.Integer, nullable=True, index=True),
        sa.Column("status", sa.Integer, nullable=True),  # what the caller got: 200, 502, 504
    ]


def experiment_metadata(prefix: str) -> sa.MetaData:
    """`<prefix>_prediction_log`, `<prefix>_events` and `<prefix>_phases` on one MetaData."""
    metadata = sa.MetaData()
    prediction_table(prefix, metadata, experiment_columns())
    sa.Table(
        f"{prefix}_events", metadata,
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        f"{prefix}_phases", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("weight_b", sa.Float, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("seed", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
    )
    return metadata


class Phase(NamedTuple):
    """One stretch of the experiment under the same weights."""

    id: int
    started: datetime
    weight_b: float  # percent of units sent to B
    mode: str  # sticky | random
    seed: str
    reason: str

    @property
    def share_b(self) -> float:
        return self.weight_b / 100.0

    def view(self) -> dict[str, Any]:
        return {"phase": self.id, "started": self.started.isoformat(), "weight_b": self.weight_b,
                "mode": self.mode, "seed": self.seed, "reason": self.reason}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class ExperimentStore:
    """Phases, events and the per-variant aggregates of a phase; blocking calls (run them in a
    thread from async code)."""

    def __init__(self, url: str | sa.Engine, prefix: str) -> None:
        self.engine = url if isinstance(url, sa.Engine) else make_engine(url)
        self._owns_engine = not isinstance(url, sa.Engine)
        self.metadata = experiment_metadata(prefix)
        self.predictions = self.metadata.tables[f"{prefix}_prediction_log"]
        self.events = self.metadata.tables[f"{prefix}_events"]
        self.phases = self.metadata.tables[f"{prefix}_phases"]
        self.last_query_ms: float | None = None  # how long the last phase_data took

    def create(self) -> None:
        create_tables(self.engine, self.metadata)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # -- phases ---------------------------------------------------------------------------------

    def _phase(self, row: Any) -> Phase:
        return Phase(int(row.id), _aware(row.started), float(row.weight_b), str(row.mode),
                     str(row.seed), str(row.reason))

    def all_phases(self) -> list[Phase]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.phases).order_by(self.phases.c.id)).all()
        return [self._phase(r) for r in rows]

    def phase(self, phase_id: int) -> Phase | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.phases).where(self.phases.c.id == phase_id)).first()
        return self._phase(row) if row is not None else None

    def latest_phase(self) -> Phase | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(self.phases).order_by(self.phases.c.id.desc()).limit(1)).first()
        return self._phase(row) if row is not None else None

    def new_phase(self, weight_b: float, mode: str, seed: str, reason: str) -> Phase:
        started = datetime.now(UTC)
        with self.engine.begin() as conn:
            result = conn.execute(sa.insert(self.phases).values(
                started=started, weight_b=weight_b, mode=mode, seed=seed, reason=reason[:1000]))
            key = result.inserted_primary_key
            assert key is not None
        return Phase(int(key[0]), started, weight_b, mode, seed, reason[:1000])

    # -- events ---------------------------------------------------------------------------------

    def add_event(self, request_id: str, kind: str, value: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(self.events).values(
                request_id=request_id, kind=kind, value=value, at=datetime.now(UTC)))

    def event_counts(self, kind: str) -> dict[str, int]:
        """Events of `kind`: all of them, and those whose request id is in no prediction row
        (not logged yet, dropped, or made up)."""
        e, p = self.events, self.predictions
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(e)
                                 .where(e.c.kind == kind)).scalar_one()
            orphans = conn.execute(
                sa.select(sa.func.count()).select_from(
                    e.outerjoin(p, p.c.request_id == e.c.request_id))
                .where(e.c.kind == kind, p.c.id.is_(None))).scalar_one()
        return {"events": int(total), "unmatched": int(orphans)}

    # -- the report's data -------------------------------------------------------------------------

    def phase_data(self, phase_id: int, kind: str) -> dict[str, VariantData]:
        """Per variant in the phase: units, units with a `kind` event (joined to the
        prediction rows by request id), requests, errors (5xx the caller got) and latencies."""
        p, e = self.predictions, self.events
        in_phase = p.c.phase == phase_id
        started = time.perf_counter()
        with self.engine.connect() as conn:
            counts = conn.execute(
                sa.select(p.c.variant, sa.func.count().label("requests"),
                          sa.func.sum(sa.case((p.c.status >= 500, 1), else_=0)).label("errors"),
                          sa.func.count(sa.distinct(p.c.unit)).label("units"))
                .where(in_phase).group_by(p.c.variant)).all()
            converted = conn.execute(
                sa.select(p.c.variant, sa.func.count(sa.distinct(p.c.unit)))
                .select_from(p.join(e, e.c.request_id == p.c.request_id))
                .where(in_phase, e.c.kind == kind).group_by(p.c.variant)).all()
            latencies = conn.execute(
                sa.select(p.c.variant, p.c.latency_ms)
                .where(in_phase, p.c.latency_ms.is_not(None))).all()
        data = {v: VariantData() for v in VARIANTS}
        for row in counts:
            if row.variant in data:
                d = data[row.variant]
                d.requests, d.errors, d.units = int(row.requests), int(row.errors or 0), \
                    int(row.units)
        for variant, n in converted:
            if variant in data:
                data[variant].conversions = int(n)
        for variant in VARIANTS:
            data[variant].latencies_ms = np.array(
                [ms for v, ms in latencies if v == variant], dtype=np.float64)
        self.last_query_ms = round((time.perf_counter() - started) * 1000, 1)
        return data
