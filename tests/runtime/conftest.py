"""Runtime test fixtures: the tiny model, built once per session into a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
