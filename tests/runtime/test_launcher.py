"""The launcher's entrypoints: clear errors before anything heavy starts, and the CLI mounting."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtimes.cli import serve_app
from runtimes.launcher import CPU_KV_CACHE_GIB, DEFAULT_PORT, build_plan, cpu_kv_cache_env, main
from runtimes.settings import RuntimeSettings


def test_missing_model_directory_stops_with_a_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["head", f"--model={tmp_path / 'absent'}"]) == 2
    assert f"model path {tmp_path / 'absent'} does not exist" in capsys.readouterr().err


def test_bad_environment_stops_with_a_message(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STOKEHOLD_MAX_CONCURRENCY", "-3")
    assert main(["head", f"--model={tmp_path}"]) == 2
    assert "STOKEHOLD_MAX_CONCURRENCY" in capsys.readouterr().err


def test_worker_rejects_vllm_arguments() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["worker", "--head-address=h", "--max-model-len=4"])
    assert caught.value.code == 2


def test_kserve_port_is_the_default(tmp_path: Path) -> None:
    plan = build_plan([f"--model={tmp_path}"], RuntimeSettings(), "auto", on_gpu=False)
    assert f"--port={DEFAULT_PORT}" in plan.vllm_argv
    plan = build_plan([f"--model={tmp_path}", "--port", "9000"], RuntimeSettings(), "auto", on_gpu=False)
    assert not any(a.startswith("--port=") for a in plan.vllm_argv) and "9000" in plan.vllm_argv


def test_cpu_gets_a_fixed_kv_cache_unless_one_is_given() -> None:
    assert cpu_kv_cache_env([], {}, on_gpu=False) == {"VLLM_CPU_KVCACHE_SPACE": CPU_KV_CACHE_GIB}
    assert cpu_kv_cache_env([], {}, on_gpu=True) == {}
    assert cpu_kv_cache_env([], {"VLLM_CPU_KVCACHE_SPACE": "4"}, on_gpu=False) == {}
    assert cpu_kv_cache_env(["--kv-cache-memory-bytes=1G"], {}, on_gpu=False) == {}


def test_stokehold_runtime_passes_arguments_through(tmp_path: Path) -> None:
    result = CliRunner().invoke(serve_app, ["head", f"--model={tmp_path / 'absent'}", "--executor", "mp"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
