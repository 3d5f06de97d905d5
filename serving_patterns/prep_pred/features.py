"""The feature table of S5, `prep_pred_features`: one row of iris measurements per id.

The trainer fills it once (ids 0-149, upserted, so a rerun changes nothing) and the retrieve
stage reads it. It lives in the topology's `db` backing: `DATABASE_URL` (PostgreSQL) when that
is set, else SQLite in the run directory; the table name carries the pattern's name so patterns
can share a database.
"""

from __future__ import annotations

import sqlalchemy as sa

from patternkit.db import ROW_ID

TABLE = "prep_pred_features"
FEATURE_COLUMNS = ("sepal_length", "sepal_width", "petal_length", "petal_width")

METADATA = sa.MetaData()
FEATURES = sa.Table(
    TABLE,
    METADATA,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in FEATURE_COLUMNS),
)

