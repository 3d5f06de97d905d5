"""Model versions of O3: registration computes the next `X.Y.Z-DATA.SPLIT`, promotion makes a
release, runs keep each version's evaluations, aliases point at versions.

A registration names the I/O interface, the logic (algorithm, library, hyper-parameters, the
training code's commit) and a dataset version. Its digests are compared with the model's
newest version (`versions.next_version`); a registration identical to an existing version
gets that version back (200, not 201). Aliases are MLflow's: one alias names one version of
one model, setting it again moves it, and a version is resolved by alias.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from operation_patterns.data_model_versioning.datasets import require_dataset
from operation_patterns.data_model_versioning.tables import ALIASES, MODEL_VERSIONS, RUNS
from operation_patterns.data_model_versioning.versions import (
    InvalidVersion,
    Lineage,
    Version,
    digest,
    full_version,
    next_version,
    promoted,
)
from patternkit.aliases import check_alias
from patternkit.db import upsert
from patternkit.schemas import FiniteFloat
from patternkit.service import ApiError

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
Scalar = FiniteFloat | StrictInt | StrictStr | StrictBool | None
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case model name")]


class TensorField(BaseModel):
    """One input or output of the interface."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=FIELD_PATTERN)
    dtype: Literal["float32", "float64", "int64", "string"]
    shape: list[Annotated[int, Field(ge=-1)]] | None = None


class Interface(BaseModel):
    """The I/O interface: what clients send and get (its OpenAPI or protobuf, in short)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[TensorField] = Field(..., min_length=1, max_length=256)
    outputs: list[TensorField] = Field(..., min_length=1, max_length=64)

    @model_validator(mode="after")
    def _unique(self) -> Interface:
        for side in ("inputs", "outputs"):
            names = [f.name for f in getattr(self, side)]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{side}: each name once; {', '.join(twice)} repeat")
        return self


class ModelRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    interface: Interface
    algorithm: str = Field(..., min_length=1, max_length=64)
    library: str = Field(..., min_length=1, max_length=64, description="e.g. scikit-learn==1.6.1")
    params: dict[Annotated[str, Field(max_length=64)], Scalar] = Field(
        default_factory=dict, max_length=64, description="hyper-parameters")
    code: str = Field("", max_length=64, description="the training code's commit or branch")
    dataset: str = Field(..., description="a registered dataset version, DATA.SPLIT")

    def logic(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "library": self.library, "params": self.params,
                "code": self.code}


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: dict[Annotated[str, Field(max_length=64)], FiniteFloat] = Field(..., min_length=1,
                                                                             max_length=64)
    params: dict[Annotated[str, Field(max_length=64)], Scalar] = Field(default_factory=dict)
    artifact_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.replace(tzinfo=moment.tzinfo or UTC).isoformat()


def parse(version: str) -> Version:
    try:
        return Version.parse(version)
    except InvalidVersion as exc:
        raise ApiError(422, str(exc), "invalid_version") from None


def check_name(name: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise ApiError(422, f"model name {name!r}: lower-case letters, digits and '_', starting "
                            "with a letter", "invalid_name")


def lineage_of(m: Any) -> Lineage:
    return Lineage(m["interface_sha256"], m["logic_sha256"], m["dataset"])


def version_view(conn: sa.Connection, m: Any) -> dict[str, Any]:
    runs = conn.execute(sa.select(RUNS).where(RUNS.c.name == m["name"],
                                               RUNS.c.version == m["version"])
                        .order_by(RUNS.c.run))
    aliases = conn.scalars(sa.select(ALIASES.c.alias).where(ALIASES.c.name == m["name"],
                                                             ALIASES.c.version == m["version"])
                           .order_by(ALIASES.c.alias))
    return {
        "name": m["name"], "version": m["version"],
        "full_version": full_version(m["name"], m["version"]),
        "release": m["release"], "released": m["released"],
        "changed": m["changed"], "previous": m["previous"], "dataset": m["dataset"],
        "interface": m["interface"], "logic": m["logic"],
        "aliases": list(aliases), "runs": [run_view(r._mapping) for r in runs],
        "created": iso(m["created"]),
    }


def run_view(r: Any) -> dict[str, Any]:
    return {"run": f"tr{r['run']}", "metrics": r["metrics"], "params": r["params"],
            "artifact_sha256": r["artifact_sha256"], "created": iso(r["created"])}


def find(conn: sa.Connection, name: str, version: str) -> Any | None:
    row = conn.execute(sa.select(MODEL_VERSIONS).where(MODEL_VERSIONS.c.name == name,
                                                       MODEL_VERSIONS.c.version == version)).first()
    return row._mapping if row is not None else None


def require_version(conn: sa.Connection, name: str, version: str, status: int = 404) -> Any:
    parse(version)
    found = find(conn, name, version)
    if found is None:
        known = list(conn.scalars(sa.select(MODEL_VERSIONS.c.version)
                                  .where(MODEL_VERSIONS.c.name == name)
                                  .order_by(MODEL_VERSIONS.c.id.desc()).limit(10)))
        if not known:
            raise ApiError(404, f"unknown model {name!r}: no version registered", "unknown_model")
        raise ApiError(status, f"{name} has no version {version} (newest: {', '.join(known)})",
                       "unknown_version")
    return found


def insert_version(engine: sa.Engine, row: dict[str, Any]) -> dict[str, Any]:
    with engine.begin() as conn:
        conn.execute(sa.insert(MODEL_VERSIONS).values(**row))
        return version_view(conn, find(conn, row["name"], row["version"]))


def register(engine: sa.Engine, req: ModelRegistration) -> tuple[dict[str, Any], bool]:
    """The version of `req` (its description, whether new): the next one, or an existing one
    with the same interface, logic and dataset."""
    dataset = require_dataset(engine, req.dataset, status=422)
    columns = {c["name"]: c["type"] for c in dataset["columns"]}
    missing = [f.name for f in req.interface.inputs if f.name not in columns]
    if missing:
        raise ApiError(422, f"interface.inputs: dataset {req.dataset} has no column "
                            f"{', '.join(missing)} (it has {', '.join(columns)})",
                       "interface_mismatch")
    interface = req.interface.model_dump(exclude_none=True)
    new = Lineage(digest(interface), digest(req.logic()), req.dataset)
    for _ in range(5):  # another registration may take the computed version first
        with engine.connect() as conn:
            same = conn.execute(
                sa.select(MODEL_VERSIONS).where(
                    MODEL_VERSIONS.c.name == req.name,
                    MODEL_VERSIONS.c.interface_sha256 == new.interface,
                    MODEL_VERSIONS.c.logic_sha256 == new.logic,
                    MODEL_VERSIONS.c.dataset == new.dataset,
                ).order_by(MODEL_VERSIONS.c.id.desc())).first()
            if same is not None:
                return version_view(conn, same._mapping), False
            latest = conn.execute(sa.select(MODEL_VERSIONS)
                                  .where(MODEL_VERSIONS.c.name == req.name)
                                  .order_by(MODEL_VERSIONS.c.id.desc())).first()
        base = (Version.parse(latest.version), lineage_of(latest._mapping)) if latest else None
        version, changed = next_version(base, new)
        try:
            return insert_version(engine, {
                "name": req.name, "version": str(version), "release": version.release,
                "changed": changed, "previous": latest.version if latest else None,
                "dataset": req.dataset, "interface": interface, "logic": req.logic(),
                "interface_sha256": new.interface, "logic_sha256": new.logic,
                "released": False, "created": now(),
            }), True
        except sa.exc.IntegrityError:
            continue
    raise ApiError(409, f"{req.name}: concurrent registrations kept taking the next version; "
                        "try again", "conflict")


def promote(engine: sa.Engine, name: str, version: str) -> dict[str, Any]:
    """Release `version`: a new version X+1.Y.Z-DATA.SPLIT with its lineage, `released`."""
    with engine.connect() as conn:
        source = require_version(conn, name, version)
        if source["released"]:
            raise ApiError(409, f"{name} {version} is release {source['release']} already",
                           "already_released")
        top = conn.scalar(sa.select(sa.func.max(MODEL_VERSIONS.c.release))
                          .where(MODEL_VERSIONS.c.name == name, MODEL_VERSIONS.c.released))
    release = promoted(Version.parse(version), int(top or 0))
    try:
        return insert_version(engine, {
            **{k: source[k] for k in ("name", "dataset", "interface", "logic",
                                      "interface_sha256", "logic_sha256")},
            "version": str(release), "release": release.release, "changed": "promotion",
            "previous": version, "released": True, "created": now(),
        })
    except sa.exc.IntegrityError:
        raise ApiError(409, f"{name} {release} exists already: {version} was promoted "
                            "meanwhile", "already_released") from None


def list_versions(engine: sa.Engine, name: str) -> dict[str, Any]:
    check_name(name)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(MODEL_VERSIONS).where(MODEL_VERSIONS.c.name == name)
                            .order_by(MODEL_VERSIONS.c.id)).all()
        if not rows:
            raise ApiError(404, f"unknown model {name!r}: no version registered", "unknown_model")
        aliases = conn.execute(sa.select(ALIASES).where(ALIASES.c.name == name)
                               .order_by(ALIASES.c.alias))
        return {"name": name, "latest": rows[-1].version,
                "aliases": {a.alias: a.version for a in aliases},
                "versions": [version_view(conn, r._mapping) for r in rows]}


def list_models(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        names = conn.scalars(sa.select(MODEL_VERSIONS.c.name).distinct()
                             .order_by(MODEL_VERSIONS.c.name)).all()
    out = []
    for name in names:
        found = list_versions(engine, name)
        out.append({"name": name, "latest": found["latest"], "aliases": found["aliases"],
                    "versions": [v["version"] for v in found["versions"]]})
    return out


def get_version(engine: sa.Engine, name: str, version: str) -> dict[str, Any]:
    check_name(name)
    with engine.connect() as conn:
        return version_view(conn, require_version(conn, name, version))


def add_run(engine: sa.Engine, name: str, version: str, req: RunRecord) -> dict[str, Any]:
    check_name(name)
    for _ in range(5):
        with engine.begin() as conn:
            require_version(conn, name, version)
            n = conn.scalar(sa.select(sa.func.count()).select_from(RUNS)
                            .where(RUNS.c.name == name, RUNS.c.version == version)) or 0
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(RUNS).values(
                        name=name, version=version, run=n, metrics=req.metrics, params=req.params,
                        artifact_sha256=req.artifact_sha256, created=now()))
            except sa.exc.IntegrityError:
                continue
            row = conn.execute(sa.select(RUNS).where(RUNS.c.name == name,
                                                     RUNS.c.version == version,
                                                     RUNS.c.run == n)).one()
            return {"name": name, "version": version, **run_view(row._mapping)}
    raise ApiError(409, "concurrent runs kept taking the next run number; try again", "conflict")


def alias_target(conn: sa.Connection, name: str, alias: str) -> str | None:
    """The version `alias` of model `name` points at, if the alias exists."""
    found: str | None = conn.scalar(sa.select(ALIASES.c.version).where(
        ALIASES.c.name == name, ALIASES.c.alias == alias))
    return found


def set_alias(engine: sa.Engine, name: str, alias: str, version: str) -> dict[str, Any]:
    """Point `alias` at `version` (create or move it): the alias and where it pointed before."""
    check_name(name)
    check_alias(alias)
    with engine.begin() as conn:
        require_version(conn, name, version, status=422)
        before = alias_target(conn, name, alias)
        upsert(conn, ALIASES, {"name": name, "alias": alias, "version": version,
                               "updated": now()})
    return {"name": name, "alias": alias, "version": version, "previous": before,
            "full_version": full_version(name, version)}


def delete_alias(engine: sa.Engine, name: str, alias: str) -> dict[str, Any]:
    check_name(name)
    check_alias(alias)
    with engine.begin() as conn:
        before = alias_target(conn, name, alias)
        if before is None:
            raise ApiError(404, f"{name} has no alias {alias!r}", "unknown_alias")
        conn.execute(sa.delete(ALIASES).where(ALIASES.c.name == name, ALIASES.c.alias == alias))
    return {"name": name, "alias": alias, "deleted": True, "was": before}


def resolve_alias(engine: sa.Engine, name: str, alias: str) -> dict[str, Any]:
    """The version `alias` names, as MLflow's get_model_version_by_alias gives it."""
    check_name(name)
    check_alias(alias)
    with engine.connect() as conn:
        version = alias_target(conn, name, alias)
        if version is None:
            known = list(conn.scalars(sa.select(ALIASES.c.alias).where(ALIASES.c.name == name)))
            raise ApiError(404, f"{name} has no alias {alias!r} (aliases: "
                                f"{', '.join(known) or 'none'})", "unknown_alias")
        return version_view(conn, require_version(conn, name, version))
