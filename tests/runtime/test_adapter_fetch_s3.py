"""An adapter with an s3:// source is fetched by KServe's storage library from a real S3 API (moto's server, loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.adapters import AdapterError
from events.types import AdapterVersionPublished
from runtimes.adapters import fetch
from tests.fixtures.s3 import S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return s3


def _adapter_files(folder: Path, weights: str = "adapter_model.safetensors") -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA", "target_modules": ["q_proj"]}))
    (folder / weights).write_bytes(b"\0" * 64)
    return folder


def _doc(source: str, name: str = "alpha") -> AdapterVersionPublished:
    return AdapterVersionPublished(template="tiny-demo", name=name, version=1, source=source, rank=8)


def test_s3_adapter_is_downloaded_into_the_cache(s3_env: S3Server, tmp_path: Path) -> None:
    uri = s3_env.upload_dir("adapters", "alpha/1", _adapter_files(tmp_path / "src"))
    cache = tmp_path / "cache"
    target = fetch(_doc(uri), cache)
    assert target.is_relative_to(cache)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert s3_env.requests("GET", "/adapters/alpha/1/adapter_model.safetensors") == 1


def test_s3_adapter_with_a_pickle_is_refused(s3_env: S3Server, tmp_path: Path) -> None:
    uri = s3_env.upload_dir("adapters", "pickled/1", _adapter_files(tmp_path / "src", weights="adapter_model.bin"))
    with pytest.raises(AdapterError, match="safetensors"):
        fetch(_doc(uri, name="pickled"), tmp_path / "cache")


def test_missing_s3_adapter_is_an_error_not_an_empty_folder(s3_env: S3Server, tmp_path: Path) -> None:
    s3_env.upload_dir("adapters", "present/1", _adapter_files(tmp_path / "src"))
    with pytest.raises(RuntimeError, match="No model found in absent/1"):  # kserve_storage's words; the replica reports FAILED
        fetch(_doc("s3://adapters/absent/1", name="absent"), tmp_path / "cache")
