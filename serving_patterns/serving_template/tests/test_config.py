"""S12 unit tests: the config loader (shipped configs, migration, errors) and start-up refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serving_patterns.serving_template.config import (
    SCHEMA_VERSION,
    ConfigError,
    load_config,
    parse_config,
)
from serving_patterns.serving_template.server import TemplateSettings, create_app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

V2: dict[str, Any] = {
    "schema_version": 2,
    "model": {"name": "iris_lr", "version": "1.0.0"},
    "features": [{"name": "sepal_length", "min": 0, "max": 15}, {"name": "sepal_width"}],
    "classes": ["a", "b"],
    "auth": {"api_key_env": "KEY"},
}


@pytest.mark.parametrize("name", ["iris_lr", "iris_rf", "wine"])
def test_every_shipped_config_is_in_the_current_schema(name: str) -> None:
    loaded = load_config(CONFIGS / f"{name}.yaml")
    assert loaded.config.schema_version == SCHEMA_VERSION
    assert loaded.migrated_from is None


def test_a_version_1_config_migrates_to_its_version_2_equivalent() -> None:
    old = {"schema_version": 1, "model_name": "iris_lr", "model_version": "1.0.0",
           "features": ["sepal_length", "sepal_width"], "labels": ["a", "b"],
           "api_key_env": "KEY", "max_batch_rows": 7}
    config, migrated_from = parse_config(old)
    assert migrated_from == 1
    expected = {**V2, "features": [{"name": "sepal_length"}, {"name": "sepal_width"}],
                "limits": {"max_batch_rows": 7}}
    assert config == parse_config(expected)[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": None}, "schema_version is missing; this template reads versions 1, 2"),
        ({"schema_version": 3}, "schema_version is 3"),
        ({"features": [{"name": "x", "min": 2, "max": 1}]}, "feature x: min 2.0 is above max 1.0"),
        ({"features": [{"name": "x"}, {"name": "x"}]}, "feature names must be unique; repeated: x"),
        ({"features": [{"name": "Petal Width"}]}, "features.0.name: String should match pattern"),
        ({"classes": ["a"]}, "classes: List should have at least 2 items"),
        ({"auth": None}, "auth: Input should be a valid dictionary"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    raw = {k: v for k, v in {**V2, **change}.items() if v is not None or k == "auth"}
    with pytest.raises(ConfigError) as refused:
        parse_config(raw, "my.yaml")
    assert str(refused.value).startswith("my.yaml")
    assert message in str(refused.value)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_a_server_without_its_api_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WINE_API_KEY", raising=False)
    settings = TemplateSettings(serving_config=str(CONFIGS / "wine.yaml"), model_path="unused")
    with pytest.raises(RuntimeError, match="WINE_API_KEY is not set"):
        create_app(settings)
