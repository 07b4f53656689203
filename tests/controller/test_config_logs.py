"""Configuration from flags and environment, JSON logs, readiness rules, and the CLI surface."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from controller.cli import app, build_config
from controller.logs import JsonFormatter, configure_logging
from controller.ops import Readiness


def test_flags_win_over_environment_and_nested_fields_merge(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STOKEHOLD_SINK", "kube")
    monkeypatch.setenv("STOKEHOLD_RENDER__MODEL_FORMAT", "huggingface")
    monkeypatch.setenv("STOKEHOLD_RENDER__GPU_PRODUCTS", '{"nvidia-l4": "L4"}')
    monkeypatch.setenv("STOKEHOLD_NAMESPACES", '["llm", "team-a"]')
    monkeypatch.setenv("STOKEHOLD_NATS_USER", "controller")
    monkeypatch.setenv("STOKEHOLD_NATS_PASSWORD", "s3cret")
    config = build_config({"sink": "dir", "dir": tmp_path, "render.runtime": "custom", "nats.url": "nats://a:4222,nats://b:4222"})
    assert config.sink == "dir" and config.dir == tmp_path
    assert config.render.runtime == "custom" and config.render.model_format == "huggingface"
    assert config.render.gpu_products == {"nvidia-l4": "L4"}
    assert config.allowed_namespaces == frozenset({"llm", "team-a"})
    assert config.nats.url == ["nats://a:4222", "nats://b:4222"] and config.nats.user == "controller"


def test_invalid_configuration_is_refused_with_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="the dir sink needs --dir"):
        build_config({"sink": "dir", "namespaces": ["llm"]})
    with pytest.raises(ValidationError, match="floor_s"):
        cold_start = {"render.cold_start.floor_s": 4000, "render.cold_start.cap_s": 3000}
        build_config({"sink": "dir", "dir": tmp_path, "namespaces": ["llm"], **cold_start})
    with pytest.raises(ValidationError, match=r"namespaces \['kube-system'\] are reserved"):
        build_config({"sink": "dir", "dir": tmp_path, "namespaces": ["llm", "kube-system"]})


def test_retry_delay_doubles_up_to_the_cap(tmp_path: Path) -> None:
    config = build_config({"sink": "dir", "dir": tmp_path, "namespaces": ["llm"], "retry_backoff_s": 0.5, "retry_backoff_max_s": 3})
    assert [config.retry_delay(n) for n in (1, 2, 3, 4, 10)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_cli_reports_bad_configuration_without_a_traceback() -> None:
    result = CliRunner().invoke(app, ["run", "--sink", "dir", "--namespace", "llm"])
    assert result.exit_code == 2
    assert "the dir sink needs --dir" in result.output
    result = CliRunner().invoke(app, ["run", "--sink", "dir", "--dir", "/tmp/x", "--namespace", "llm", "--gpu-product", "nonsense"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    assert "--nats-url" in CliRunner().invoke(app, ["run", "--help"]).output


def test_json_logs_carry_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        logging.getLogger("controller.test").info("applied %s", "x", extra={"template": "gemma", "version": 2})
        logging.getLogger("controller.test").debug("hidden")
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "applied x" and entry["template"] == "gemma" and entry["version"] == 2
    assert entry["level"] == "info" and entry["logger"] == "controller.test" and "time" in entry
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, exc_info=sys.exc_info())
    assert "RuntimeError: boom" in json.loads(JsonFormatter().format(record))["exception"]


@pytest.mark.parametrize(
    ("connected", "rebuilt", "role", "ready"),
    [
        (True, True, "leader", True),
        (True, False, "leader", False),
        (False, True, "leader", False),
        (True, False, "standby", True),
        (True, True, "unknown", False),
    ],
)
def test_readiness(connected: bool, rebuilt: bool, role: str, ready: bool) -> None:
    assert Readiness(connected, rebuilt, role).ready is ready
