"""The config file of S12: everything that differs between two servers stamped from the template.

A YAML file per model names the model and its version, its features (name, unit, range), its
class labels, the env var that holds its API key and its limits. `load_config` validates it
and migrates a file written in an older `schema_version` on load (with a warning), so template
updates stay backward compatible with the configs already deployed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("serving_template.config")

SCHEMA_VERSION = 2  # the version this template writes and reads natively
SUPPORTED_VERSIONS = (1, 2)  # older versions are migrated on load
NAME = r"^[a-z][a-z0-9_]*$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class ConfigError(ValueError):
    """A config file that cannot be read or does not follow its schema version."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(Strict):
    """One named input: requests must carry it, within [min, max] when those are set."""

    name: str = Field(..., pattern=NAME, description="the JSON key in a request instance")
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""
    source: str | None = Field(
        None, description="the model's own column name; checked against its manifest on load"
    )

    @model_validator(mode="after")
    def _range(self) -> FeatureSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name}: min {self.min} is above max {self.max}")
        return self


class ModelSpec(Strict):
    name: str = Field(..., pattern=NAME, description="must match the artifact's manifest")
    version: str = Field(..., min_length=1, description="must match the artifact's manifest")
    description: str = ""


class AuthSpec(Strict):
    api_key_env: str = Field(
        ..., pattern=ENV_NAME, description="env var holding the key that X-API-Key must carry"
    )


class Limits(Strict):
    max_batch_rows: int = Field(100, gt=0, le=100_000, description="more instances get 413")


class ServingConfig(Strict):
    """Schema version 2: the current config file."""

    schema_version: Literal[2]
    model: ModelSpec
    features: list[FeatureSpec] = Field(..., min_length=1)
    classes: list[str] = Field(..., min_length=2, description="label of class 0, 1, ...")
    auth: AuthSpec
    limits: Limits = Field(default_factory=Limits)
    example: dict[str, float] | None = Field(
        None, description="one instance, by feature name: the docs' request example "
                          "(default: each feature's mid-range)"
    )

    @model_validator(mode="after")
    def _unique(self) -> ServingConfig:
        for what, names in (("feature", [f.name for f in self.features]),
                            ("class", self.classes)):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(twice)}")
        return self


class ServingConfigV1(Strict):
    """Schema version 1, the previous file format: flat keys, bare feature names, no ranges."""

    schema_version: Literal[1]
    model_name: str
    model_version: str
    features: list[str] = Field(..., min_length=1)
    labels: list[str] = Field(..., min_length=2)
    api_key_env: str
    max_batch_rows: int = 100


def migrate_v1(old: ServingConfigV1) -> dict[str, Any]:
    """A version-1 config as the equivalent version-2 document (features get no ranges)."""
    return {
        "schema_version": 2,
        "model": {"name": old.model_name, "version": old.model_version},
        "features": [{"name": name} for name in old.features],
        "classes": old.labels,
        "auth": {"api_key_env": old.api_key_env},
        "limits": {"max_batch_rows": old.max_batch_rows},
    }


@dataclass(frozen=True)
class LoadedConfig:
    config: ServingConfig
    path: Path
    migrated_from: int | None  # the file's own schema_version when it was migrated on load


def _problems(exc: ValidationError) -> str:
    found = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        found.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(found)


def parse_config(raw: Any, source: str = "config") -> tuple[ServingConfig, int | None]:
    """Validate a parsed YAML document; migrate an older schema version. (config, migrated_from)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        said = "is missing" if version is None else f"is {version!r}"
        raise ConfigError(
            f"{source}: schema_version {said}; this template reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    try:
        if version == 1:
            migrated = migrate_v1(ServingConfigV1.model_validate(raw))
            return ServingConfig.model_validate(migrated), 1
        return ServingConfig.model_validate(raw), None
    except ValidationError as exc:
        raise ConfigError(f"{source} (schema_version {version}): {_problems(exc)}") from None


def load_config(path: str | Path) -> LoadedConfig:
    """Read, validate and (if needed) migrate the config file at `path`."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config (cwd {Path.cwd()}): {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    config, migrated_from = parse_config(raw, str(p))
    if migrated_from is not None:
        log.warning(
            "config %s uses schema_version %d; migrated to %d on load (features without "
            "units or ranges); rewrite it in version %d to drop this warning",
            p, migrated_from, SCHEMA_VERSION, SCHEMA_VERSION,
        )
    return LoadedConfig(config, p, migrated_from)
