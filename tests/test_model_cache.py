"""The trainer's model cache: a hit is the same bytes, any change in the recipe retrains."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from patternkit import models
from patternkit.models import MANIFEST_FILE, MODEL_FILE, OnnxModel, train_cached
from patternkit.trainer import CACHE_ENV, default_cache_dir

ROOT = Path(__file__).resolve().parents[1]


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in (MODEL_FILE, MANIFEST_FILE)}


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding iris_lr 1.0.0 (seed 42), and what that training wrote (`trained/a`)."""
    base = tmp_path_factory.mktemp("trained")
    _, hit = train_cached("iris_lr", base / "a", base / "cache")
    assert not hit
    return base


@pytest.fixture
def cache(trained: Path, tmp_path: Path) -> Path:
    """A private copy of that cache, for a test to add to or break."""
    copy = tmp_path / "cache"
    shutil.copytree(trained / "cache", copy)
    return copy


def test_a_hit_gives_the_same_bytes_as_the_training(trained: Path, tmp_path: Path) -> None:
    manifest, hit = train_cached("iris_lr", tmp_path / "b", trained / "cache")
    assert hit
    assert files(tmp_path / "b") == files(trained / "a")
    assert manifest == json.loads((trained / "a" / MANIFEST_FILE).read_text())
    assert OnnxModel(tmp_path / "b").version == "1.0.0"  # the copy loads and verifies
    assert len(entries(trained / "cache")) == 1  # no temporary folder left behind


@pytest.mark.parametrize(
    "change",
    [{"version": "2.0.0"}, {"seed": 7}, {"name": "iris_setosa"}],
    ids=["version", "seed", "variant"],
)
def test_a_change_in_the_recipe_trains_again(
    cache: Path, tmp_path: Path, change: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"name": "iris_lr", **change}
    manifest, hit = train_cached(out_dir=tmp_path / "b", cache_dir=cache, **args)
    assert not hit
    assert len(entries(cache)) == 2
    for key, value in change.items():
        assert manifest[key] == value
    _, hit = train_cached(out_dir=tmp_path / "c", cache_dir=cache, **args)
    assert hit


def test_other_library_versions_train_again(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = models.library_versions()
    monkeypatch.setattr(models, "library_versions", lambda: {**real, "scikit-learn": "0.0.1"})
    _, hit = train_cached("iris_lr", tmp_path / "b", cache)
    assert not hit
    assert len(entries(cache)) == 2


def test_a_corrupted_entry_is_trained_again_and_replaced(cache: Path, tmp_path: Path) -> None:
    (entry,) = cache.iterdir()
    with (entry / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")
    _, hit = train_cached("iris_lr", tmp_path / "b", cache)
    assert not hit
    OnnxModel(tmp_path / "b")  # what was written verifies
    OnnxModel(entry)  # and so does the entry that replaced the broken one
    _, hit = train_cached("iris_lr", tmp_path / "c", cache)
    assert hit


def trainer(*args: str, env_cache: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "patternkit.trainer", *args],
        capture_output=True, text=True, check=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PATTERNKIT_MODEL_CACHE": env_cache},
    )
    return done.stdout


def test_the_trainer_copies_from_the_cache_the_environment_names(
    trained: Path, tmp_path: Path
) -> None:
    out = trainer("--out", str(tmp_path / "b"), env_cache=str(trained / "cache"))
    assert "copied from the model cache" in out
    assert files(tmp_path / "b") == files(trained / "a")
    out = trainer("--out", str(tmp_path / "c"), "--no-cache", env_cache=str(trained / "cache"))
    assert "done in" in out
    assert OnnxModel(tmp_path / "c").version == "1.0.0"


@pytest.mark.parametrize("value", ["off", "0", "no", "OFF"])
def test_the_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(CACHE_ENV, value)
    assert default_cache_dir() is None


def test_the_default_cache_is_in_the_runs_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert default_cache_dir() == ROOT / ".runs" / "model-cache"


def test_a_cache_that_cannot_be_written_still_gives_the_model(tmp_path: Path) -> None:
    """As in the image, where the repository is read-only to the `app` user: the cache is an
    optimisation, so failing to store into it never fails a training."""
    (tmp_path / "not-a-folder").write_text("")
    manifest, hit = train_cached("iris_lr", tmp_path / "out", tmp_path / "not-a-folder" / "cache")
    assert not hit
    assert OnnxModel(tmp_path / "out").manifest["sha256"] == manifest["sha256"]
