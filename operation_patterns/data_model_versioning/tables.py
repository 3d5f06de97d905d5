"""The tables of O3, all in the topology's `db` backing (SQLite in the run directory, or
DATABASE_URL): the DWH's source table and the registry's own.

- `data_model_versioning_dwh_iris`: the warehouse table that dataset queries read (seeded once).
- `..._datasets`: one row per dataset version `DATA.SPLIT` (query, split settings, row counts
  and the sha256 of each stored part); the rows themselves are materialised into tables named
  after the version, `data_model_versioning_data_<DATA>_<SPLIT>_train` / `_test`.
- `..._model_versions`: one row per model version, with the digests it was computed from.
- `..._runs`: evaluation runs kept per model version (`tr0`, `tr1`, ...).
- `..._aliases`: alias -> version per model (`champion`), as MLflow's registry keeps them.
"""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import Field

from patternkit.db import ROW_ID
from patternkit.settings import ServiceSettings

PREFIX = "data_model_versioning"
FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")

METADATA = sa.MetaData()

DWH_IRIS = sa.Table(
    f"{PREFIX}_dwh_iris",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in FEATURES),
    sa.Column("species", sa.String(32), nullable=False),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("collected_on", sa.String(10), nullable=False),  # ISO date
)

DATASETS = sa.Table(
    f"{PREFIX}_datasets",
    METADATA,
    sa.Column("version", sa.String(17), primary_key=True),  # DATA.SPLIT
    sa.Column("data", sa.String(8), nullable=False),
    sa.Column("split", sa.String(8), nullable=False),
    sa.Column("query", sa.Text, nullable=False),
    sa.Column("split_settings", sa.JSON, nullable=False),
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("train_rows", sa.Integer, nullable=False),
    sa.Column("test_rows", sa.Integer, nullable=False),
    sa.Column("train_sha256", sa.String(64), nullable=False),
    sa.Column("test_sha256", sa.String(64), nullable=False),
    sa.Column("source_sha256", sa.String(64), nullable=False),  # what the query returned
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
)

MODEL_VERSIONS = sa.Table(
    f"{PREFIX}_model_versions",
    METADATA,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("release", sa.Integer, nullable=False),
    sa.Column("changed", sa.String(16), nullable=False),  # first|interface|logic|data|promotion
    sa.Column("previous", sa.String(40)),
    sa.Column("dataset", sa.String(17), nullable=False),
    sa.Column("interface", sa.JSON, nullable=False),
    sa.Column("logic", sa.JSON, nullable=False),
    sa.Column("interface_sha256", sa.String(64), nullable=False),
    sa.Column("logic_sha256", sa.String(64), nullable=False),
    sa.Column("released", sa.Boolean, nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("name", "version", name=f"{PREFIX}_model_versions_name_version"),
)

RUNS = sa.Table(
    f"{PREFIX}_runs",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(40), primary_key=True),
    sa.Column("run", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("artifact_sha256", sa.String(64)),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
)

ALIASES = sa.Table(
    f"{PREFIX}_aliases",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)


def part_table_name(version: str, part: str) -> str:
    """`data_model_versioning_data_<DATA>_<SPLIT>_<part>`: the table a dataset part lives in."""
    return f"{PREFIX}_data_{version.replace('.', '_')}_{part}"


class DatabaseSettings(ServiceSettings):
    """Where the DWH and the registry's tables are: `{db.url}` of the topology."""

    database_url: str = Field(..., description="the database ({db.url} of the topology)")
