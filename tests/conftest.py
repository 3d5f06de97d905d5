"""Shared fixtures for the repo-wide tests: one trained iris model per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from patternkit.models import train_model


@pytest.fixture(scope="session")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iris_lr")
    train_model("iris_lr", out, version="1.2.3")
    return out
