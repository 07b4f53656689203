"""The API key from a template's Secret: rendered as a mounted file, read by the runtime, rotated without a restart.

Before, templates had no field for a Secret and the controller rendered no key, so every deployed
endpoint was open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from prometheus_client import CollectorRegistry

from controller.render import render_inference_service
from controller.render_config import RenderConfig
from controller.state import Deployment
from runtimes.api_keys import ApiKeyFileError, ApiKeys, load_api_keys, parse_keys
from runtimes.engine_args import API_KEY_DIR, ENV_API_KEY_FILE
from runtimes.gate import RuntimeGate
from runtimes.launcher import main
from runtimes.metrics import RuntimeMetrics
from runtimes.settings import RuntimeConfigError, RuntimeSettings
from templates.catalog import load_catalog
from templates.schema import ModelTemplateVersion, TemplateValidationError, parse_version
from tests.runtime.standin import StandIn, assert_openai_error

TINY = next(v for v in load_catalog() if v.name == "tiny-demo")


def with_serving(version: ModelTemplateVersion, serving: Any) -> ModelTemplateVersion:
    document = version.to_document()
    document["spec"]["serving"] = serving
    return parse_version(document)


def predictor_of(version: ModelTemplateVersion) -> dict[str, Any]:
    deployment = Deployment(template=version.name, namespace="team-a", name=version.name, version=None)
    predictor: dict[str, Any] = render_inference_service(version, deployment, RenderConfig())["spec"]["predictor"]
    return predictor


# ------------------------------------------------------------------ template and rendering


def test_the_template_names_the_secret_and_the_controller_mounts_it() -> None:
    version = with_serving(TINY, {"api_key_secret": {"name": "tiny-api-key"}})
    predictor = predictor_of(version)
    model = predictor["model"]
    (volume,) = [v for v in predictor["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "tiny-api-key", "items": [{"key": "api-key", "path": "api-key"}], "defaultMode": 0o444}
    (mount,) = [m for m in model["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": API_KEY_DIR, "readOnly": True}  # the directory: no subPath, so updates arrive
    env = {e["name"]: e for e in model["env"]}
    assert env[ENV_API_KEY_FILE] == {"name": ENV_API_KEY_FILE, "value": f"{API_KEY_DIR}/api-key"}
    assert not any("secretKeyRef" in e.get("valueFrom", {}) and e["name"].startswith("STOKEHOLD") for e in model["env"])
    # the runtime reads exactly what was rendered
    settings = RuntimeSettings.from_env({e["name"]: e["value"] for e in model["env"] if "value" in e})
    assert settings.api_key_file == Path(API_KEY_DIR) / "api-key"


def test_a_custom_key_and_the_cache_volume_live_side_by_side() -> None:
    llama = next(v for v in load_catalog() if v.spec.storage.cache_pvc)
    predictor = predictor_of(with_serving(llama, {"api_key_secret": {"name": "keys", "key": "llama"}}))
    assert sorted(v["name"] for v in predictor["volumes"]) == ["model-cache", "stokehold-api-key"]
    assert sorted(m["name"] for m in predictor["model"]["volumeMounts"]) == ["model-cache", "stokehold-api-key"]
    assert predictor["volumes"][-1]["secret"]["items"] == [{"key": "llama", "path": "api-key"}]


def test_without_a_secret_nothing_changes() -> None:
    """Catalog versions keep their content hash and their rendering (the golden files hold them)."""
    predictor = predictor_of(TINY)
    assert ENV_API_KEY_FILE not in {e["name"] for e in predictor["model"]["env"]}
    assert "serving" not in TINY.to_document()["spec"]
    assert with_serving(TINY, {}).content_hash == TINY.content_hash
    assert with_serving(TINY, {"api_key_secret": {"name": "k"}}).content_hash != TINY.content_hash


def test_the_secret_reference_is_checked_without_echoing_it() -> None:
    with pytest.raises(TemplateValidationError) as bad:
        with_serving(TINY, {"api_key_secret": {"name": "sk-live-1234567890abcdef_SECRET"}})
    assert "spec.serving.api_key_secret.name" in str(bad.value) and "SECRET" not in str(bad.value)
    with pytest.raises(TemplateValidationError):
        with_serving(TINY, {"api_key_secret": {"name": "ok", "key": "../etc"}})
    with pytest.raises(TemplateValidationError):
        with_serving(TINY, {"api_key": "literal"})


# ------------------------------------------------------------------ the runtime's settings


def test_settings_take_a_key_or_a_key_file_not_both(tmp_path: Path) -> None:
    assert RuntimeSettings.from_env({ENV_API_KEY_FILE: str(tmp_path / "k")}).api_key_file == tmp_path / "k"
    with pytest.raises(RuntimeConfigError, match="STOKEHOLD_API_KEY or STOKEHOLD_API_KEY_FILE"):
        RuntimeSettings.from_env({"STOKEHOLD_API_KEY": "x", ENV_API_KEY_FILE: "/k"})
    assert load_api_keys(None, None) is None
    fixed = load_api_keys("s3cret", None)
    assert fixed is not None and fixed.matches(b"s3cret") and not fixed.matches(b"s3cre")


def test_a_missing_or_empty_key_file_stops_the_launcher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").write_text("\n  \n")
    for path, problem in ((tmp_path / "missing", "cannot be read"), (tmp_path / "empty", "holds no key")):
        with pytest.raises(ApiKeyFileError, match=problem):
            ApiKeys.from_file(path)
        with mock.patch.dict(os.environ, {ENV_API_KEY_FILE: str(path)}), mock.patch("runtimes.launcher._configure_logging"):
            assert main(["head", f"--model={tmp_path}"]) == 2
        assert f"API key file {path} {problem}" in capsys.readouterr().err


def test_key_file_lines() -> None:
    assert parse_keys("old-key\n  new-key  \n\n") == (b"old-key", b"new-key")
    assert parse_keys("") == ()


# ------------------------------------------------------------------ rotation, as the kubelet does it


class MountedSecret:
    """A Secret volume as the kubelet writes it: `api-key` → `..data/api-key`, `..data` → a timestamped directory,
    and an update swaps `..data` atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        (root / "api-key").symlink_to("..data/api-key")

    def write(self, text: str) -> None:
        self.generation += 1
        payload = self.root / f"..2024_01_01_00_00_{self.generation:02d}"
        payload.mkdir()
        (payload / "api-key").write_text(text)
        staged = self.root / "..data_tmp"
        staged.symlink_to(payload.name)
        os.replace(staged, self.root / "..data")

    @property
    def path(self) -> Path:
        return self.root / "api-key"


@pytest.fixture
async def client_and_secret(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, MountedSecret]]:
    secret = MountedSecret(tmp_path)
    secret.write("first-key\n")
    gate = RuntimeGate(StandIn(), metrics=RuntimeMetrics(CollectorRegistry()), api_keys=ApiKeys.from_file(secret.path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://runtime") as client:  # type: ignore[arg-type]
        yield client, secret


async def status_with(client: httpx.AsyncClient, key: str) -> int:
    return (await client.post("/v1/completions", json={}, headers={"Authorization": f"Bearer {key}"})).status_code


async def test_a_rotated_secret_takes_effect_without_a_restart(
    client_and_secret: tuple[httpx.AsyncClient, MountedSecret], caplog: pytest.LogCaptureFixture
) -> None:
    client, secret = client_and_secret
    assert await status_with(client, "first-key") == 200
    assert_openai_error(await client.post("/v1/completions", json={}), 401, "invalid_api_key")

    secret.write("first-key\nsecond-key\n")  # overlap: clients move to the new key
    assert [await status_with(client, key) for key in ("first-key", "second-key")] == [200, 200]

    with caplog.at_level(logging.INFO, logger="stokehold.runtime"):
        secret.write("second-key\n")  # the old key is withdrawn
        assert [await status_with(client, key) for key in ("first-key", "second-key")] == [401, 200]
    assert "changed: 1 key(s) accepted" in caplog.text and "second-key" not in caplog.text


async def test_a_broken_key_file_refuses_everyone(
    client_and_secret: tuple[httpx.AsyncClient, MountedSecret], caplog: pytest.LogCaptureFixture
) -> None:
    client, secret = client_and_secret
    with caplog.at_level(logging.ERROR, logger="stokehold.runtime"):
        secret.write("\n")
        assert [await status_with(client, key) for key in ("first-key", "", " ")] == [401, 401, 401]
        assert await status_with(client, "first-key") == 401
        os.unlink(secret.root / "..data")
        assert await status_with(client, "first-key") == 401
    assert [r.getMessage().split(" ", 4)[-1] for r in caplog.records] == [
        "holds no key: every request is refused until it is fixed",
        "cannot be read (No such file or directory): every request is refused until it is fixed",
    ]  # once per problem, not per request
    secret.write("third-key")
    assert await status_with(client, "third-key") == 200
