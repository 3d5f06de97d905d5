"""`patternkit.runtime_config`: validated runtime changes, their audit, and file reloads.

In-process: a small config model, a file in tmp_path, and the watcher on a short interval
(every wait has a deadline).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from patternkit.runtime_config import (
    ConfigRejected,
    RuntimeConfig,
    diff,
    file_delta,
    merged,
)


class Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = "a"
    retry: int = Field(3, ge=1)
    limits: dict[str, float] = Field(default_factory=dict)

    @field_validator("target")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        names = (info.context or {}).get("targets")
        if names and value not in names:
            raise ValueError(f"no target named {value!r}")
        return value


def config(file: Path | None = None, mode: Any = "merge") -> RuntimeConfig[Knobs]:
    return RuntimeConfig(Knobs, {"limits": {"a": 0.5, "b": 0.7}}, context={"targets": ["a", "b"]},
                         file=file, mode=mode)


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_merge_diff_and_file_delta() -> None:
    assert merged({"a": 1, "m": {"x": 1, "y": 2}}, {"m": {"y": 3}}) == {
        "a": 1, "m": {"x": 1, "y": 3}}
    assert diff({"a": 1, "m": {"x": 1}}, {"a": 2, "m": {"x": 1, "z": 5}}) == [
        ("a", 1, 2), ("m.z", None, 5)]
    assert diff({"r": {"x": 1, "y": 2}}, {"r": {"y": 2, "x": 1}}) == [
        ("r[order]", ["x", "y"], ["y", "x"])]  # an ordered table: the order is a change
    assert file_delta({"a": 1, "m": {"x": 1, "y": 2}, "gone": 1},
                      {"a": 1, "m": {"x": 1, "y": 4}, "new": 0}) == {"m": {"y": 4}, "new": 0}


def test_an_update_is_validated_whole_audited_and_refused_by_field() -> None:
    cfg = config()
    changes = cfg.update({"TARGET": "b", "limits": {"b": 0.9}}, rid="r1")
    assert [(c.field, c.old, c.new, c.version, c.request_id) for c in changes] == [
        ("target", "a", "b", 1, "r1"), ("limits.b", 0.7, 0.9, 1, "r1")]
    assert cfg.current.limits == {"a": 0.5, "b": 0.9}
    assert cfg.update({"retry": 3}) == []  # no change, no new version
    assert cfg.version == 1
    for bad, message in [({"retry": 0}, "retry: Input should be greater than or equal to 1"),
                         ({"target": "c"}, "target: no target named 'c'"),
                         ({"retries": 1}, "retries: unknown field (fields: target, retry")]:
        with pytest.raises(ConfigRejected) as caught:
            cfg.update(bad)
        assert caught.value.status == 422
        assert caught.value.message.startswith(message), caught.value.message
    assert (cfg.current.target, cfg.version, cfg.rejected_total) == ("b", 1, 3)
    assert [c.field for c in cfg.changes(field="limits")] == ["limits.b"]


def test_a_file_in_merge_mode_applies_its_edits_and_an_explicit_reload_applies_it_all(
    tmp_path: Path,
) -> None:
    path = tmp_path / "knobs.yaml"
    cfg = config(path)
    cfg.load_at_start()  # no file yet: nothing happens
    write(path, "target: b\nretry: 2\n")
    assert [c.field for c in cfg.reload()] == ["target", "retry"]
    cfg.update({"target": "a"})  # an API change ...
    write(path, "target: b\nretry: 5\n")
    assert [c.field for c in cfg.reload()] == ["retry"]  # ... survives an edit of retry
    assert cfg.current.target == "a"
    assert [c.field for c in cfg.reload(full=True)] == ["target"]  # the file wins
    write(path, "retry: 0\n")
    with pytest.raises(ConfigRejected) as caught:
        cfg.reload()
    assert caught.value.message.startswith("knobs.yaml: retry:")
    assert cfg.file_error is not None and cfg.current.retry == 5
    write(path, "retry: [unclosed\n")
    with pytest.raises(ConfigRejected, match=r"knobs\.yaml: cannot read it"):
        cfg.reload()


def test_a_file_in_replace_mode_is_the_whole_config(tmp_path: Path) -> None:
    path = tmp_path / "knobs.toml"
    write(path, 'target = "c"\n')
    with pytest.raises(ConfigRejected, match=r"^knobs\.toml: target: no target named 'c'"):
        RuntimeConfig.from_file(Knobs, path, context={"targets": ["a", "b"]})
    write(path, 'target = "b"\n[limits]\nb = 0.1\n')
    cfg = config(path, mode="replace")
    cfg.load_at_start(required=True)
    assert cfg.current.limits == {"b": 0.1}  # "a" is gone: the file is the whole config
    assert ("limits.a", 0.5, None) in [(c.field, c.old, c.new) for c in cfg.history]
    with pytest.raises(ConfigRejected, match=r"knobs\.json: cannot read it"):
        RuntimeConfig(Knobs, {}, name="knobs", file=tmp_path / "knobs.json",
                      mode="replace").reload()


def test_the_watcher_reloads_an_edited_file_and_keeps_the_config_on_a_bad_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "knobs.json"
    cfg = config(path)

    async def scenario() -> None:
        task = asyncio.create_task(cfg.watch(0.02))

        async def until(check: Any) -> None:
            async with asyncio.timeout(5):
                while not check():
                    await asyncio.sleep(0.01)

        try:
            write(path, '{"retry": 7}')
            await until(lambda: cfg.current.retry == 7)
            write(path, '{"retry": -1}')
            await until(lambda: cfg.file_error is not None)
            assert cfg.current.retry == 7
            write(path, '{"retry": 8}')
            await until(lambda: cfg.current.retry == 8 and cfg.file_error is None)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert [c.source for c in cfg.history] == ["file", "file"]
